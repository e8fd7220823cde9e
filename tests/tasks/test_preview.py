"""Tests for tasks/preview.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from model.config import ModelConfig
from model.networks import build_model
from tasks.preview import (
    images_to_tensor,
    log_preview,
    log_scalars,
    render_preview,
    select_preview_faces,
    tensor_to_images,
)

TINY = ModelConfig(resolution=32, ae_dims=16, e_dims=4, d_dims=4, d_mask_dims=2)


def test_image_tensor_conversions_round_trip() -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(2, 8, 6, 3), dtype=np.uint8)
    tensor = images_to_tensor(images)
    assert tensor.shape == (2, 3, 8, 6) and tensor.dtype == torch.float32
    assert float(tensor.max()) <= 1.0
    np.testing.assert_array_equal(tensor_to_images(tensor), images)
    masks = images[..., 0]
    assert images_to_tensor(masks).shape == (2, 1, 8, 6)


def test_select_preview_faces_cycles_and_resizes() -> None:
    faces = np.stack([np.full((50, 50, 3), value, np.uint8) for value in (10, 200)])
    selected = select_preview_faces(faces, 32, count=4)
    assert selected.shape == (4, 32, 32, 3)
    assert [int(face[0, 0, 0]) for face in selected] == [10, 200, 10, 200]


def test_render_preview_lays_out_inputs_and_outputs() -> None:
    torch.manual_seed(0)
    model = build_model(TINY).train()
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    dst = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    grid = render_preview(model, src, dst)
    assert grid.shape == (4 * 32, 5 * 32, 3) and grid.dtype == np.uint8
    assert model.training  # mode restored
    np.testing.assert_array_equal(grid[32:64, 0:32], src[1])  # column 0: src input
    np.testing.assert_array_equal(grid[96:128, 64:96], dst[3])  # column 2: dst input
    model.eval()
    with torch.no_grad():
        swapped = tensor_to_images(model.swap(images_to_tensor(dst))[1])
    np.testing.assert_array_equal(grid[0:32, 128:160], swapped[0])  # column 4: dst -> src


def test_logs_reach_tensorboard_as_rgb(tmp_path: Path) -> None:
    model = build_model(TINY)
    src = np.zeros((4, 32, 32, 3), np.uint8)
    src[..., 0] = 255  # pure blue in BGR
    writer = SummaryWriter(log_dir=str(tmp_path))
    grid = log_preview(writer, model, src, src, step=3)
    log_scalars(writer, {"src_total": 1.5, "total": 2.5}, learning_rate=1e-4, ms_per_iteration=12.0, step=3)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert events.Scalars("loss/total")[0].value == 2.5
    assert events.Scalars("learning_rate")[0].step == 3
    image = events.Images("preview")[0]
    assert (image.height, image.width) == grid.shape[:2]
    # TensorBoard stores RGB PNGs and cv2 decodes them to BGR: a correctly logged blue face decodes as blue.
    decoded = cv2.imdecode(np.frombuffer(image.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded[:32, :32], src[0])
