"""Reconstruction losses for the face-swap autoencoder.

The face loss mixes structural dissimilarity at two window sizes (coarse and fine structure) with a
pixel MSE; the mask branch is trained with its own MSE. With masked training the face terms only
look inside a softened version of the target's face mask, so the background costs nothing.

Optional DeepFaceLab SAEHD terms: an L1 term on the eyes and mouth (their detail decides whether a
swap looks alive), face and background style losses on the swapped face (src decoder on dst
codes) against the dst target, and binary cross-entropy GAN losses for a patch discriminator and
for the "true face" code discriminator.
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
EYES_MOUTH_WEIGHT = 300.0  # DeepFaceLab's eyes/mouth priority: 300 * L1 inside the eyes/mouth mask

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
    pred_face: Tensor,
    target_face: Tensor,
    pred_mask: Tensor,
    target_mask: Tensor,
    masked: bool,
    eyes_mouth_mask: Tensor | None = None,
    eyes_mouth_weight: float = EYES_MOUTH_WEIGHT,
) -> dict[str, Tensor]:
    """The training loss of one side's reconstruction.

    Args:
        pred_face: (B, 3, R, R) decoder output in [0, 1].
        target_face: (B, 3, R, R) the unwarped target in [0, 1].
        pred_mask: (B, 1, R, R) decoder mask in [0, 1].
        target_mask: (B, 1, R, R) the target's face mask in [0, 1].
        masked: Weight the face terms by the softened target mask (background ignored).
        eyes_mouth_mask: Optional (B, 1, R, R) eyes/mouth priority mask in [0, 1] (see
            tasks.eyes_mouth); adds eyes_mouth_weight * mean(|pred - target| * mask) over all
            pixels and channels, as DeepFaceLab does, so its size is relative to the whole crop.
        eyes_mouth_weight: Weight of that term (DeepFaceLab: 300).

    Returns:
        Scalar tensors, already weighted: "dssim" (5 * DSSIM at each of two window sizes),
        "mse" (10 * face MSE), "mask" (10 * mask MSE), "eyes_mouth" (only with an eyes/mouth mask)
        and "total" (their sum, differentiable).

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
    priority_term = None
    if eyes_mouth_mask is not None:
        if tuple(eyes_mouth_mask.shape) != expected_mask:
            raise ValueError(f"eyes_mouth_mask must be {expected_mask}, got {tuple(eyes_mouth_mask.shape)}")
        # Before masked training reweights the faces: the eyes and mouth lie inside the face anyway.
        priority_term = eyes_mouth_weight * ((pred_face - target_face).abs() * eyes_mouth_mask).mean()
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
    losses = {"dssim": dssim_term, "mse": mse_term, "mask": mask_term}
    if priority_term is not None:
        losses["eyes_mouth"] = priority_term
    losses["total"] = sum(losses.values(), torch.zeros((), dtype=pred_face.dtype, device=pred_face.device))
    return losses


# Style losses, DeepFaceLab SAEHD's face_style_power and bg_style_power (both on a 0..100 scale).
STYLE_STD_EPSILON = 1e-5  # inside the square root of the variance, so flat regions have a gradient
FACE_STYLE_WEIGHT_PER_POWER = 100.0  # DFL: loss_weight = 10000 * power / 100
BACKGROUND_STYLE_WEIGHT_PER_POWER = 0.1  # DFL: 10 * power / 100 on each of DSSIM and MSE
STYLE_MASK_DIVISOR = 32  # the style mask is blurred with sigma R/32
FACE_STYLE_BLUR_DIVISOR = 16  # the face style compares images blurred with sigma R/16


