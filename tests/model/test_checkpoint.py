"""Tests for model/checkpoint.py: round trips, checksums, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from model.checkpoint import (
    MANIFEST_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAINING_FILE,
    CheckpointError,
    NetworkState,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
    save_checkpoint_state,
)
from model.config import ModelConfig
from model.networks import SwapAutoencoder, build_model

TINY = ModelConfig(resolution=32, ae_dims=16, e_dims=4, d_dims=4, d_mask_dims=2)
STATE = {"iteration": 7, "stage": "warmup", "seed": 3, "history": ["warmup"]}


def trained_model_and_optimizer() -> tuple[SwapAutoencoder, torch.optim.Adam]:
    """A tiny model after two Adam steps, so the optimizer has moments and step counts."""
    torch.manual_seed(0)
    model = build_model(TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.99))
    for _ in range(2):
        optimizer.zero_grad()
        face, mask = model(torch.rand(2, 3, 32, 32), "src")
        (face.mean() + mask.mean()).backward()
        optimizer.step()
    return model, optimizer


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, SwapAutoencoder, torch.optim.Adam]:
    model, optimizer = trained_model_and_optimizer()
    save_checkpoint(tmp_path / "ckpt", model, TINY, STATE, optimizer)
    return tmp_path / "ckpt", model, optimizer


def test_round_trip_rebuilds_the_model_from_the_files_alone(saved) -> None:
    directory, model, _ = saved
    assert sorted(path.name for path in directory.iterdir()) == [MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE]
    checkpoint = load_checkpoint(directory)
    assert checkpoint.config == TINY
    assert checkpoint.state == STATE
    assert not checkpoint.model.training
    images = torch.rand(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        for expected, actual in zip(model.swap(images), checkpoint.model.swap(images), strict=True):
            assert torch.equal(expected, actual)
    assert read_checkpoint_config(directory) == TINY


def test_optimizer_state_resumes_exactly(saved) -> None:
    directory, model, optimizer = saved
    checkpoint = load_checkpoint(directory)
    resumed = torch.optim.Adam(checkpoint.model.parameters(), lr=0.5)
    resumed.load_state_dict(checkpoint.optimizer_state)
    assert resumed.param_groups[0]["betas"] == (0.5, 0.99)
    assert resumed.param_groups[0]["lr"] == 1e-3
    # One more identical step on both must give identical weights.
    images = torch.rand(2, 3, 32, 32)
    model.train()
    checkpoint.model.train()
    for net, opt in ((model, optimizer), (checkpoint.model, resumed)):
        opt.zero_grad()
        face, mask = net(images, "dst")
        (face.mean() + mask.mean()).backward()
        opt.step()
    resumed_weights = checkpoint.model.state_dict()
    for name, expected in model.state_dict().items():
        assert torch.equal(expected, resumed_weights[name]), name


def test_files_are_safetensors_and_json_with_checksums(saved) -> None:
    directory, _, _ = saved
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["config"] == TINY.to_dict()
    assert set(manifest["files"]) == {MODEL_FILE, OPTIMIZER_FILE}
    assert len(manifest["files"][MODEL_FILE]["sha256"]) == 64
    with safe_open(str(directory / MODEL_FILE), framework="pt") as handle:
        assert "inter.dense1.weight" in handle.keys()
    with safe_open(str(directory / OPTIMIZER_FILE), framework="pt") as handle:
        assert "state.0.exp_avg" in handle.keys()


def test_corrupted_model_file_is_detected(saved) -> None:
    directory, _, _ = saved
    payload = bytearray((directory / MODEL_FILE).read_bytes())
    payload[-10] ^= 0xFF  # flip one weight byte; size unchanged
    (directory / MODEL_FILE).write_bytes(bytes(payload))
    with pytest.raises(CheckpointError, match=r"model\.safetensors fails its sha256 check"):
        load_checkpoint(directory)


def test_truncated_model_file_is_detected(saved) -> None:
    directory, _, _ = saved
    payload = (directory / MODEL_FILE).read_bytes()
    (directory / MODEL_FILE).write_bytes(payload[: len(payload) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors has \d+ bytes.*truncated"):
        load_checkpoint(directory)


def test_missing_files_are_named(saved) -> None:
    directory, _, _ = saved
    (directory / OPTIMIZER_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors is missing"):
        load_checkpoint(directory)
    (directory / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint\.json not found"):
        load_checkpoint(directory)


def test_corrupt_or_foreign_manifest_is_rejected(saved) -> None:
    directory, _, _ = saved
    manifest_path = directory / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(directory)
    manifest_path.write_text(json.dumps({**manifest, "config": {**manifest["config"], "ae_dims": 32}}))
    with pytest.raises(CheckpointError, match="does not match the network its checkpoint.json describes"):
        load_checkpoint(directory)
    manifest_path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"checkpoint\.json is not valid JSON"):
        read_checkpoint_config(directory)


def test_saving_without_optimizer_removes_a_stale_one_and_leaves_no_temp_files(saved) -> None:
    directory, model, _ = saved
    save_checkpoint(directory, model, TINY, {**STATE, "iteration": 8})
    assert sorted(path.name for path in directory.iterdir()) == [MANIFEST_FILE, MODEL_FILE]
    checkpoint = load_checkpoint(directory)
    assert checkpoint.optimizer_state is None
    assert checkpoint.state["iteration"] == 8


def test_unserialisable_state_fails_before_touching_the_checkpoint(saved) -> None:
    directory, model, _ = saved
    before = {path.name: path.read_bytes() for path in directory.iterdir()}
    with pytest.raises(CheckpointError, match="not JSON-able"):
        save_checkpoint(directory, model, TINY, {"iteration": 1, "when": object()})
    assert {path.name: path.read_bytes() for path in directory.iterdir()} == before


def test_training_tensors_round_trip_checksummed_and_stale_ones_removed(saved) -> None:
    directory, model, optimizer = saved
    assert load_checkpoint(directory).training_tensors == {}
    rng_state = torch.get_rng_state()  # a uint8 tensor
    save_checkpoint(directory, model, TINY, STATE, optimizer, training_tensors={"torch_rng": rng_state})
    loaded = load_checkpoint(directory).training_tensors
    assert set(loaded) == {"torch_rng"} and loaded["torch_rng"].dtype == torch.uint8
    assert torch.equal(loaded["torch_rng"], rng_state)
    payload = bytearray((directory / TRAINING_FILE).read_bytes())
    payload[-1] ^= 0xFF
    (directory / TRAINING_FILE).write_bytes(bytes(payload))
    with pytest.raises(CheckpointError, match=r"training\.safetensors fails its sha256 check"):
        load_checkpoint(directory)
    save_checkpoint(directory, model, TINY, STATE, optimizer)
    assert not (directory / TRAINING_FILE).exists()
    assert load_checkpoint(directory).training_tensors == {}


def test_saving_state_dict_copies_writes_the_same_files(saved, tmp_path: Path) -> None:
    directory, model, optimizer = saved
    copies = tmp_path / "copies"
    save_checkpoint_state(copies, model.state_dict(), TINY, STATE, optimizer.state_dict())
    for name in (MODEL_FILE, OPTIMIZER_FILE, MANIFEST_FILE):
        assert (copies / name).read_bytes() == (directory / name).read_bytes(), name


def discriminator_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Adam]:
    """A small network after one Adam step, standing in for a discriminator trained beside the model."""
    torch.manual_seed(1)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 1, 1))
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-4)
    network(torch.rand(2, 3, 8, 8)).mean().backward()
    optimizer.step()
    return network, optimizer


def test_networks_round_trip_checksummed(saved) -> None:
    directory, model, optimizer = saved
    network, network_optimizer = discriminator_and_optimizer()
    networks = {"patch_discriminator": NetworkState(network.state_dict(), network_optimizer.state_dict()),
                "code_discriminator": NetworkState(network.state_dict())}
    save_checkpoint(directory, model, TINY, STATE, optimizer, networks=networks)
    assert {"patch_discriminator.safetensors", "patch_discriminator.optimizer.safetensors",
            "code_discriminator.safetensors"} <= {path.name for path in directory.iterdir()}
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert len(manifest["files"]["patch_discriminator.optimizer.safetensors"]["sha256"]) == 64
    loaded = load_checkpoint(directory).networks
    assert set(loaded) == {"patch_discriminator", "code_discriminator"}
    assert loaded["code_discriminator"].optimizer_state is None
    for name, value in network.state_dict().items():
        assert torch.equal(loaded["patch_discriminator"].weights[name], value), name
    resumed = torch.optim.Adam(network.parameters(), lr=1.0)
    resumed.load_state_dict(loaded["patch_discriminator"].optimizer_state)
    assert resumed.param_groups[0]["lr"] == 2e-4
    assert torch.equal(resumed.state_dict()["state"][0]["exp_avg"], network_optimizer.state_dict()["state"][0]["exp_avg"])
    payload = bytearray((directory / "patch_discriminator.safetensors").read_bytes())
    payload[-3] ^= 0xFF
    (directory / "patch_discriminator.safetensors").write_bytes(bytes(payload))
    with pytest.raises(CheckpointError, match=r"patch_discriminator\.safetensors fails its sha256 check"):
        load_checkpoint(directory)


def test_a_save_without_a_network_removes_its_stale_files(saved) -> None:
    directory, model, optimizer = saved
    network, network_optimizer = discriminator_and_optimizer()
    save_checkpoint(directory, model, TINY, STATE, optimizer,
                    networks={"patch_discriminator": NetworkState(network.state_dict(), network_optimizer.state_dict())})
    save_checkpoint(directory, model, TINY, STATE, optimizer)
    assert sorted(path.name for path in directory.iterdir()) == [MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE]
    assert load_checkpoint(directory).networks == {}


@pytest.mark.parametrize("name", ["model", "Bad-Name", "optimizer"])
def test_network_names_that_would_clash_or_mislead_are_refused(saved, name: str) -> None:
    directory, model, _ = saved
    with pytest.raises(CheckpointError, match="network name"):
        save_checkpoint(directory, model, TINY, STATE, networks={name: NetworkState(model.state_dict())})
