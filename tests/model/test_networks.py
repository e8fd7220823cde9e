"""Tests for model/networks.py: shapes, the swap path, ONNX export and the ability to learn."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import pytest
import torch

from model.config import ModelConfig
from model.losses import reconstruction_loss
from model.networks import SwapModule, build_model, count_parameters

TINY = ModelConfig(resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=4)


@pytest.fixture(scope="module")
def real_faces(media_dir: Path) -> torch.Tensor:
    """Four real face crops at 32x32 as a (4, 3, 32, 32) tensor in [0, 1]."""
    paths = sorted((media_dir / "photos" / "tight_crops").glob("*.png"))[::10][:4]
    images = [cv2.resize(cv2.imread(str(path)), (32, 32), interpolation=cv2.INTER_AREA) for path in paths]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("resolution", [32, 48])
@pytest.mark.parametrize("side", ["src", "dst"])
def test_forward_shapes_and_range(resolution: int, side: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(resolution=resolution, ae_dims=16, e_dims=4, d_dims=4, d_mask_dims=2))
    face, mask = model(torch.rand(2, 3, resolution, resolution), side)
    assert face.shape == (2, 3, resolution, resolution)
    assert mask.shape == (2, 1, resolution, resolution)
    for output in (face, mask):
        assert output.dtype == torch.float32
        assert 0.0 <= float(output.min()) and float(output.max()) <= 1.0


def test_internal_shapes_follow_the_df_layout() -> None:
    model = build_model(TINY)
    images = torch.rand(3, 3, 32, 32)
    codes = model.encoder(images)
    assert codes.shape == (3, 8 * TINY.e_dims * 2 * 2)  # lowest = 32 // 16 = 2
    assert model.inter(codes).shape == (3, TINY.ae_dims, 4, 4)  # one upscale: lowest * 2
    assert model.inter.dense1.out_features == TINY.ae_dims


def test_swap_matches_the_two_decoders() -> None:
    torch.manual_seed(1)
    model = build_model(TINY).eval()
    images = torch.rand(2, 3, 32, 32)
    dst_mask, celeb_face, celeb_mask = model.swap(images)
    assert dst_mask.shape == (2, 1, 32, 32)
    assert celeb_face.shape == (2, 3, 32, 32)
    assert celeb_mask.shape == (2, 1, 32, 32)
    src_face, src_mask = model(images, "src")
    dst_face, expected_dst_mask = model(images, "dst")
    torch.testing.assert_close(celeb_face, src_face)
    torch.testing.assert_close(celeb_mask, src_mask)
    torch.testing.assert_close(dst_mask, expected_dst_mask)
    assert not torch.allclose(src_face, dst_face)  # two independent decoders


def test_bad_side_and_bad_shape_are_rejected() -> None:
    model = build_model(TINY)
    with pytest.raises(ValueError, match="'both'"):
        model(torch.rand(1, 3, 32, 32), "both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        model(torch.rand(1, 3, 64, 64), "src")


def test_count_parameters_counts_only_trainable() -> None:
    model = build_model(TINY)
    total = count_parameters(model)
    assert total == sum(parameter.numel() for parameter in model.parameters())
    encoder_count = sum(parameter.numel() for parameter in model.encoder.parameters())
    model.encoder.requires_grad_(False)
    assert count_parameters(model) == total - encoder_count
    # First encoder conv: 5x5 kernels from 3 to e_dims channels, plus biases.
    assert sum(p.numel() for p in model.encoder.downscales[0].parameters()) == 5 * 5 * 3 * 8 + 8


def test_reset_inter_changes_only_the_inter() -> None:
    model = build_model(TINY)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.reset_inter()
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("inter.") for name in changed)
    assert "inter.dense1.weight" in changed


@pytest.mark.parametrize("dynamo", [False, True])
def test_swap_exports_to_onnx_with_a_dynamic_batch(tmp_path: Path, dynamo: bool) -> None:
    torch.manual_seed(2)
    model = build_model(TINY).eval()
    path = tmp_path / "swap.onnx"
    shape_options = ({"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamo
                     else {"dynamic_axes": {"images": {0: "batch"}}})
    torch.onnx.export(SwapModule(model), (torch.rand(2, 3, 32, 32),), str(path), dynamo=dynamo,
                      input_names=["images"], output_names=["dst_mask", "celeb_face", "celeb_mask"], **shape_options)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.rand(3, 3, 32, 32)  # another batch size than the export's
    outputs = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = model.swap(images)
    assert [output.shape for output in outputs] == [(3, 1, 32, 32), (3, 3, 32, 32), (3, 1, 32, 32)]
    for output, reference in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(output, reference.numpy(), atol=1e-5)


def test_overfits_one_batch(real_faces: torch.Tensor) -> None:
    torch.manual_seed(3)
    model = build_model(TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    masks = torch.zeros(4, 1, 32, 32)
    masks[:, :, 6:26, 6:26] = 1.0
    totals = []
    for _ in range(60):
        optimizer.zero_grad()
        face, mask = model(real_faces, "src")
        loss = reconstruction_loss(face, real_faces, mask, masks, masked=False)["total"]
        loss.backward()
        optimizer.step()
        totals.append(float(loss.detach()))
    assert totals[-1] < 0.5 * totals[0], totals
