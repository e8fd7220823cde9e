"""Tests for tasks/train.py: whole stages on real faces, their outputs, and what carries from stage to stage."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from tasks.faceset_reader import ArrayFaceset
from tasks.preview import save_preview_history
from tasks.train import EmptyFacesetError, train_stage
from tasks.train_start import ConfigMismatchError
from tasks.train_options import StageOptions
from tests.tasks.test_train_resume import RUNTIME, TINY, load_faces

OPTIONS = StageOptions(iterations=12, batch_size=4, learning_rate=1e-3, preview_every=5, seed=7, optimizer="adam")
GAN = dict(gan_power=0.1, gan_dims=4, true_face_power=0.01)


@pytest.fixture(scope="module")
def data(media_dir: Path) -> dict[str, ArrayFaceset]:
    return load_faces(media_dir)


@pytest.fixture(scope="module")
def holdout(data) -> dict[str, ArrayFaceset]:
    """A few faces of each side standing in for the held-out ones."""
    return {side: ArrayFaceset(reader.faces[:3], reader.masks[:3]) for side, reader in data.items()}


@pytest.fixture(scope="module")
def first_stage(data, holdout, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("stage1")
    result = train_stage(data, TINY, OPTIONS, "warmup", root / "model", root / "logs", progress=False, holdout=holdout,
                         runtime=RUNTIME)
    return root, result


def run_stage(data, options: StageOptions, name: str, output: Path, init: Path | None = None, config: ModelConfig = TINY):
    return train_stage(data, config, options, name, output / "model", output / "logs", init_checkpoint=init,
                       progress=False, runtime=RUNTIME)


@pytest.mark.parametrize("side", ["src", "dst"])
def test_empty_faceset_names_the_side(data, side: str, tmp_path: Path) -> None:
    empty = ArrayFaceset(np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0, 32, 32), np.uint8))
    with pytest.raises(EmptyFacesetError, match=rf"no {side} faces to train on: .*data/raw/{side}") as caught:
        run_stage({**data, side: empty}, OPTIONS, "warmup", tmp_path)
    assert caught.value.side == side
    assert not (tmp_path / "model").exists()


def test_readers_must_serve_the_model_resolution(data, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the src reader serves 32 px faces but the model's resolution is 64"):
        run_stage(data, OPTIONS, "warmup", tmp_path, config=replace(TINY, resolution=64))


def test_stage_writes_checkpoint_preview_history_and_logs(first_stage) -> None:
    root, result = first_stage
    assert result.iterations == 12
    assert {"src_total", "dst_total", "src_dssim", "dst_mask", "total", "ms_per_iteration"} <= set(result.metrics)
    assert result.metrics["collapse_rollbacks"] == 0
    assert {"src_ssim", "dst_ssim", "score"} <= set(result.metrics) and 0 < result.metrics["score"] < 1
    assert all(np.isfinite(value) for value in result.metrics.values())
    assert result.preview_path == root / "model" / "preview.png"
    assert cv2.imread(str(result.preview_path)).shape == (4 * 32, 5 * 32, 3)
    checkpoint = load_checkpoint(root / "model")
    assert checkpoint.config == TINY
    assert checkpoint.state == {"iteration": 12, "stage": "warmup", "seed": 7, "optimizer": "adam",
                                "history": ["warmup"], "collapse_events": []}
    assert checkpoint.optimizer_state is not None and checkpoint.networks == {}
    # One loss-history row per preview point and at the end, each scored on the held-out faces.
    assert [row["iteration"] for row in result.loss_history] == [5, 10, 12]
    assert all({"total", "src_total", "dst_total", "score", "learning_rate"} <= set(row) for row in result.loss_history)
    assert result.loss_history[-1]["score"] == result.metrics["score"]
    assert sorted(path.name for path in (root / "logs" / "previews").iterdir()) == [
        "000000005.jpg", "000000010.jpg", "000000012.jpg"]
    events = EventAccumulator(str(root / "logs"))
    events.Reload()
    scalar_tags = set(events.Tags()["scalars"])
    for side in ("src", "dst"):
        for term in ("dssim", "mse", "mask", "total"):
            assert f"loss/{side}_{term}" in scalar_tags
    assert {"loss/total", "learning_rate", "ms_per_iteration", "holdout/score"} <= scalar_tags
    assert [event.step for event in events.Scalars("loss/total")] == [10, 12]
    assert [event.step for event in events.Images("preview")] == [5, 10, 12]


def test_preview_history_keeps_an_even_spread(tmp_path: Path) -> None:
    grid = np.zeros((8, 10, 3), np.uint8)
    for iteration in range(1, 12):
        save_preview_history(tmp_path, grid, iteration * 100, limit=4)
    kept = sorted(int(path.stem) for path in tmp_path.iterdir())
    assert len(kept) <= 4 and kept[0] == 100 and kept[-1] == 1100, kept


def test_continuing_carries_the_count_history_and_optimizer(data, first_stage, tmp_path: Path) -> None:
    root, _ = first_stage
    options = replace(OPTIONS, iterations=5, preview_every=100)
    result = run_stage(data, options, "refine", tmp_path, init=root / "model")
    assert result.iterations == 17
    assert [row["iteration"] for row in result.loss_history] == [17]
    checkpoint = load_checkpoint(tmp_path / "model")
    assert checkpoint.state["history"] == ["warmup", "refine"] and checkpoint.state["iteration"] == 17
    assert float(checkpoint.optimizer_state["state"][0]["step"]) == 17  # Adam's step counters went on from 12
    # Continuing the same stage once more adds iterations, not another history entry.
    again = run_stage(data, replace(options, iterations=2), "refine", tmp_path / "more", init=tmp_path / "model")
    assert again.iterations == 19
    assert load_checkpoint(tmp_path / "more" / "model").state["history"] == ["warmup", "refine"]


def test_another_optimizer_starts_fresh_and_is_named_in_the_checkpoint(data, first_stage, tmp_path: Path) -> None:
    root, _ = first_stage
    run_stage(data, replace(OPTIONS, iterations=2, optimizer="adabelief"), "refine", tmp_path, init=root / "model")
    checkpoint = load_checkpoint(tmp_path / "model")
    assert checkpoint.state["optimizer"] == "adabelief"
    state = checkpoint.optimizer_state["state"][0]
    assert "exp_avg_belief" in state and int(state["step"]) == 2  # AdaBelief's own moments, counted from its start
    run_stage(data, replace(OPTIONS, iterations=1, optimizer="rmsprop"), "last", tmp_path / "rms", init=tmp_path / "model")
    assert "square_avg" in load_checkpoint(tmp_path / "rms" / "model").optimizer_state["state"][0]


def test_reset_inter_reinitialises_only_the_inter(data, first_stage, tmp_path: Path) -> None:
    root, _ = first_stage
    options = StageOptions(iterations=1, batch_size=2, learning_rate=1e-12, reset_inter=True, seed=1, optimizer="adam")
    run_stage(data, options, "retarget", tmp_path, init=root / "model")
    before = load_checkpoint(root / "model").model.state_dict()
    after = load_checkpoint(tmp_path / "model")
    for name, value in after.model.state_dict().items():
        distance = float((value - before[name]).abs().max())
        if name.startswith("inter."):
            assert distance > 1e-3, name
        else:
            assert distance < 1e-6, name  # a 1e-12 learning rate leaves the rest as loaded
    assert float(after.optimizer_state["state"][0]["step"]) == 1  # fresh optimizer


def test_config_mismatch_names_both_configs(data, first_stage, tmp_path: Path) -> None:
    root, _ = first_stage
    other = ModelConfig(resolution=32, ae_dims=64, e_dims=8, d_dims=8, d_mask_dims=4)
    with pytest.raises(ConfigMismatchError, match=r"ae_dims=32.*ae_dims=64"):
        run_stage(data, OPTIONS, "refine", tmp_path, init=root / "model", config=other)


def test_same_seed_gives_the_same_model(data, holdout, first_stage, tmp_path: Path) -> None:
    root, result = first_stage
    again = train_stage(data, TINY, OPTIONS, "warmup", tmp_path / "model", tmp_path / "logs", progress=False,
                        holdout=holdout, runtime=RUNTIME)
    for name, value in result.metrics.items():
        if name != "ms_per_iteration":
            assert again.metrics[name] == value, name
    assert again.loss_history == result.loss_history
    expected = load_checkpoint(root / "model").model.state_dict()
    for name, value in load_checkpoint(tmp_path / "model").model.state_dict().items():
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("archi", ["df", "liae-ud", "df-udt"])
def test_every_architecture_trains_through_a_stage(data, archi: str, tmp_path: Path) -> None:
    config = replace(TINY, archi=archi)
    options = replace(OPTIONS, iterations=4, preview_every=100, optimizer="adabelief", eyes_mouth_priority=True,
                      face_style_power=1.0, **GAN)
    result = run_stage(data, options, "warp", tmp_path, config=config)
    assert result.iterations == 4 and np.isfinite(result.metrics["total"])
    assert {"src_eyes_mouth", "src_face_style", "src_gan", "src_true_face"} <= set(result.metrics)
    assert load_checkpoint(tmp_path / "model").config.archi == archi


def test_discriminators_are_created_continued_and_dropped_with_the_gan(data, first_stage, tmp_path: Path) -> None:
    root, _ = first_stage
    gan = replace(OPTIONS, iterations=3, preview_every=100, **GAN)
    run_stage(data, gan, "gan", tmp_path / "gan", init=root / "model")  # DFL's recipe: GAN on in a later stage
    created = load_checkpoint(tmp_path / "gan" / "model")
    assert set(created.networks) == {"code_discriminator", "patch_discriminator"}
    assert {"patch_discriminator.safetensors", "patch_discriminator.optimizer.safetensors"} <= {
        path.name for path in (tmp_path / "gan" / "model").iterdir()}
    assert int(created.networks["patch_discriminator"].optimizer_state["state"][0]["step"]) == 3
    # The next GAN stage continues them: weights as saved (a 1e-12 learning rate), step counts going on.
    run_stage(data, replace(gan, iterations=1, learning_rate=1e-12), "more", tmp_path / "more", init=tmp_path / "gan" / "model")
    continued = load_checkpoint(tmp_path / "more" / "model")
    for name, network in continued.networks.items():
        assert int(network.optimizer_state["state"][0]["step"]) == 4, name
        for key, value in network.weights.items():
            assert float((value - created.networks[name].weights[key]).abs().max()) < 1e-6, f"{name}.{key}"
    # A stage without the GAN neither trains nor keeps them.
    run_stage(data, replace(OPTIONS, iterations=1), "plain", tmp_path / "plain", init=tmp_path / "more" / "model")
    assert load_checkpoint(tmp_path / "plain" / "model").networks == {}
