"""Face masks from landmarks, and the erode/feather refinement used when merging.

A hull mask marks the whole face (jaw, cheeks, brows and the forehead above them) in the
coordinates of a crop or frame. It is used as the destination mask when merging and as a
fallback training mask when no segmentation is available.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

logger = logging.getLogger(__name__)

LANDMARK_COUNT = 68
CHIN_INDEX = 8
BROW_INDICES = slice(17, 27)
# How far the brows are lifted to cover the forehead, as a fraction of the chin-to-brow
# distance. The hairline sits about half that distance above the brows; stopping short of
# it keeps hair out of the mask.
FOREHEAD_LIFT = 0.3
# Sub-pixel precision for polygon filling: coordinates are scaled by 2**SHIFT_BITS.
SHIFT_BITS = 4
# Feather width in px = this many Gaussian sigmas (the ramp from ~2 % to ~98 %).
SIGMAS_PER_FEATHER = 4.0


class MaskError(ValueError):
    """Landmarks or masks given to the mask functions have an unusable shape or value."""


def normalize_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """Return (height, width) from a square side or a (height, width) pair.

    Raises:
        MaskError: for non-positive sizes.
    """
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    if height <= 0 or width <= 0:
        raise MaskError(f"mask size must be positive, got {size!r}")
    return int(height), int(width)


def lift_brows(landmarks: np.ndarray) -> np.ndarray:
    """Brow points moved up the face, away from the chin -> (10, 2) float array.

    "Up" is the direction from the chin to the brows' centre, so tilted and rolled
    faces get their forehead on the correct side.
    """
    brows = landmarks[BROW_INDICES]
    chin_to_brows = brows.mean(axis=0) - landmarks[CHIN_INDEX]
    return brows + FOREHEAD_LIFT * chin_to_brows


def check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The landmarks as a float64 (68, 2) array; MaskError unless they are 68 finite points."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (LANDMARK_COUNT, 2):
        raise MaskError(f"landmarks must have shape ({LANDMARK_COUNT}, 2), got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise MaskError("landmarks contain NaN or infinite values; re-run landmark detection for this face")
    return points


def hull_mask(landmarks: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Fill the convex hull of the whole face, forehead included.

    Args:
        landmarks: (68, 2) x, y points (iBUG 68 layout) in the coordinates of the image
            the mask is for.
        size: the side of a square image, or its (height, width).

    Returns:
        (height, width) uint8 mask, 255 inside the face and 0 outside.

    Raises:
        MaskError: if the landmarks are not a finite (68, 2) array or the size is not positive.
    """
    points = check_landmarks(landmarks)
    height, width = normalize_size(size)

    outline = np.concatenate([points, lift_brows(points)])
    hull = cv2.convexHull(np.round(outline * (1 << SHIFT_BITS)).astype(np.int32))
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_8, shift=SHIFT_BITS)
    return mask


def as_float_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1) uint8 0..255 or float 0..1 -> float32 (H, W) in [0, 1].

    Raises:
        MaskError: for any other shape.
    """
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise MaskError(f"mask must have shape (H, W) or (H, W, 1), got {mask.shape}")
    if mask.dtype == np.uint8:
        return mask.astype(np.float32) / 255.0
    return np.clip(mask.astype(np.float32), 0.0, 1.0)


def refine_mask(mask: np.ndarray, erode: int, blur: int) -> np.ndarray:
    """Shrink or grow a mask, then feather its edge.

    Sizes are in pixels of this mask, so callers pass values meant for the resolution they
    work at (the crop size when merging). Values are clamped to what the mask can hold.
    The outer band of the mask is always cleared before feathering so the result fades to
    (near) zero at the border: a mask cut off hard at the crop edge shows as a square seam
    once warped back into a frame.

    Args:
        mask: (H, W) or (H, W, 1), uint8 0..255 or float 0..1.
        erode: pixels to shrink by; negative values grow the mask.
        blur: feather width in pixels (the soft ramp across the edge); 0 keeps edges hard.

    Returns:
        float32 (H, W) mask in [0, 1], a new array.

    Raises:
        MaskError: for a mask of unusable shape or a negative blur.
    """
    if blur < 0:
        raise MaskError(f"blur is a feather width in pixels and cannot be negative, got {blur}")
    refined = as_float_mask(mask).copy()
    height, width = refined.shape
    shortest_side = min(height, width)

    erode = int(np.clip(erode, -shortest_side // 2, shortest_side // 2))
    if erode != 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(erode) + 1, 2 * abs(erode) + 1))
        operation = cv2.erode if erode > 0 else cv2.dilate
        refined = operation(refined, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0.0)

    blur = min(int(blur), shortest_side)
    # Cleared border: half the feather width, so the blurred edge ends inside the crop.
    border = min(max(1, blur // 2), shortest_side // 2)
    refined[:border, :] = 0.0
    refined[-border:, :] = 0.0
    refined[:, :border] = 0.0
    refined[:, -border:] = 0.0

    if blur > 0:
        sigma = blur / SIGMAS_PER_FEATHER
        refined = cv2.GaussianBlur(refined, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    logger.debug("refined %dx%d mask: erode %d, blur %d", height, width, erode, blur)
    return np.clip(refined, 0.0, 1.0)
