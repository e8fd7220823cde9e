"""Put a predicted face back into a full frame: the core of the merge step.

The model paints a face in an aligned crop of side S (at its own resolution R). To merge,
the prediction is scaled to S, masked, recoloured to the destination face, warped back into
frame coordinates with the inverse of the frame->crop alignment and blended over the frame.
Only the frame region the face lands in is touched, so per-face cost does not grow with the
frame size.
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol, get_args

import cv2
import numpy as np

from tasks.color import MINIMUM_MASK_WEIGHT, ColorTransfer, transfer_color
from tasks.masks import refine_mask

logger = logging.getLogger(__name__)

BlendMode = Literal["overlay"]
BLEND_MODE_CHOICES: tuple[str, ...] = get_args(BlendMode)

# Mask values below this (less than one 8-bit level) contribute nothing visible.
VISIBLE_MASK_LEVEL = 0.5 / 255.0
# Extra frame pixels around the face's box so bilinear warping never clips its rim.
BOX_MARGIN = 2


class CompositeError(ValueError):
    """Inputs to composite_face have shapes, dtypes or values that cannot be merged."""


class BlendFunction(Protocol):
    """One blend mode of the registry."""

    def __call__(self, frame_region: np.ndarray, face_region: np.ndarray, mask_region: np.ndarray) -> np.ndarray:
        """Blend a warped face over a frame region.

        Args:
            frame_region: (h, w, 3) float32 frame pixels in 0..255.
            face_region: (h, w, 3) float32 face pixels in 0..255, already in frame coordinates.
            mask_region: (h, w, 1) float32 weights in [0, 1].

        Returns:
            (h, w, 3) float32 in 0..255; where the mask is 0 the frame value must come back
            bit-exact so untouched pixels stay untouched.
        """
        ...


def blend_overlay(frame_region: np.ndarray, face_region: np.ndarray, mask_region: np.ndarray) -> np.ndarray:
    """Alpha blend: frame * (1 - m) + face * m, written so m == 0 returns the frame exactly."""
    return frame_region + (face_region - frame_region) * mask_region


BLEND_MODES: dict[str, BlendFunction] = {
    "overlay": blend_overlay,
}


def check_image(image: np.ndarray, name: str, dtype: type | None, channels: int | None) -> None:
    """Raise CompositeError unless `image` is 2-D (+ channels) of the given dtype."""
    expected_ndim = 2 if channels is None else 3
    if image.ndim != expected_ndim or (channels is not None and image.shape[2] != channels):
        layout = "(H, W)" if channels is None else f"(H, W, {channels})"
        raise CompositeError(f"{name} must have shape {layout}, got {image.shape}")
    if dtype is not None and image.dtype != dtype:
        raise CompositeError(f"{name} must be {np.dtype(dtype).name}, got {image.dtype}")


def squeeze_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """(H, W) or (H, W, 1) float mask -> float32 (H, W)."""
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    check_image(mask, name, None, None)
    return mask.astype(np.float32, copy=False)


def resize_to(image: np.ndarray, side: int, interpolation: int) -> np.ndarray:
    """Resize a square image to side x side (no-op when it already is)."""
    if image.shape[0] == side and image.shape[1] == side:
        return image
    return cv2.resize(image, (side, side), interpolation=interpolation)


def find_face_box(
    mask: np.ndarray, inverse_matrix: np.ndarray, frame_shape: tuple[int, ...]
) -> tuple[int, int, int, int] | None:
    """Frame-space box (x0, y0, x1, y1) covering the visible mask, or None if it misses the frame."""
    rows = np.flatnonzero(mask.max(axis=1) > VISIBLE_MASK_LEVEL)
    columns = np.flatnonzero(mask.max(axis=0) > VISIBLE_MASK_LEVEL)
    if rows.size == 0:
        return None
    # Pixel centres of the outermost visible pixels, padded by one pixel all round.
    left, right = columns[0] - 1.0, columns[-1] + 1.0
    top, bottom = rows[0] - 1.0, rows[-1] + 1.0
    corners = np.array([[left, top, 1.0], [right, top, 1.0], [right, bottom, 1.0], [left, bottom, 1.0]])
    frame_corners = corners @ inverse_matrix.T  # (4, 2) in frame coordinates
    height, width = frame_shape[:2]
    x0 = max(int(np.floor(frame_corners[:, 0].min())) - BOX_MARGIN, 0)
    y0 = max(int(np.floor(frame_corners[:, 1].min())) - BOX_MARGIN, 0)
    x1 = min(int(np.ceil(frame_corners[:, 0].max())) + BOX_MARGIN + 1, width)
    y1 = min(int(np.ceil(frame_corners[:, 1].max())) + BOX_MARGIN + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def composite_face(
    frame: np.ndarray,
    matrix: np.ndarray,
    predicted_face: np.ndarray,
    predicted_mask: np.ndarray,
    dst_mask: np.ndarray,
    crop_face: np.ndarray,
    color_transfer: ColorTransfer,
    erode: int,
    blur: int,
    blend_mode: BlendMode = "overlay",
) -> np.ndarray:
    """Blend a predicted face into a frame at the place its aligned crop came from.

    Args:
        frame: (H, W, 3) uint8 BGR full frame.
        matrix: (2, 3) similarity mapping frame coordinates to crop coordinates (crop side S).
        predicted_face: (R, R, 3) float32 BGR in [0, 1], the model's face at its resolution R.
        predicted_mask: (R, R) or (R, R, 1) float32 in [0, 1], the model's face mask.
        dst_mask: (S, S) or (S, S, 1) float in [0, 1], the destination face's hull in crop coordinates.
        crop_face: (S, S, 3) uint8 BGR destination crop, the colour reference.
        color_transfer: how to recolour the prediction (see tasks.color).
        erode: pixels (at crop side S) to shrink the combined mask by; negative grows it.
        blur: feather width in pixels at crop side S; 0 keeps a hard edge.
        blend_mode: how face and frame are mixed (see BLEND_MODES).

    Returns:
        A new (H, W, 3) uint8 frame; pixels outside the face's region are unchanged.

    Raises:
        CompositeError: for malformed inputs, a non-invertible matrix or an unknown blend mode.
        tasks.color.ColorTransferError: for an unknown colour transfer.
    """
    check_image(frame, "frame", np.uint8, 3)
    check_image(crop_face, "crop_face", np.uint8, 3)
    check_image(predicted_face, "predicted_face", None, 3)
    predicted_mask = squeeze_mask(predicted_mask, "predicted_mask")
    dst_mask = squeeze_mask(dst_mask, "dst_mask")
    side = crop_face.shape[0]
    if crop_face.shape[1] != side or dst_mask.shape != (side, side):
        raise CompositeError(f"crop_face {crop_face.shape} and dst_mask {dst_mask.shape} must be the same square crop")
    if predicted_face.shape[:2] != predicted_mask.shape or predicted_face.shape[0] != predicted_face.shape[1]:
        raise CompositeError(
            f"predicted_face {predicted_face.shape} and predicted_mask {predicted_mask.shape} "
            "must be the same square size"
        )
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3) or abs(np.linalg.det(matrix[:, :2])) < 1e-12:
        raise CompositeError(f"matrix must be an invertible (2, 3) frame->crop transform, got {matrix.tolist()}")
    blend = BLEND_MODES.get(blend_mode)
    if blend is None:
        raise CompositeError(f"unknown blend mode {blend_mode!r}; choose one of {', '.join(BLEND_MODE_CHOICES)}")

    face = np.clip(resize_to(predicted_face.astype(np.float32), side, cv2.INTER_CUBIC), 0.0, 1.0)
    learned_mask = np.clip(resize_to(predicted_mask, side, cv2.INTER_LINEAR), 0.0, 1.0)
    mask = refine_mask(dst_mask * learned_mask, erode, blur)  # (S, S) float32

    output = frame.copy()
    box = find_face_box(mask, cv2.invertAffineTransform(matrix), frame.shape)
    if box is None or float(mask.sum()) < MINIMUM_MASK_WEIGHT:
        logger.debug("nothing of the face is visible in the frame; frame left unchanged")
        return output
    face = transfer_color(color_transfer, face, crop_face, mask)

    # The region's own frame->crop transform: region pixel (x, y) is frame pixel (x + x0, y + y0).
    x0, y0, x1, y1 = box
    region_matrix = matrix.copy()
    region_matrix[:, 2] += matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    region_size = (x1 - x0, y1 - y0)
    warp_flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped_face = cv2.warpAffine(
        face * 255.0, region_matrix, region_size, flags=warp_flags, borderMode=cv2.BORDER_REPLICATE
    )
    warped_mask = cv2.warpAffine(
        mask, region_matrix, region_size, flags=warp_flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
    )

    frame_region = output[y0:y1, x0:x1].astype(np.float32)
    blended = blend(frame_region, warped_face, np.clip(warped_mask, 0.0, 1.0)[..., None])
    output[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    logger.debug("composited face into frame box %s with %s colour transfer", box, color_transfer)
    return output
