"""Tests for tasks/train.py: options, batches, a train step, and whole stages on real faces."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pydantic
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.networks import build_model
from tasks.preview import images_to_tensor
from tasks.train import (
    ConfigMismatchError,
    EmptyFacesetError,
    StageOptions,
    TrainingData,
    sample_batch_tensors,
    sample_batches,
    train_stage,
    train_step,
)

TINY = ModelConfig(resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=4)
OPTIONS = StageOptions(iterations=12, batch_size=4, learning_rate=1e-3, preview_every=5, seed=7)


@pytest.fixture(scope="module")
def data(media_dir: Path) -> TrainingData:
    """Real 150x150 crops: 20 for src, 20 for dst, with elliptic face masks."""
    paths = sorted((media_dir / "photos" / "tight_crops").glob("*.png"))
    faces = np.stack([cv2.imread(str(path)) for path in paths])
    mask = np.zeros((150, 150), np.uint8)
    cv2.ellipse(mask, (75, 80), (50, 62), 0, 0, 360, 255, thickness=-1)
    masks = np.repeat(mask[None], len(faces), axis=0)
    return TrainingData(src_faces=faces[:20], src_masks=masks[:20], dst_faces=faces[20:], dst_masks=masks[20:])


@pytest.fixture(scope="module")
def first_stage(data: TrainingData, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("stage1")
    result = train_stage(data, TINY, OPTIONS, "warmup", root / "model", root / "logs", progress=False)
    return root, result


def test_stage_options_validate() -> None:
    adapter = pydantic.TypeAdapter(StageOptions)
    assert adapter.validate_python({"iterations": 5, "reset_inter": True}) == StageOptions(iterations=5,
                                                                                           reset_inter=True)
    with pytest.raises(pydantic.ValidationError, match="batchsize"):
        adapter.validate_python({"batchsize": 4})
    with pytest.raises(ValueError, match="batch_size"):
        StageOptions(batch_size=0)
    with pytest.raises(ValueError, match="learning_rate"):
        StageOptions(learning_rate=0.0)
    with pytest.raises(ValueError, match="save_every"):
        StageOptions(save_every=0)
    with pytest.raises(ValueError, match="collapse_factor"):
        StageOptions(collapse_factor=0.5)
    with pytest.raises(ValueError, match="seed"):
        StageOptions(seed=-1)
    assert StageOptions(collapse_factor=0).collapse_factor == 0


@pytest.mark.parametrize("side", ["src", "dst"])
def test_empty_faceset_names_the_side(data: TrainingData, side: str, tmp_path: Path) -> None:
    empty_faces, empty_masks = np.zeros((0, 150, 150, 3), np.uint8), np.zeros((0, 150, 150), np.uint8)
    fields = {"src_faces": data.src_faces, "src_masks": data.src_masks, "dst_faces": data.dst_faces,
              "dst_masks": data.dst_masks, f"{side}_faces": empty_faces, f"{side}_masks": empty_masks}
    with pytest.raises(EmptyFacesetError, match=rf"no {side} faces to train on: .*data/raw/{side}") as caught:
        train_stage(TrainingData(**fields), TINY, OPTIONS, "warmup", tmp_path / "model", tmp_path / "logs",
                    progress=False)
    assert caught.value.side == side
    assert not (tmp_path / "model").exists()


def test_masks_must_match_faces(data: TrainingData, tmp_path: Path) -> None:
    bad = TrainingData(data.src_faces, data.src_masks[:, :100], data.dst_faces, data.dst_masks)
    with pytest.raises(ValueError, match="src_masks"):
        train_stage(bad, TINY, OPTIONS, "warmup", tmp_path / "model", tmp_path / "logs", progress=False)


def test_sample_batch_tensors_are_model_ready(data: TrainingData) -> None:
    faces = np.stack([cv2.resize(face, (32, 32), interpolation=cv2.INTER_AREA) for face in data.dst_faces])
    masks = np.stack([cv2.resize(mask, (32, 32), interpolation=cv2.INTER_AREA) for mask in data.dst_masks])
    inputs, targets, target_masks = sample_batch_tensors(faces, masks, np.random.default_rng(0), OPTIONS, "cpu")
    assert inputs.shape == targets.shape == (4, 3, 32, 32) and target_masks.shape == (4, 1, 32, 32)
    assert inputs.dtype == torch.float32 and 0 <= float(inputs.min()) and float(inputs.max()) <= 1
    assert float(target_masks.max()) == 1.0 and float(target_masks.min()) == 0.0
    assert not torch.equal(inputs, targets)  # warped input, unwarped target


def test_batches_are_a_pure_function_of_seed_and_iteration(data: TrainingData) -> None:
    facesets = {side: (getattr(data, f"{side}_faces")[:6], getattr(data, f"{side}_masks")[:6]) for side in ("src", "dst")}

    def draw(options: StageOptions, iteration: int) -> list[torch.Tensor]:
        batches = sample_batches(facesets, options, iteration, torch.device("cpu"))
        return [tensor for side in ("src", "dst") for tensor in batches[side]]

    def same(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
        return all(torch.equal(a, b) for a, b in zip(first, second, strict=True))

    later = draw(OPTIONS, 42)
    draw(OPTIONS, 41)  # drawing other iterations in between changes nothing
    assert same(draw(OPTIONS, 42), later)
    assert not same(draw(OPTIONS, 43), later)
    assert not same(draw(replace(OPTIONS, seed=8), 42), later)


def test_train_step_lowers_the_loss(data: TrainingData) -> None:
    torch.manual_seed(0)
    model = build_model(TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = {}
    for side in ("src", "dst"):
        faces = np.stack([cv2.resize(face, (32, 32)) for face in getattr(data, f"{side}_faces")[:4]])
        masks = np.stack([cv2.resize(mask, (32, 32)) for mask in getattr(data, f"{side}_masks")[:4]])
        batches[side] = (images_to_tensor(faces), images_to_tensor(faces), images_to_tensor(masks))
    history = [train_step(model, optimizer, batches, masked=True) for _ in range(6)]
    assert set(history[0]) >= {"src_dssim", "src_mse", "src_mask", "src_total", "dst_total", "total"}
    assert history[0]["total"] == pytest.approx(history[0]["src_total"] + history[0]["dst_total"], rel=1e-5)
    totals = [values["total"] for values in history]
    assert all(later < earlier for earlier, later in zip(totals, totals[1:])), totals
    assert totals[-1] < 0.95 * totals[0], totals


def test_stage_writes_checkpoint_preview_and_logs(first_stage) -> None:
    root, result = first_stage
    assert result.iterations == 12
    assert {"src_total", "dst_total", "src_dssim", "dst_mask", "total", "ms_per_iteration"} <= set(result.metrics)
    assert result.metrics["collapse_rollbacks"] == 0
    assert all(np.isfinite(value) for value in result.metrics.values())
    assert result.preview_path == root / "model" / "preview.png"
    preview = cv2.imread(str(result.preview_path))
    assert preview.shape == (4 * 32, 5 * 32, 3)
    checkpoint = load_checkpoint(root / "model")
    assert checkpoint.config == TINY
    assert checkpoint.state == {"iteration": 12, "stage": "warmup", "seed": 7, "history": ["warmup"],
                                "collapse_events": []}
    assert checkpoint.optimizer_state is not None
    events = EventAccumulator(str(root / "logs"))
    events.Reload()
    scalar_tags = set(events.Tags()["scalars"])
    for side in ("src", "dst"):
        for term in ("dssim", "mse", "mask", "total"):
            assert f"loss/{side}_{term}" in scalar_tags
    assert {"loss/total", "learning_rate", "ms_per_iteration"} <= scalar_tags
    assert [event.step for event in events.Scalars("loss/total")] == [10, 12]
    assert [event.step for event in events.Images("preview")] == [5, 10, 12]


def test_resuming_continues_the_count_and_history(data: TrainingData, first_stage, tmp_path: Path) -> None:
    root, _ = first_stage
    options = StageOptions(iterations=5, batch_size=4, learning_rate=1e-3, preview_every=100, seed=7)
    result = train_stage(data, TINY, options, "refine", tmp_path / "model", tmp_path / "logs",
                         init_checkpoint=root / "model", progress=False)
    assert result.iterations == 17
    checkpoint = load_checkpoint(tmp_path / "model")
    assert checkpoint.state["history"] == ["warmup", "refine"]
    assert checkpoint.state["iteration"] == 17
    # The optimizer continued: Adam's step counters went on from 12.
    assert float(checkpoint.optimizer_state["state"][0]["step"]) == 17
    # Continuing the same stage once more adds iterations, not another history entry.
    again = train_stage(data, TINY, replace(options, iterations=2), "refine", tmp_path / "more", tmp_path / "logs",
                        init_checkpoint=tmp_path / "model", progress=False)
    assert again.iterations == 19
    assert load_checkpoint(tmp_path / "more").state["history"] == ["warmup", "refine"]


def test_reset_inter_reinitialises_only_the_inter(data: TrainingData, first_stage, tmp_path: Path) -> None:
    root, _ = first_stage
    options = StageOptions(iterations=1, batch_size=2, learning_rate=1e-12, reset_inter=True, seed=1)
    train_stage(data, TINY, options, "retarget", tmp_path / "model", tmp_path / "logs",
                init_checkpoint=root / "model", progress=False)
    before = load_checkpoint(root / "model").model.state_dict()
    after = load_checkpoint(tmp_path / "model")
    for name, value in after.model.state_dict().items():
        distance = float((value - before[name]).abs().max())
        if name.startswith("inter."):
            assert distance > 1e-3, name
        else:
            assert distance < 1e-6, name  # a 1e-12 learning rate leaves the rest as loaded
    assert float(after.optimizer_state["state"][0]["step"]) == 1  # fresh optimizer


def test_config_mismatch_names_both_configs(data: TrainingData, first_stage, tmp_path: Path) -> None:
    root, _ = first_stage
    other = ModelConfig(resolution=32, ae_dims=64, e_dims=8, d_dims=8, d_mask_dims=4)
    with pytest.raises(ConfigMismatchError, match=r"ae_dims=32.*ae_dims=64"):
        train_stage(data, other, OPTIONS, "refine", tmp_path / "model", tmp_path / "logs",
                    init_checkpoint=root / "model", progress=False)


def test_same_seed_gives_the_same_model(data: TrainingData, first_stage, tmp_path: Path) -> None:
    root, result = first_stage
    again = train_stage(data, TINY, OPTIONS, "warmup", tmp_path / "model", tmp_path / "logs", progress=False)
    for name, value in result.metrics.items():
        if name != "ms_per_iteration":
            assert again.metrics[name] == value, name
    expected = load_checkpoint(root / "model").model.state_dict()
    for name, value in load_checkpoint(tmp_path / "model").model.state_dict().items():
        assert torch.equal(value, expected[name]), name
