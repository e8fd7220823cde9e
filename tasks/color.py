"""Colour transfer: recolour a predicted face so it matches the destination face's colours.

The merge step pastes a face the model painted in the *source* person's lighting into a
destination frame. Without matching colour statistics the paste shows as a patch of a
different skin tone, so before blending the predicted face is recoloured to the colour
statistics of the destination crop, measured only where the face mask says "face". Training
uses the same transfers to give src samples the colours of random dst faces.

Methods (DeepFaceLab's names), from the simplest statistics to whole distributions:
- rct: Reinhard, per-channel mean and std in L*a*b*.
- lct: linear colour transfer, matching the BGR mean and covariance (A = Ct^1/2 Cs^-1/2).
- mkl: Monge-Kantorovich linear, the covariance-matching map that moves colours the least.
- idt: iterative distribution transfer (Pitie et al.), matching 1-D marginals along random rotations.
- sot: sliced optimal transport, the same along random directions averaged per step.
Statistics come from the masked pixels only; the whole source is recoloured. idt and sot draw
their rotations/directions from a seeded generator, so equal inputs give equal outputs. lct, mkl,
idt and sot, and the image and mask checks all methods share, live in tasks.color_transport.

Images here are float32 HWC BGR in [0, 1]; uint8 images are accepted and scaled by 1/255.
Masks are (H, W) or (H, W, 1) floats in [0, 1] and act as per-pixel weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, Protocol, get_args

import cv2
import numpy as np

from tasks.color_transport import (
    ColorTransferError,
    as_float_image,
    as_mask_weights,
    iterative_distribution_transfer,
    linear_color_transfer,
    masked_rows,
    monge_kantorovich_transfer,
    sliced_optimal_transport,
)

logger = logging.getLogger(__name__)

ColorTransfer = Literal["none", "rct", "lct", "mkl", "idt", "sot"]
COLOR_TRANSFER_CHOICES: tuple[str, ...] = get_args(ColorTransfer)

# Keeps the std ratio finite on flat (single-colour) regions.
STD_FLOOR = 1e-3


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


def measure_lab_statistics(lab: np.ndarray, weights: np.ndarray | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Weighted per-channel mean and std of an (H, W, 3) L*a*b* image -> two (3,) arrays.

    Raises:
        ColorTransferError: if the mask weights sum to (almost) nothing.
    """
    rows, row_weights = masked_rows(lab, weights, name)  # only the masked pixels (about half a face crop)
    pixels = lab.reshape(-1, 3)[rows].astype(np.float64)
    mean = row_weights @ pixels / row_weights.sum()
    return mean, np.sqrt(row_weights @ np.square(pixels - mean) / row_weights.sum())


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


def share_mask(method: Callable[..., np.ndarray]) -> ColorTransferFunction:
    """Adapt a (source, target, source_mask, target_mask) method to the registry's one shared mask."""
    def transfer(source: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return method(source, target, source_mask=mask, target_mask=mask)

    transfer.__doc__ = f"``{method.__name__}`` with one mask shared by source and target."
    return transfer


COLOR_TRANSFERS: dict[str, ColorTransferFunction] = {
    "none": transfer_none,
    "rct": transfer_reinhard,
    "lct": share_mask(linear_color_transfer),
    "mkl": share_mask(monge_kantorovich_transfer),
    "idt": share_mask(iterative_distribution_transfer),
    "sot": share_mask(sliced_optimal_transport),
}
assert set(COLOR_TRANSFERS) == set(COLOR_TRANSFER_CHOICES), "COLOR_TRANSFERS must cover every ColorTransfer"


def transfer_color(
    kind: ColorTransfer,
    source: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Recolour `source` to match `target`'s colour statistics with the method `kind`.

    Args:
        kind: one of COLOR_TRANSFER_CHOICES ("none", "rct", "lct", "mkl", "idt", "sot").
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
