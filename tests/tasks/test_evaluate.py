"""Tests for tasks/evaluate.py: SSIM/PSNR helpers and the held-out reconstruction score of a real model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from model.config import ModelConfig
from model.losses import SSIM_C1, dssim, reconstruction_loss
from model.networks import build_model
from tasks.evaluate import MAX_PSNR, evaluate_reconstruction, peak_signal_to_noise, structural_similarity
from tasks.preview import images_to_tensor

TINY = ModelConfig(resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=4)


@pytest.fixture(scope="module")
def faces(media_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """40 real 150x150 face crops (8 people x 5) with elliptic face masks."""
    paths = sorted((media_dir / "photos" / "tight_crops").glob("*.png"))
    crops = np.stack([cv2.imread(str(path)) for path in paths])
    mask = np.zeros((150, 150), np.uint8)
    cv2.ellipse(mask, (75, 80), (50, 62), 0, 0, 360, 255, thickness=-1)
    return crops, np.repeat(mask[None], len(crops), axis=0)


class Reflection(nn.Module):
    """A perfect reconstructor: returns its input as the face (a real module with the model's call API)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images: Tensor, side: str) -> tuple[Tensor, Tensor]:
        return images * self.scale, images[:, :1]


def test_ssim_of_an_image_with_itself_is_one() -> None:
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(structural_similarity(images, images), torch.ones(3), atol=1e-5)
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    similarity = structural_similarity(noisy, images)
    assert torch.all(similarity < 0.9)
    assert torch.all(structural_similarity(1 - images, images) < similarity), "an inverted image is the least similar"


def test_ssim_of_flat_images_is_the_luminance_term() -> None:
    """Two flat images have no structure: SSIM is (2ab + C1) / (a^2 + b^2 + C1) exactly."""
    a, b = 0.3, 0.7
    similarity = structural_similarity(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b))
    assert similarity.item() == pytest.approx((2 * a * b + SSIM_C1) / (a * a + b * b + SSIM_C1), rel=1e-5)


def test_ssim_matches_the_training_dssim() -> None:
    generator = torch.Generator().manual_seed(2)
    pred, target = torch.rand(4, 3, 32, 32, generator=generator), torch.rand(4, 3, 32, 32, generator=generator)
    assert dssim(pred, target, 11).item() == pytest.approx((1 - structural_similarity(pred, target).mean().item()) / 2,
                                                           rel=1e-5)


def test_mask_ignores_the_background() -> None:
    generator = torch.Generator().manual_seed(3)
    target = torch.rand(2, 3, 48, 48, generator=generator)
    pred = target.clone()
    pred[..., 24:] = torch.rand(2, 3, 48, 24, generator=generator)  # the right half (background) is wrong
    mask = torch.zeros(2, 1, 48, 48)
    mask[..., :13] = 1.0  # the face: no window over it reaches the wrong half
    assert torch.allclose(structural_similarity(pred, target, mask), torch.ones(2), atol=1e-5)
    assert torch.all(structural_similarity(pred, target) < 0.75)
    assert torch.all(peak_signal_to_noise(pred, target, mask) == MAX_PSNR)
    assert torch.all(peak_signal_to_noise(pred, target) < 15)
    with pytest.raises(ValueError, match="mask must be"):
        structural_similarity(pred, target, mask[:, :, :10])


def test_a_perfect_reconstructor_scores_one(faces) -> None:
    crops, masks = faces
    model = Reflection(TINY)
    metrics = evaluate_reconstruction(model, {"src": (crops[:5], masks[:5]), "dst": (crops[5:12], masks[5:12])},
                                      batch_size=3)
    assert set(metrics) == {"score", *(f"{side}_{name}" for side in ("src", "dst")
                                       for name in ("ssim", "ssim_unmasked", "psnr"))}
    assert metrics["score"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["src_ssim_unmasked"] == pytest.approx(1.0, abs=1e-5) and metrics["dst_psnr"] == MAX_PSNR
    assert model.training, "the model's training mode is restored"


def train_tiny_model(crops: np.ndarray, masks: np.ndarray, iterations: int) -> nn.Module:
    """A tiny DF model fitted to ``crops`` as both sides (plain Adam on the training loss, no augmentation)."""
    torch.manual_seed(0)
    model = build_model(TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    resized = np.stack([cv2.resize(crop, (32, 32), interpolation=cv2.INTER_AREA) for crop in crops])
    resized_masks = np.stack([cv2.resize(mask, (32, 32), interpolation=cv2.INTER_AREA) for mask in masks])
    images, target_masks = images_to_tensor(resized), images_to_tensor(resized_masks)
    for _ in range(iterations):
        optimizer.zero_grad()
        total = torch.zeros(())
        for side in ("src", "dst"):
            face, mask = model(images, side)
            total = total + reconstruction_loss(face, images, mask, target_masks, masked=True)["total"]
        total.backward()
        optimizer.step()
    return model


def test_a_trained_model_scores_higher_than_an_untrained_one(faces) -> None:
    crops, masks = faces
    held_out = [index for index in range(40) if index % 5 == 0]  # one face of each of the 8 people
    train_faces = [index for index in range(40) if index % 5][:8]
    trained = train_tiny_model(crops[train_faces], masks[train_faces], iterations=30)
    torch.manual_seed(0)
    untrained = build_model(TINY)
    held = {"src": (crops[held_out[:4]], masks[held_out[:4]]), "dst": (crops[held_out[4:]], masks[held_out[4:]])}
    trained.eval()
    trained_metrics = evaluate_reconstruction(trained, held)
    untrained_metrics = evaluate_reconstruction(untrained, held)
    assert not trained.training, "an eval-mode model stays in eval mode"
    assert trained_metrics["score"] > untrained_metrics["score"] + 0.1
    for side in ("src", "dst"):
        assert trained_metrics[f"{side}_psnr"] > untrained_metrics[f"{side}_psnr"]
    assert -1 < untrained_metrics["score"] < trained_metrics["score"] < 1


def test_bad_inputs_name_the_side(faces) -> None:
    crops, masks = faces
    model = Reflection(TINY)
    with pytest.raises(ValueError, match="at least one side"):
        evaluate_reconstruction(model, {})
    with pytest.raises(ValueError, match="'left'"):
        evaluate_reconstruction(model, {"left": (crops[:2], masks[:2])})
    with pytest.raises(ValueError, match="dst masks must be"):
        evaluate_reconstruction(model, {"dst": (crops[:2], masks[:3])})
    with pytest.raises(ValueError, match="src faces must be"):
        evaluate_reconstruction(model, {"src": (crops[:0], masks[:0])})
