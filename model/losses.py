"""Reconstruction losses for the face-swap autoencoder.

The face loss mixes structural dissimilarity at two window sizes (coarse and fine structure) with a
pixel MSE; the mask branch is trained with its own MSE. With masked training the face terms only
look inside a softened version of the target's face mask, so the background costs nothing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional

SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2  # stabilisers for a dynamic range of 1
SSIM_C2 = 0.03**2

DSSIM_WEIGHT = 5.0  # per window size; two sizes -> 10 in all
MSE_WEIGHT = 10.0
MASK_WEIGHT = 10.0

# The two DSSIM windows as fractions of the resolution (about 11 and 5 pixels at 128).
DSSIM_COARSE_DIVISOR = 11.6
DSSIM_FINE_DIVISOR = 23.2
MIN_KERNEL_SIZE = 3


def gaussian_kernel(kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Return a normalised 1-D gaussian of ``kernel_size`` taps: (kernel_size,)."""
    positions = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size - 1) / 2
    weights = torch.exp(-(positions**2) / (2 * sigma**2))
    return weights / weights.sum()


def filter_separable(images: Tensor, kernel: Tensor, padding: str) -> Tensor:
    """Filter each channel with ``kernel`` along H then W: (B, C, H, W) -> (B, C, H', W').

    Args:
        images: (B, C, H, W).
        kernel: (K,) 1-D weights.
        padding: "valid" (output shrinks by K-1) or "replicate" (output keeps H, W).
    """
    channels = images.shape[1]
    size = kernel.shape[0]
    if padding == "replicate":
        half = size // 2
        images = functional.pad(images, (half, half, half, half), mode="replicate")
    vertical = kernel.view(1, 1, size, 1).expand(channels, 1, size, 1)
    horizontal = kernel.view(1, 1, 1, size).expand(channels, 1, 1, size)
    images = functional.conv2d(images, vertical, groups=channels)  # depthwise: channels never mix
    return functional.conv2d(images, horizontal, groups=channels)


def dssim(pred: Tensor, target: Tensor, kernel_size: int) -> Tensor:
    """Structural dissimilarity (1 - SSIM) / 2 under a gaussian window (sigma 1.5, no padding).

    Args:
        pred: (B, C, H, W) in [0, 1].
        target: (B, C, H, W) in [0, 1].
        kernel_size: Odd window side, at most min(H, W).

    Returns:
        Scalar mean over batch, channels and window positions; 0 for identical images, up to 1.

    Raises:
        ValueError: Shapes differ, or the window is even or larger than the images.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"dssim needs two (B, C, H, W) tensors of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if kernel_size < 1 or kernel_size % 2 == 0 or kernel_size > min(pred.shape[2:]):
        raise ValueError(f"dssim kernel_size must be odd and at most {min(pred.shape[2:])}, got {kernel_size}")
    kernel = gaussian_kernel(kernel_size, SSIM_SIGMA, pred.dtype, pred.device)
    mean_pred = filter_separable(pred, kernel, "valid")
    mean_target = filter_separable(target, kernel, "valid")
    variance_pred = filter_separable(pred * pred, kernel, "valid") - mean_pred**2
    variance_target = filter_separable(target * target, kernel, "valid") - mean_target**2
    covariance = filter_separable(pred * target, kernel, "valid") - mean_pred * mean_target
    luminance = (2 * mean_pred * mean_target + SSIM_C1) / (mean_pred**2 + mean_target**2 + SSIM_C1)
    contrast_structure = (2 * covariance + SSIM_C2) / (variance_pred + variance_target + SSIM_C2)
    return ((1 - luminance * contrast_structure) / 2).mean()


def dssim_kernel_sizes(resolution: int) -> tuple[int, int]:
    """Return the (coarse, fine) DSSIM window sides for a resolution: nearest odd of R/11.6 and R/23.2, >= 3."""

    def nearest_odd(value: float) -> int:
        return max(MIN_KERNEL_SIZE, 2 * round((value - 1) / 2) + 1)

    return nearest_odd(resolution / DSSIM_COARSE_DIVISOR), nearest_odd(resolution / DSSIM_FINE_DIVISOR)


def soften_mask(mask: Tensor) -> Tensor:
    """Blur a (B, 1, R, R) mask and stretch [0, 0.5] to [0, 1].

    The face interior keeps weight 1 while the weight fades out just beyond the mask's edge, so the
    loss still sees the seam between face and background.
    """
    resolution = mask.shape[-1]
    sigma = max(1.0, resolution / 32)
    kernel_size = 2 * math.ceil(3 * sigma) + 1
    blurred = filter_separable(mask, gaussian_kernel(kernel_size, sigma, mask.dtype, mask.device), "replicate")
    return blurred.clamp(0.0, 0.5) * 2


def reconstruction_loss(
    pred_face: Tensor, target_face: Tensor, pred_mask: Tensor, target_mask: Tensor, masked: bool
) -> dict[str, Tensor]:
    """The training loss of one side's reconstruction.

    Args:
        pred_face: (B, 3, R, R) decoder output in [0, 1].
        target_face: (B, 3, R, R) the unwarped target in [0, 1].
        pred_mask: (B, 1, R, R) decoder mask in [0, 1].
        target_mask: (B, 1, R, R) the target's face mask in [0, 1].
        masked: Weight the face terms by the softened target mask (background ignored).

    Returns:
        Scalar tensors, already weighted: "dssim" (5 * DSSIM at each of two window sizes),
        "mse" (10 * face MSE), "mask" (10 * mask MSE) and "total" (their sum, differentiable).

    Raises:
        ValueError: A tensor has the wrong shape.
    """
    if pred_face.shape != target_face.shape or pred_face.dim() != 4 or pred_face.shape[1] != 3:
        raise ValueError(f"faces must both be (B, 3, R, R), got {tuple(pred_face.shape)} and "
                         f"{tuple(target_face.shape)}")
    expected_mask = (pred_face.shape[0], 1, *pred_face.shape[2:])
    if tuple(pred_mask.shape) != expected_mask or tuple(target_mask.shape) != expected_mask:
        raise ValueError(f"masks must both be {expected_mask}, got {tuple(pred_mask.shape)} and "
                         f"{tuple(target_mask.shape)}")
    if masked:
        weight = soften_mask(target_mask)  # (B, 1, R, R), broadcast over the 3 colour channels
        pred_face = pred_face * weight
        target_face = target_face * weight
    coarse, fine = dssim_kernel_sizes(pred_face.shape[-1])
    dssim_term = DSSIM_WEIGHT * dssim(pred_face, target_face, coarse) + DSSIM_WEIGHT * dssim(
        pred_face, target_face, fine
    )
    mse_term = MSE_WEIGHT * functional.mse_loss(pred_face, target_face)
    mask_term = MASK_WEIGHT * functional.mse_loss(pred_mask, target_mask)
    return {"dssim": dssim_term, "mse": mse_term, "mask": mask_term, "total": dssim_term + mse_term + mask_term}
