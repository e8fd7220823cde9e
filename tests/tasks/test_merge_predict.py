"""The merge's model side: precision choice, bf16 beside fp32 on real crops, worker threads and the predict-ahead order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.networks import build_model
from tasks.merge_predict import (FaceSwapper, Prediction, count_cores, has_native_bf16, predict_ahead, prediction_pool,
                                 resolve_precision)

PHOTOS = ["barack_obama/obama1.jpg", "jennifer_aniston/img55.jpg", "eric_clapton/clapton-2.jpg"]


@pytest.fixture(scope="module")
def crops(media_dir: Path) -> list[np.ndarray]:
    """Three (64, 64, 3) uint8 BGR crops of real photos (the middle of each, where the face is)."""
    images = [cv2.imread(str(media_dir / "photos" / "identities" / name)) for name in PHOTOS]
    return [cv2.resize(image[image.shape[0] // 4:-image.shape[0] // 4, image.shape[1] // 4:-image.shape[1] // 4], (64, 64),
                       interpolation=cv2.INTER_AREA) for image in images]


def test_precision_choices() -> None:
    assert resolve_precision("fp32") == torch.float32
    assert resolve_precision("bf16") == torch.bfloat16
    assert resolve_precision("auto") == (torch.bfloat16 if has_native_bf16() else torch.float32)
    with pytest.raises(ValueError, match="merge.precision must be one of auto, fp32, bf16, got 'fp16'"):
        resolve_precision("fp16")


def test_bf16_faces_stay_within_two_levels_of_fp32_and_the_model_is_left_as_given(crops) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(resolution=64, ae_dims=64, e_dims=16, d_dims=16, d_mask_dims=8))
    swapper = FaceSwapper(model)
    half = swapper.with_precision("bf16")

    full_prediction, half_prediction = swapper.predict(crops, False), half.predict(crops, True)

    assert half is swapper.with_precision("bf16") and half.with_precision("fp32") is swapper, "each precision is made once"
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert half_prediction.faces.dtype == np.float32 and half_prediction.faces.shape == (3, 64, 64, 3)
    assert half_prediction.dst_masks is not None and half_prediction.dst_masks.shape == (3, 64, 64)
    face_levels = np.abs(half_prediction.faces - full_prediction.faces) * 255
    mask_levels = np.abs(half_prediction.masks - full_prediction.masks) * 255
    assert face_levels.max() <= 2.0 and mask_levels.max() <= 2.0
    assert 0 < face_levels.mean() < 0.5, "bf16 really ran, and rounds only"


def test_each_prediction_worker_runs_torch_on_its_share_of_the_cores() -> None:
    before = torch.get_num_threads()
    with prediction_pool(2) as pool:
        seen = {pool.submit(lambda: (threading.current_thread().name, torch.get_num_threads())).result() for _ in range(4)}
    assert {threads for _, threads in seen} == {max(1, (count_cores() - 1) // 2)}
    assert all(name.startswith("merge-predict") for name, _ in seen)
    assert torch.get_num_threads() == before


def fake_prepare(index: int, frame: np.ndarray) -> int | None:
    """Frames 3 and 4 have no face."""
    return None if index in (3, 4) else index


def test_predict_ahead_keeps_the_order_batches_frames_and_passes_faceless_ones() -> None:
    frames = [(index, np.full((2, 2, 3), index, np.uint8)) for index in range(11)]
    batches: list[tuple[list[int], str]] = []

    def predict_frames(prepared: list[int]) -> list[Prediction]:
        batches.append((list(prepared), threading.current_thread().name))
        return [Prediction(np.full((1, 1, 1, 3), index, np.float32), np.zeros((1, 1, 1), np.float32), None) for index in prepared]

    def paste(prepared: int, prediction: Prediction) -> np.ndarray:
        return np.full((2, 2, 3), 100 + int(prediction.faces[0, 0, 0, 0]), np.uint8)

    out = list(predict_ahead(frames, fake_prepare, predict_frames, paste, workers=2, frames_per_batch=3, batches_ahead=1))

    assert [index for index, _, _ in out] == list(range(11))
    for (index, frame, rendered), (_, original) in zip(out, frames, strict=True):
        assert frame is original
        assert (rendered is original) if index in (3, 4) else int(rendered[0, 0, 0]) == 100 + index
    assert sorted(index for batch, _ in batches for index in batch) == [0, 1, 2, 5, 6, 7, 8, 9, 10]
    assert [batch for batch, _ in batches] == [[0, 1, 2], [5, 6, 7], [8, 9, 10]], "consecutive frames with faces, three a batch"
    assert all(name.startswith("merge-predict") for _, name in batches)


def test_closing_predict_ahead_drops_the_queued_batches() -> None:
    calls = []

    def predict_frames(prepared: list[int]) -> list[Prediction]:
        calls.append(prepared)
        time.sleep(0.3)  # a slow model: when the first frame comes out, the second is running and the third queued
        return [Prediction(np.zeros((1, 1, 1, 3), np.float32), np.zeros((1, 1, 1), np.float32), None) for _ in prepared]

    frames = ((index, np.zeros((2, 2, 3), np.uint8)) for index in range(40))
    stream = predict_ahead(frames, lambda index, frame: index, predict_frames, lambda prepared, prediction: prediction.faces,
                           workers=1, frames_per_batch=1, batches_ahead=2)
    next(stream)
    stream.close()

    assert 1 <= len(calls) <= 2, "the queued third batch was cancelled, nothing after it was submitted"
