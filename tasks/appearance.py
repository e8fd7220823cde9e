"""Appearance augmentations of training faces (DeepFaceLab SAEHD's sample options), deterministic per generator.

- random HSV shift (random_hsv_power): jitter hue, saturation and value of the network input;
- blur out mask: blur the target's background, so the model does not spend capacity on its detail;
- colour transfer (ct_mode): recolour a src face to a reference face's colours.
"""

from __future__ import annotations

import cv2
import numpy as np

from tasks.color import ColorTransfer, transfer_color

HUE_DEGREES = 360.0  # OpenCV's float HSV: hue in [0, 360), saturation and value in [0, 1]
BLUR_OUT_DIVISOR = 128  # DeepFaceLab blurs the background with sigma = resolution / 128
# A colour transfer during training measures both faces inside the overlap of their masks; below
# this fraction of the crop the overlap says little and whole crops are compared instead.
MIN_SHARED_MASK_FRACTION = 0.05


def random_hsv(image: np.ndarray, rng: np.random.Generator, power: float) -> np.ndarray:
    """Shift hue, saturation and value by random amounts scaled by ``power`` (DFL random_hsv_power).

    Hue moves by up to +-180 * power degrees (wrapping round), saturation and value by up to
    +-power / 2 (clipped to [0, 1]); one draw of each per call, for the whole image.

    Args:
        image: (H, W, 3) BGR, uint8 or float in [0, 1].
        rng: The generator; equal seeds give equal shifts.
        power: In [0, 1]; 0 returns an unchanged copy (and draws nothing). DFL suggests up to 0.3.

    Returns:
        The shifted image, same shape and dtype.

    Raises:
        ValueError: ``power`` is outside [0, 1] or the image is not (H, W, 3).
    """
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"random_hsv power must be in [0, 1], got {power}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"random_hsv needs an (H, W, 3) BGR image, got shape {image.shape}")
    if power == 0:
        return image.copy()
    hue_shift = rng.uniform(-0.5, 0.5) * power * HUE_DEGREES
    saturation_shift, value_shift = rng.uniform(-0.5, 0.5, size=2) * power
    floats = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    hue, saturation, value = cv2.split(cv2.cvtColor(floats, cv2.COLOR_BGR2HSV))
    hue = np.mod(hue + hue_shift, HUE_DEGREES)
    saturation = np.clip(saturation + saturation_shift, 0.0, 1.0)
    value = np.clip(value + value_shift, 0.0, 1.0)
    hsv = np.stack([hue, saturation, value], axis=-1).astype(np.float32)
    shifted = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), 0.0, 1.0)
    if image.dtype == np.uint8:
        return np.round(shifted * 255.0).astype(np.uint8)
    return shifted.astype(image.dtype)


def blur_out_mask(image: np.ndarray, mask: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Blur the background outside the face mask, keeping the face and never smearing it outwards.

    DeepFaceLab's "blur out mask": the background is replaced by a normalised convolution of the
    background alone, blur(image * (1 - m)) / blur(1 - m), so face colours do not bleed into it;
    the face (m = 1) is kept as it is. Training targets treated this way carry no background
    detail next to the face for the model to learn, which makes the seam of a swap less visible.

    Args:
        image: (H, W, 3) uint8 or float image.
        mask: (H, W) or (H, W, 1) face mask, uint8 0..255 or float 0..1.
        sigma: Blur sigma in pixels; default max(H, W) / 128 as in DeepFaceLab.

    Returns:
        The image with its background blurred, same shape and dtype.

    Raises:
        ValueError: The mask does not match the image or ``sigma`` is not positive.
    """
    weights = mask[..., 0] if mask.ndim == 3 else mask
    if weights.shape != image.shape[:2]:
        raise ValueError(f"blur_out_mask mask {mask.shape} does not match the image {image.shape}")
    sigma = max(image.shape[:2]) / BLUR_OUT_DIVISOR if sigma is None else sigma
    if not sigma > 0:
        raise ValueError(f"blur_out_mask sigma must be positive, got {sigma}")
    face = (weights.astype(np.float32) / 255.0 if weights.dtype == np.uint8 else weights.astype(np.float32))[..., None]
    floats = image.astype(np.float32)
    background = 1.0 - face  # (H, W, 1)
    blurred = cv2.GaussianBlur(floats * background, (0, 0), sigma).reshape(floats.shape)
    coverage = cv2.GaussianBlur(background, (0, 0), sigma).reshape(background.shape)  # background share
    normalised = np.divide(blurred, coverage, out=floats.copy(), where=coverage > 1e-6)
    result = floats * face + normalised * background
    if image.dtype == np.uint8:
        return np.clip(np.round(result), 0, 255).astype(np.uint8)
    return result.astype(image.dtype)


def recolour_face(face: np.ndarray, mask: np.ndarray, reference: np.ndarray, reference_mask: np.ndarray | None,
                  kind: ColorTransfer) -> np.ndarray:
    """Recolour a uint8 face to a reference face's colours, measured where both masks overlap."""
    shared = None
    if reference_mask is not None:
        shared = np.minimum(mask, reference_mask).astype(np.float32) / 255.0  # (R, R) in [0, 1]
        if shared.sum() < MIN_SHARED_MASK_FRACTION * shared.size:
            shared = None
    return np.round(transfer_color(kind, face, reference, shared) * 255.0).astype(np.uint8)