def blur_images(images: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of (B, C, H, W) with replicated borders, DeepFaceLab's kernel size max(3, 4 sigma) (odd)."""
    kernel_size = max(MIN_KERNEL_SIZE, int(4 * sigma))
    kernel_size += 1 - kernel_size % 2
    return filter_separable(images, gaussian_kernel(kernel_size, sigma, images.dtype, images.device), "replicate")


def check_style_inputs(pred: Tensor, target: Tensor, mask: Tensor | None, power: float, name: str) -> None:
    """Raise ValueError for mismatched (B, C, H, W) images, a mask that is not (B, 1, H, W) or a negative power."""
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"{name} needs two (B, C, H, W) tensors of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if mask is not None and tuple(mask.shape) != (pred.shape[0], 1, *pred.shape[2:]):
        raise ValueError(f"{name} mask must be {(pred.shape[0], 1, *pred.shape[2:])}, got {tuple(mask.shape)}")
    if power < 0:
        raise ValueError(f"{name} power must be >= 0 (0 turns it off), got {power}")


def style_loss(pred: Tensor, target: Tensor, blur_sigma: float = 0.0, weight: float = 1.0) -> Tensor:
    """Match per-channel colour statistics: weight / C * sum_c [(mu_p - mu_t)^2 + (sd_p - sd_t)^2].

    mu and sd are each image's spatial mean and standard deviation (sqrt(variance + 1e-5)) per
    channel, after an optional gaussian blur; the result is averaged over the batch.

    Args:
        pred: (B, C, H, W).
        target: (B, C, H, W).
        blur_sigma: Blur both first (pixels); 0 for none.
        weight: Multiplies the result.

    Returns:
        Scalar tensor, 0 for identical images.

    Raises:
        ValueError: The shapes differ.
    """
    check_style_inputs(pred, target, None, 0.0, "style_loss")
    if blur_sigma > 0:
        pred, target = blur_images(pred, blur_sigma), blur_images(target, blur_sigma)
    pred_mean, target_mean = pred.mean(dim=(2, 3)), target.mean(dim=(2, 3))  # (B, C)
    pred_std = torch.sqrt(pred.var(dim=(2, 3), unbiased=False) + STYLE_STD_EPSILON)
    target_std = torch.sqrt(target.var(dim=(2, 3), unbiased=False) + STYLE_STD_EPSILON)
    per_sample = ((pred_mean - target_mean) ** 2 + (pred_std - target_std) ** 2).sum(dim=1)  # (B,)
    return weight / pred.shape[1] * per_sample.mean()


def style_mask(mask: Tensor) -> Tensor:
    """The mask style losses split face and background by: (B, 1, R, R) blurred with sigma max(1, R/32).

    Unlike ``soften_mask`` it is not stretched: the edge sits at 0.5, shared by face and background.
    """
    return blur_images(mask, max(1, mask.shape[-1] // STYLE_MASK_DIVISOR)).clamp(0.0, 1.0)


def face_style_loss(pred_swapped: Tensor, target_dst: Tensor, target_dst_mask: Tensor, power: float) -> Tensor:
    """DeepFaceLab's face style loss: the swapped face takes on the dst face's colours and lighting.

    style_loss(pred * m, target * m, blur sigma R/16, weight 100 * power), where m = style_mask(dst mask).

    Args:
        pred_swapped: (B, 3, R, R) the src decoder's output for dst inputs, in [0, 1].
        target_dst: (B, 3, R, R) the dst target in [0, 1].
        target_dst_mask: (B, 1, R, R) the dst face mask in [0, 1].
        power: face_style_power on DeepFaceLab's 0..100 scale (10 is a strong setting); 0 gives 0.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: Shapes do not fit or ``power`` is negative.
    """
    check_style_inputs(pred_swapped, target_dst, target_dst_mask, power, "face_style_loss")
    mask = style_mask(target_dst_mask)
    blur_sigma = max(1, pred_swapped.shape[-1] // FACE_STYLE_BLUR_DIVISOR)
    return style_loss(pred_swapped * mask, target_dst * mask, blur_sigma, FACE_STYLE_WEIGHT_PER_POWER * power)


def background_style_loss(pred_swapped: Tensor, target_dst: Tensor, target_dst_mask: Tensor, power: float) -> Tensor:
    """DeepFaceLab's background style loss: the swapped image reproduces the dst background.

    0.1 * power * (DSSIM(p, t) + MSE(p, t)), with p = pred * (1 - m), t = target * (1 - m),
    m = style_mask(dst mask), DSSIM on the coarse window (about R/11.6).

    Args:
        pred_swapped: (B, 3, R, R) the src decoder's output for dst inputs, in [0, 1].
        target_dst: (B, 3, R, R) the dst target in [0, 1].
        target_dst_mask: (B, 1, R, R) the dst face mask in [0, 1].
        power: bg_style_power on DeepFaceLab's 0..100 scale; 0 gives 0.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: Shapes do not fit or ``power`` is negative.
    """
    check_style_inputs(pred_swapped, target_dst, target_dst_mask, power, "background_style_loss")
    outside = 1.0 - style_mask(target_dst_mask)
    pred_background, target_background = pred_swapped * outside, target_dst * outside
    coarse, _ = dssim_kernel_sizes(pred_swapped.shape[-1])
    weight = BACKGROUND_STYLE_WEIGHT_PER_POWER * power
    return weight * (dssim(pred_background, target_background, coarse)
                     + functional.mse_loss(pred_background, target_background))


def generator_gan_loss(fake_logits: Tensor) -> Tensor:
    """The generator's adversarial loss: mean BCE-with-logits of the discriminator's output on fakes against 1.

    Args:
        fake_logits: Discriminator logits for generated images, any shape (e.g. (B, 1, P, P) patches).

    Returns:
        Scalar tensor; multiply by gan_power.
    """
    return functional.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_gan_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's loss: (BCE(real, 1) + BCE(fake, 0)) / 2, each a mean over its logits.

    Pass ``fake_logits`` computed from detached generator outputs so this loss only trains the
    discriminator.

    Args:
        real_logits: Logits for real images, any shape.
        fake_logits: Logits for generated images, any shape.

    Returns:
        Scalar tensor; log(2) when the discriminator cannot tell (all logits 0).
    """
    real = functional.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = functional.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


def true_face_loss(src_code_logits: Tensor, power: float) -> Tensor:
    """The generator's "true face" term: make src codes pass for dst codes in the code discriminator.

    power * BCE(code_discriminator(src codes), 1). The code discriminator itself trains with
    ``discriminator_gan_loss(dst_code_logits, src_code_logits)`` (dst codes real, src codes fake),
    on detached codes. Pulling both identities into one region of the latent space makes the swap
    resemble src more closely (DeepFaceLab's true_face_power, typically 0.01).

    Args:
        src_code_logits: Code discriminator logits for the src faces' codes, any shape.
        power: true_face_power (>= 0).

    Returns:
        Scalar tensor.

    Raises:
        ValueError: ``power`` is negative.
    """
    if power < 0:
        raise ValueError(f"true_face_loss power must be >= 0 (0 turns it off), got {power}")
    return power * generator_gan_loss(src_code_logits)
