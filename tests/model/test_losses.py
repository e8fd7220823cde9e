"""Tests for model/losses.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.losses import (
    background_style_loss,
    discriminator_gan_loss,
    dssim,
    dssim_kernel_sizes,
    face_style_loss,
    generator_gan_loss,
    reconstruction_loss,
    soften_mask,
    style_loss,
    true_face_loss,
)


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


def eyes_mouth_case() -> torch.Tensor:
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 10:14, 8:24] = 1.0  # a band standing in for the eyes
    return mask


def test_eyes_mouth_term_is_300_l1_inside_its_mask() -> None:
    pred_face, target_face, pred_mask, target_mask = make_case()
    priority = eyes_mouth_case()
    losses = reconstruction_loss(pred_face, target_face, pred_mask, target_mask, masked=True,
                                 eyes_mouth_mask=priority)
    expected = 300 * float(((pred_face - target_face).abs() * priority).mean())
    assert float(losses["eyes_mouth"]) == pytest.approx(expected, rel=1e-5) and expected > 1
    plain = reconstruction_loss(pred_face, target_face, pred_mask, target_mask, masked=True)
    assert "eyes_mouth" not in plain
    assert float(losses["total"]) == pytest.approx(float(plain["total"]) + expected, rel=1e-5)
    halved = reconstruction_loss(pred_face, target_face, pred_mask, target_mask, masked=True,
                                 eyes_mouth_mask=priority, eyes_mouth_weight=150.0)
    assert float(halved["eyes_mouth"]) == pytest.approx(expected / 2, rel=1e-5)


def test_eyes_mouth_term_sees_only_its_region_and_gives_gradients() -> None:
    _, target_face, _, target_mask = make_case()
    priority = eyes_mouth_case()
    outside_eyes = target_face.clone()
    outside_eyes[:, :, 20:, :] = 1 - outside_eyes[:, :, 20:, :]
    losses = reconstruction_loss(outside_eyes, target_face, target_mask, target_mask, masked=False,
                                 eyes_mouth_mask=priority)
    assert float(losses["eyes_mouth"]) == 0.0 and float(losses["mse"]) > 0.1
    pred = target_face.clone().requires_grad_(True)
    shifted = pred + 0.1
    reconstruction_loss(shifted, target_face, target_mask, target_mask, masked=True,
                        eyes_mouth_mask=priority)["eyes_mouth"].backward()
    assert float(pred.grad[:, :, 10:14, 8:24].abs().min()) > 0
    assert float(pred.grad[:, :, 20:, :].abs().max()) == 0.0
    with pytest.raises(ValueError, match="eyes_mouth_mask"):
        reconstruction_loss(pred, target_face, target_mask, target_mask, masked=True,
                            eyes_mouth_mask=torch.zeros(2, 3, 32, 32))


def test_style_loss_compares_colour_statistics_not_layout() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 16, 16, generator=generator)
    assert float(style_loss(images, images)) == pytest.approx(0.0, abs=1e-10)
    shuffled = images.flatten(2)[:, :, torch.randperm(256, generator=generator)].view_as(images)
    assert float(style_loss(shuffled, images)) == pytest.approx(0.0, abs=1e-9)  # same pixels, moved
    darker = images * 0.5
    expected = 0.0
    for sample in range(2):
        for channel in range(3):
            pred, target = darker[sample, channel], images[sample, channel]
            std = lambda values: float(torch.sqrt(values.var(unbiased=False) + 1e-5))  # noqa: E731
            expected += (float(pred.mean() - target.mean()) ** 2 + (std(pred) - std(target)) ** 2) / 3
    assert float(style_loss(darker, images, weight=2.0)) == pytest.approx(2.0 * expected / 2, rel=1e-4)
    assert float(style_loss(darker, images, blur_sigma=2.0)) > 0


def style_case() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    target = torch.rand(2, 3, 64, 64, generator=generator)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 16:48, 16:48] = 1.0
    return target, mask


def test_face_style_loss_looks_inside_the_mask_only() -> None:
    target, mask = style_case()
    assert float(face_style_loss(target, target, mask, power=10.0)) == pytest.approx(0.0, abs=1e-8)
    changed_background = target.clone()
    changed_background[:, :, :4, :] = 0.0  # far from the face: the blurred mask is 0 there
    assert float(face_style_loss(changed_background, target, mask, power=10.0)) == pytest.approx(0.0, abs=1e-8)
    recoloured = target.clone()
    recoloured[:, 2] = (recoloured[:, 2] + 0.3).clamp(0, 1)  # a colour cast over everything
    pred = recoloured.requires_grad_(True)
    loss = face_style_loss(pred, target, mask, power=10.0)
    assert float(loss.detach()) > 0.5
    loss.backward()
    assert float(pred.grad[:, 2, 24:40, 24:40].abs().sum()) > 0
    half = face_style_loss(pred.detach(), target, mask, power=5.0)
    assert float(half) == pytest.approx(float(loss.detach()) / 2, rel=1e-5)
    assert float(face_style_loss(pred.detach(), target, mask, power=0.0)) == 0.0


def test_background_style_loss_looks_outside_the_mask_only() -> None:
    target, mask = style_case()
    assert float(background_style_loss(target, target, mask, power=10.0)) == pytest.approx(0.0, abs=1e-6)
    changed_face = target.clone()
    changed_face[:, :, 24:40, 24:40] = 1 - changed_face[:, :, 24:40, 24:40]  # deep inside the face
    assert float(background_style_loss(changed_face, target, mask, power=10.0)) == pytest.approx(0.0, abs=1e-6)
    pred = target.clone()
    pred[:, :, :8, :] = 1 - pred[:, :, :8, :]
    pred.requires_grad_(True)
    loss = background_style_loss(pred, target, mask, power=10.0)
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert float(pred.grad[:, :, :8, :].abs().sum()) > 0
    with pytest.raises(ValueError, match="power"):
        background_style_loss(target, target, mask, power=-1.0)
    with pytest.raises(ValueError, match="mask"):
        face_style_loss(target, target, mask[:, :, :32], power=1.0)


def test_gan_losses_are_binary_cross_entropies() -> None:
    undecided = torch.zeros(2, 1, 4, 4)
    assert float(generator_gan_loss(undecided)) == pytest.approx(np.log(2), rel=1e-6)
    assert float(discriminator_gan_loss(undecided, undecided)) == pytest.approx(np.log(2), rel=1e-6)
    confident = torch.full((2, 1, 4, 4), 20.0)
    assert float(discriminator_gan_loss(confident, -confident)) < 1e-6  # tells real from fake: no loss
    assert float(discriminator_gan_loss(-confident, confident)) > 10  # fooled
    assert float(generator_gan_loss(confident)) < 1e-6  # the fakes pass as real
    fake = torch.zeros(2, 1, 4, 4, requires_grad=True)
    generator_gan_loss(fake).backward()
    assert float(fake.grad.max()) < 0  # raising the fake logits lowers the generator's loss
    real = torch.zeros(3, 5, requires_grad=True)
    fake = torch.zeros(3, 5, requires_grad=True)
    discriminator_gan_loss(real, fake).backward()
    assert float(real.grad.max()) < 0 < float(fake.grad.min())
    assert generator_gan_loss(fake).dim() == 0 and discriminator_gan_loss(real, fake).dim() == 0


def test_true_face_loss_scales_the_generator_term() -> None:
    logits = torch.linspace(-3, 3, 10).view(2, 5)
    assert float(true_face_loss(logits, 0.01)) == pytest.approx(0.01 * float(generator_gan_loss(logits)))
    assert float(true_face_loss(logits, 0.0)) == 0.0
    codes = logits.clone().requires_grad_(True)
    true_face_loss(codes, 0.5).backward()
    assert float(codes.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="power"):
        true_face_loss(logits, -0.1)
