"""Colour transfer: recolour a predicted face so it matches the destination face's colours.

The merge step pastes a face the model painted in the *source* person's lighting into a
destination frame. Without matching colour statistics the paste shows as a patch of a
different skin tone, so before blending the predicted face is recoloured to the colour
statistics of the destination crop, measured only where the face mask says "face".

Images here are float32 HWC BGR in [0, 1]; uint8 images are accepted and scaled by 1/255.
Masks are (H, W) or (H, W, 1) floats in [0, 1] and act as per-pixel weights.
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol, get_args

import cv2
import numpy as np

logger = logging.getLogger(__name__)

ColorTransfer = Literal["none", "rct"]
COLOR_TRANSFER_CHOICES: tuple[str, ...] = get_args(ColorTransfer)

# Below this total mask weight (in pixels) colour statistics are meaningless.
MINIMUM_MASK_WEIGHT = 1.0
# Keeps the std ratio finite on flat (single-colour) regions.
STD_FLOOR = 1e-3


class ColorTransferError(ValueError):
    """A colour transfer was asked for with an unknown kind or unusable images/masks."""


class ColorTransferFunction(Protocol):
    """One colour-transfer method of the registry."""

    def __call__(self, source: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Recolour `source` to `target`'s colour statistics.

        Args:
            source: (H, W, 3) float32 BGR in [0, 1], the image to recolour.
            target: (H, W, 3) float32 BGR in [0, 1], the image whose colours to take.
            mask: optional (H, W) or (H, W, 1) float weights in [0, 1]; statistics of both images
                are measured only inside it (both images share its coordinates).

        Returns:
            (H, W, 3) float32 BGR in [0, 1], a new array.
        """
        ...


def as_float_image(image: np.ndarray, name: str) -> np.ndarray:
    """Return `image` as float32 (H, W, 3) in [0, 1]; uint8 input is scaled by 1/255.

    Raises:
        ColorTransferError: if the image is not 3-channel or has an unsupported dtype.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ColorTransferError(f"{name} must be an (H, W, 3) BGR image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise ColorTransferError(f"{name} must be uint8 or float in [0, 1], got dtype {image.dtype}")
    return image.astype(np.float32, copy=False)


def as_mask_weights(mask: np.ndarray | None, shape: tuple[int, int], name: str) -> np.ndarray | None:
    """Return `mask` as float32 (H, W) weights matching `shape`, or None when no mask is given.

    Raises:
        ColorTransferError: if the mask's height/width differ from `shape`.
    """
    if mask is None:
        return None
    weights = mask[..., 0] if mask.ndim == 3 and mask.shape[2] == 1 else mask
    if weights.shape != shape:
        raise ColorTransferError(
            f"{name} has shape {mask.shape}; expected {shape} or {shape + (1,)} to match its image"
        )
    if weights.dtype == np.uint8:
        return weights.astype(np.float32) / 255.0
    return weights.astype(np.float32, copy=False)


def measure_lab_statistics(lab: np.ndarray, weights: np.ndarray | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Weighted per-channel mean and std of an (H, W, 3) L*a*b* image -> two (3,) arrays.

    Raises:
        ColorTransferError: if the mask weights sum to (almost) nothing.
    """
    pixels = lab.reshape(-1, 3)
    if weights is None:
        return pixels.mean(axis=0, dtype=np.float64), pixels.std(axis=0, dtype=np.float64)
    flat_weights = weights.reshape(-1)
    inside = flat_weights > 0  # only the masked pixels take part (about half a face crop)
    pixels, flat_weights = pixels[inside].astype(np.float64), flat_weights[inside].astype(np.float64)
    total = flat_weights.sum()
    if total < MINIMUM_MASK_WEIGHT:
        raise ColorTransferError(
            f"{name} covers (almost) no pixels (total weight {total:.3g}); pass a non-empty mask or none at all"
        )
    mean = flat_weights @ pixels / total
    variance = flat_weights @ np.square(pixels - mean) / total
    return mean, np.sqrt(variance)


def reinhard_color_transfer(
    source: np.ndarray,
    target: np.ndarray,
    source_mask: np.ndarray | None = None,
    target_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Reinhard colour transfer (RCT): match per-channel mean and std in L*a*b*.

    The whole source is shifted and scaled, statistics come only from inside the masks.

    Args:
        source: (H, W, 3) float32 BGR in [0, 1] (uint8 accepted), the image to recolour.
        target: (H', W', 3) float32 BGR in [0, 1] (uint8 accepted), the colour reference.
        source_mask: optional (H, W) or (H, W, 1) weights in [0, 1] for the source statistics.
        target_mask: optional (H', W') or (H', W', 1) weights in [0, 1] for the target statistics.

    Returns:
        (H, W, 3) float32 BGR, clipped to [0, 1].

    Raises:
        ColorTransferError: on malformed images, mismatched or empty masks.
    """
    source_image = as_float_image(source, "source")
    target_image = as_float_image(target, "target")
    source_weights = as_mask_weights(source_mask, source_image.shape[:2], "source_mask")
    target_weights = as_mask_weights(target_mask, target_image.shape[:2], "target_mask")

    # float32 BGR in [0, 1] -> L in [0, 100], a/b in about [-127, 127].
    source_lab = cv2.cvtColor(source_image, cv2.COLOR_BGR2LAB)
    target_lab = cv2.cvtColor(target_image, cv2.COLOR_BGR2LAB)
    source_mean, source_std = measure_lab_statistics(source_lab, source_weights, "source_mask")
    target_mean, target_std = measure_lab_statistics(target_lab, target_weights, "target_mask")

    scale = (target_std / np.maximum(source_std, STD_FLOOR)).astype(np.float32)
    shift = (target_mean - source_mean * scale).astype(np.float32)
    recoloured = cv2.cvtColor(source_lab * scale + shift, cv2.COLOR_LAB2BGR)  # float32 throughout
    return np.clip(recoloured, 0.0, 1.0)


def transfer_none(source: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Leave the colours as they are (returns a float32 copy of `source`)."""
    return as_float_image(source, "source").copy()


def transfer_reinhard(source: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """RCT with one mask shared by source and target (both in the same crop coordinates)."""
    return reinhard_color_transfer(source, target, source_mask=mask, target_mask=mask)


COLOR_TRANSFERS: dict[str, ColorTransferFunction] = {
    "none": transfer_none,
    "rct": transfer_reinhard,
}


def transfer_color(
    kind: ColorTransfer,
    source: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Recolour `source` to match `target`'s colour statistics with the method `kind`.

    Args:
        kind: one of COLOR_TRANSFER_CHOICES ("none", "rct").
        source: (H, W, 3) float32 BGR in [0, 1] (uint8 accepted), the predicted face.
        target: (H, W, 3) float32 BGR in [0, 1] (uint8 accepted), the destination crop.
        mask: optional (H, W) or (H, W, 1) float [0, 1]; statistics are measured inside it.

    Returns:
        (H, W, 3) float32 BGR in [0, 1], a new array.

    Raises:
        ColorTransferError: for an unknown `kind`, mismatched shapes or an empty mask.
    """
    method = COLOR_TRANSFERS.get(kind)
    if method is None:
        raise ColorTransferError(f"unknown colour transfer {kind!r}; choose one of {', '.join(COLOR_TRANSFER_CHOICES)}")
    if mask is not None and source.shape[:2] != target.shape[:2]:
        raise ColorTransferError(
            f"source {source.shape} and target {target.shape} must have the same height and width when a mask is shared"
        )
    logger.debug("colour transfer %s on %s", kind, source.shape)
    return method(source, target, mask)
