"""An objective quality score: how well the model reconstructs held-out faces of each side.

Training losses say how well the model fits the faces it trains on (with augmentation); this says
how well it paints faces it has never seen: each side's held-out faces (see tasks/holdout.py) go
through the model's own decoder (src->src, dst->dst) and are compared to the originals with SSIM
(inside the face mask and over the whole crop) and PSNR (inside the mask). ``score``, the mean
masked SSIM of both sides, is the single higher-is-better number to compare revisions by.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from model.losses import SSIM_C1, SSIM_C2, SSIM_SIGMA, filter_separable, gaussian_kernel
from model.networks import SwapAutoencoder
from tasks.augment import resize_square
from tasks.preview import images_to_tensor

SSIM_WINDOW = 11  # the gaussian window of Wang et al. (2004): 11 taps, sigma 1.5
MAX_PSNR = 100.0  # dB, for a pixel-perfect reconstruction (MSE floor 1e-10)
SIDES = ("src", "dst")


def window_size(height: int, width: int) -> int:
    """SSIM_WINDOW, or the largest odd size that fits a smaller image."""
    fitting = min(height, width)
    return SSIM_WINDOW if fitting >= SSIM_WINDOW else max(1, fitting - (1 - fitting % 2))


def masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Per-image weighted mean over (C, H, W); an image whose weights are all 0 gets its plain mean.

    Args:
        values: (B, C, H, W).
        weights: (B, 1, H, W), non-negative.

    Returns:
        (B,).
    """
    channels = values.shape[1]
    weight_sums = weights.sum(dim=(1, 2, 3)) * channels
    weighted = (values * weights).sum(dim=(1, 2, 3)) / weight_sums.clamp_min(1e-12)
    return torch.where(weight_sums > 0, weighted, values.mean(dim=(1, 2, 3)))


