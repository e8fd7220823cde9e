"""Tests for model/losses.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.losses import dssim, dssim_kernel_sizes, reconstruction_loss, soften_mask


def reference_dssim_single_window(pred: np.ndarray, target: np.ndarray, sigma: float = 1.5) -> float:
    """(1 - SSIM) / 2 of two (K, K) images under one K x K gaussian window, computed directly."""
    size = pred.shape[0]
    offsets = np.arange(size) - (size - 1) / 2
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    mean_pred, mean_target = (weights * pred).sum(), (weights * target).sum()
    variance_pred = (weights * (pred - mean_pred) ** 2).sum()
    variance_target = (weights * (target - mean_target) ** 2).sum()
    covariance = (weights * (pred - mean_pred) * (target - mean_target)).sum()
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mean_pred * mean_target + c1) * (2 * covariance + c2)) / (
        (mean_pred**2 + mean_target**2 + c1) * (variance_pred + variance_target + c2))
    return (1 - ssim) / 2


def test_dssim_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    pred, target = rng.random((7, 7)), rng.random((7, 7))
    as_tensor = lambda array: torch.from_numpy(array).float()[None, None]  # noqa: E731
    value = dssim(as_tensor(pred), as_tensor(target), kernel_size=7)  # one valid window position
    assert float(value) == pytest.approx(reference_dssim_single_window(pred, target), abs=1e-5)


def test_dssim_is_zero_for_identical_images_and_grows_with_noise() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    assert float(dssim(images, images, 7)) == pytest.approx(0.0, abs=1e-6)
    noise = torch.randn_like(images)
    values = [float(dssim((images + scale * noise).clamp(0, 1), images, 7)) for scale in (0.02, 0.1, 0.3)]
    assert values == sorted(values) and values[0] > 0
    assert float(dssim(images, 1 - images, 7)) > values[-1]
    assert float(dssim(images, 1 - images, 7)) <= 1.0


def test_dssim_rejects_bad_kernels_and_shapes() -> None:
    images = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="odd"):
        dssim(images, images, 4)
    with pytest.raises(ValueError, match="at most 16"):
        dssim(images, images, 17)
    with pytest.raises(ValueError, match="one shape"):
        dssim(images, torch.rand(1, 3, 16, 15), 3)


@pytest.mark.parametrize(("resolution", "expected"), [(32, (3, 3)), (128, (11, 5)), (256, (23, 11))])
def test_dssim_kernel_sizes_are_odd_fractions_of_the_resolution(resolution: int, expected: tuple[int, int]) -> None:
    assert dssim_kernel_sizes(resolution) == expected


def test_soften_mask_keeps_the_inside_and_fades_outside() -> None:
    mask = torch.zeros(1, 1, 64, 64)
    mask[:, :, 16:48, 16:48] = 1.0
    soft = soften_mask(mask)
    assert soft.shape == mask.shape
    assert float(soft[0, 0, 32, 32]) == pytest.approx(1.0)  # deep inside
    assert float(soft[0, 0, 2, 2]) == pytest.approx(0.0)  # far outside
    assert 0.0 < float(soft[0, 0, 32, 14]) < 1.0  # just beyond the edge


def make_case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pred_face = torch.rand(2, 3, 32, 32, generator=generator)
    target_face = torch.rand(2, 3, 32, 32, generator=generator)
    pred_mask = torch.rand(2, 1, 32, 32, generator=generator)
    target_mask = torch.zeros(2, 1, 32, 32)
    target_mask[:, :, 8:24, 8:24] = 1.0
    return pred_face, target_face, pred_mask, target_mask


def test_reconstruction_loss_terms_add_up() -> None:
    pred_face, target_face, pred_mask, target_mask = make_case()
    losses = reconstruction_loss(pred_face, target_face, pred_mask, target_mask, masked=False)
    assert set(losses) == {"dssim", "mse", "mask", "total"}
    assert float(losses["total"]) == pytest.approx(float(losses["dssim"] + losses["mse"] + losses["mask"]))
    assert float(losses["mse"]) == pytest.approx(10 * float(((pred_face - target_face) ** 2).mean()), rel=1e-5)
    assert float(losses["mask"]) == pytest.approx(10 * float(((pred_mask - target_mask) ** 2).mean()), rel=1e-5)
    perfect = reconstruction_loss(target_face, target_face, target_mask, target_mask, masked=True)
    assert float(perfect["total"]) == pytest.approx(0.0, abs=1e-5)


def test_masked_loss_ignores_the_background_only_when_masked() -> None:
    _, target_face, _, target_mask = make_case()
    wrong_background = target_face.clone()
    wrong_background[:, :, :2, :] = 1 - wrong_background[:, :, :2, :]  # rows far outside the face
    masked = reconstruction_loss(wrong_background, target_face, target_mask, target_mask, masked=True)
    unmasked = reconstruction_loss(wrong_background, target_face, target_mask, target_mask, masked=False)
    assert float(masked["mse"]) == pytest.approx(0.0, abs=1e-7)
    assert float(masked["dssim"]) == pytest.approx(0.0, abs=1e-6)
    assert float(unmasked["mse"]) > 0.1 and float(unmasked["dssim"]) > 0.05


def test_reconstruction_loss_gives_gradients_to_face_and_mask() -> None:
    pred_face, target_face, pred_mask, target_mask = make_case()
    pred_face.requires_grad_(True)
    pred_mask.requires_grad_(True)
    reconstruction_loss(pred_face, target_face, pred_mask, target_mask, masked=True)["total"].backward()
    assert pred_face.grad is not None and float(pred_face.grad.abs().sum()) > 0
    assert pred_mask.grad is not None and float(pred_mask.grad.abs().sum()) > 0


def test_reconstruction_loss_rejects_mismatched_masks() -> None:
    pred_face, target_face, pred_mask, _ = make_case()
    with pytest.raises(ValueError, match="masks"):
        reconstruction_loss(pred_face, target_face, pred_mask, torch.zeros(2, 1, 16, 16), masked=True)