def structural_similarity(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """SSIM per image under an 11-tap gaussian window (sigma 1.5, no padding), channels averaged.

    Args:
        pred: (B, C, H, W) in [0, 1].
        target: (B, C, H, W) in [0, 1].
        mask: Optional (B, 1, H, W) in [0, 1]: each window position is weighted by the share of
            face under the window, so the background does not count.

    Returns:
        (B,) in [-1, 1]; 1 for identical images.

    Raises:
        ValueError: The shapes differ or are not (B, C, H, W) with a (B, 1, H, W) mask.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"structural_similarity needs two (B, C, H, W) tensors of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if mask is not None and tuple(mask.shape) != (pred.shape[0], 1, *pred.shape[2:]):
        raise ValueError(f"mask must be {(pred.shape[0], 1, *pred.shape[2:])}, got {tuple(mask.shape)}")
    kernel = gaussian_kernel(window_size(*pred.shape[2:]), SSIM_SIGMA, pred.dtype, pred.device)
    mean_pred = filter_separable(pred, kernel, "valid")  # (B, C, H, W) -> (B, C, H-K+1, W-K+1)
    mean_target = filter_separable(target, kernel, "valid")
    variance_pred = filter_separable(pred * pred, kernel, "valid") - mean_pred**2
    variance_target = filter_separable(target * target, kernel, "valid") - mean_target**2
    covariance = filter_separable(pred * target, kernel, "valid") - mean_pred * mean_target
    similarity = ((2 * mean_pred * mean_target + SSIM_C1) * (2 * covariance + SSIM_C2)
                  / ((mean_pred**2 + mean_target**2 + SSIM_C1) * (variance_pred + variance_target + SSIM_C2)))
    if mask is None:
        return similarity.mean(dim=(1, 2, 3))
    return masked_mean(similarity, filter_separable(mask, kernel, "valid"))


def peak_signal_to_noise(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """PSNR per image in dB for a dynamic range of 1, capped at MAX_PSNR.

    Args:
        pred: (B, C, H, W) in [0, 1].
        target: (B, C, H, W) in [0, 1].
        mask: Optional (B, 1, H, W) in [0, 1] weighting each pixel's squared error.

    Returns:
        (B,).
    """
    squared_error = (pred - target) ** 2
    if mask is None:
        mse = squared_error.mean(dim=(1, 2, 3))
    else:
        mse = masked_mean(squared_error, mask)
    return -10.0 * torch.log10(mse.clamp_min(10 ** (-MAX_PSNR / 10)))


def check_side_arrays(side: str, faces: np.ndarray, masks: np.ndarray) -> None:
    """Raise ValueError unless ``faces`` is (N, S, S, 3) uint8 and ``masks`` (N, S, S) uint8, N >= 1."""
    if side not in SIDES:
        raise ValueError(f"faces_by_side keys must be among {SIDES}, got {side!r}")
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[3] != 3 or len(faces) == 0:
        raise ValueError(f"{side} faces must be (N, S, S, 3) uint8 BGR with N >= 1, got {faces.shape} {faces.dtype}")
    if masks.dtype != np.uint8 or masks.shape != faces.shape[:3]:
        raise ValueError(f"{side} masks must be {faces.shape[:3]} uint8 to match the faces, got {masks.shape} {masks.dtype}")


@torch.no_grad()
def evaluate_reconstruction(
    model: SwapAutoencoder, faces_by_side: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int = 16
) -> dict[str, float]:
    """Score the model's own-side reconstructions (src->src, dst->dst) of held-out faces.

    Args:
        model: Called as ``model(images (B, 3, R, R) in [0, 1], side) -> (face, mask)`` with
            R = ``model.config.resolution``; put in eval mode here and returned to its mode after.
        faces_by_side: side -> (faces (N, S, S, 3) uint8 BGR, masks (N, S, S) uint8 0..255), one or
            both sides; S may differ from R (crops are resized like the training crops).
        batch_size: Faces per forward pass.

    Returns:
        Per side: "<side>_ssim" (mean SSIM inside the face mask), "<side>_ssim_unmasked" (over the
        whole crop) and "<side>_psnr" (dB inside the mask), each the mean over that side's faces;
        and "score": the mean of the sides' masked SSIM (higher is better, 1 is perfect). A model
        whose output holds NaN (a collapsed model) scores NaN.

    Raises:
        ValueError: No sides, an unknown side, or malformed arrays.
    """
    if not faces_by_side:
        raise ValueError("evaluate_reconstruction needs the held-out faces of at least one side")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for side, (faces, masks) in faces_by_side.items():
        check_side_arrays(side, faces, masks)
    resolution = model.config.resolution
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        metrics: dict[str, float] = {}
        for side, (faces, masks) in faces_by_side.items():
            per_image: dict[str, list[Tensor]] = {"ssim": [], "ssim_unmasked": [], "psnr": []}
            for start in range(0, len(faces), batch_size):
                batch_faces = np.stack([resize_square(face, resolution) for face in faces[start:start + batch_size]])
                batch_masks = np.stack([resize_square(mask, resolution) for mask in masks[start:start + batch_size]])
                targets = images_to_tensor(batch_faces, device)  # (B, R, R, 3) uint8 -> (B, 3, R, R) float
                target_masks = images_to_tensor(batch_masks, device)  # (B, R, R) -> (B, 1, R, R)
                reconstructions, _ = model(targets, side)
                reconstructions = reconstructions.float().clamp(0.0, 1.0)
                per_image["ssim"].append(structural_similarity(reconstructions, targets, target_masks))
                per_image["ssim_unmasked"].append(structural_similarity(reconstructions, targets))
                per_image["psnr"].append(peak_signal_to_noise(reconstructions, targets, target_masks))
            for name, values in per_image.items():
                metrics[f"{side}_{name}"] = float(torch.cat(values).mean())
        metrics["score"] = float(np.mean([metrics[f"{side}_ssim"] for side in faces_by_side]))
    finally:
        model.train(was_training)
    return metrics
