"""Put a predicted face back into a full frame: the core of the merge step.

The model paints a face in an aligned crop of side S (at its own resolution R). To merge,
the prediction and its mask are scaled to S, the mask is eroded and feathered, the face is
recoloured to the destination face (and histogram matched, sharpened or motion blurred when
asked), warped back into frame coordinates with the inverse of the frame->crop alignment and
blended over the frame by a blend mode (see tasks.blend). Only the frame region the face lands
in is touched, so per-face cost does not grow with the frame size: paste_face works in place,
so all the faces of a frame go into one copy of it, and composite_face returns a new frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from tasks.blend import BlendMode, MotionBlur, SharpenMode, blur_along_motion, find_blend_mode, match_histograms, sharpen_face
from tasks.color import ColorTransfer, transfer_color
from tasks.color_transport import MINIMUM_MASK_WEIGHT
from tasks.masks import refine_mask

logger = logging.getLogger(__name__)

# Mask values below this (less than one 8-bit level) contribute nothing visible.
VISIBLE_MASK_LEVEL = 0.5 / 255.0
# Extra frame pixels around the face's box so bilinear warping never clips its rim.
BOX_MARGIN = 2


class CompositeError(ValueError):
    """Inputs to composite_face have shapes, dtypes or values that cannot be merged."""


@dataclass(frozen=True)
class CompositeOptions:
    """How one face is pasted; sizes are in pixels at the crop side S.

    Attributes:
        color_transfer: how the face is recoloured to the dst crop (see tasks.color).
        color_masked: measure colour statistics inside the mask only (DeepFaceLab's "-m" variants);
            False measures them over the whole crop.
        erode: pixels to shrink the mask by; negative grows it.
        blur: feather width of the mask's edge; 0 keeps a hard edge.
        blend_mode: see tasks.blend.BLEND_MODES.
        hist_match_threshold: 0..255, for the hist_match blend modes (see tasks.blend.match_histograms).
        sharpen_mode: none, box or gaussian unsharp masking of the face.
        sharpen_amount: 0..100 percent.
    """

    color_transfer: ColorTransfer = "rct"
    color_masked: bool = True
    erode: int = 0
    blur: int = 16
    blend_mode: BlendMode = "overlay"
    hist_match_threshold: int = 255
    sharpen_mode: SharpenMode = "none"
    sharpen_amount: int = 0


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


def scale_about_centre(matrix: np.ndarray, face_scale: int, side: int) -> np.ndarray:
    """A frame->crop matrix whose crop sees ``1 + face_scale/100`` times less of the frame: a larger pasted face.

    Args:
        matrix: (2, 3) frame -> crop alignment of a crop of ``side`` px.
        face_scale: percent; 0 returns the same transform.
        side: the crop side; scaling is about the crop's centre.

    Returns:
        (2, 3) float64 matrix.
    """
    factor = 1.0 + face_scale / 100.0
    centre = (side - 1) / 2.0
    scaled = np.asarray(matrix, np.float64) / factor
    scaled[:, 2] += centre - centre / factor
    return scaled


def prepare_face(
    face: np.ndarray, mask: np.ndarray, crop_face: np.ndarray, options: CompositeOptions, motion: MotionBlur | None
) -> np.ndarray:
    """The crop-space steps before warping: colour transfer, histogram match, sharpen, motion blur.

    (S, S, 3) float32 face in [0, 1] and (S, S) refined mask -> (S, S, 3) float32 in [0, 1].
    """
    face = transfer_color(options.color_transfer, face, crop_face, mask if options.color_masked else None)
    if find_blend_mode(options.blend_mode).match_histogram:
        face = match_histograms(face, crop_face, mask, options.hist_match_threshold)
    face = sharpen_face(face, options.sharpen_mode, options.sharpen_amount)
    if motion is not None:
        face = blur_along_motion(face, motion)
    return face


def composite_face(
    frame: np.ndarray,
    matrix: np.ndarray,
    predicted_face: np.ndarray,
    mask: np.ndarray,
    crop_face: np.ndarray,
    options: CompositeOptions = CompositeOptions(),
    motion: MotionBlur | None = None,
) -> np.ndarray:
    """Blend a predicted face into a frame at the place its aligned crop came from.

    Args:
        frame: (H, W, 3) uint8 BGR full frame.
        matrix: (2, 3) similarity mapping frame coordinates to crop coordinates (crop side S).
        predicted_face: (R, R, 3) float32 BGR in [0, 1], the model's face at its resolution R.
        mask: (R, R), (S, S) or with a trailing 1: float in [0, 1], the face's combined mask
            (see tasks.merge_masks), before erode and feather.
        crop_face: (S, S, 3) uint8 BGR destination crop, the colour reference.
        options: colour transfer, mask refinement, blend mode and sharpening.
        motion: blur the face along this streak (crop pixels) before pasting; None = no blur.

    Returns:
        A new (H, W, 3) uint8 frame; pixels outside the face's region are unchanged.

    Raises:
        CompositeError: for malformed inputs or a non-invertible matrix.
        tasks.blend.BlendError: for an unknown blend or sharpen mode.
        tasks.color.ColorTransferError: for an unknown colour transfer.
    """
    check_image(frame, "frame", np.uint8, 3)
    output = frame.copy()
    paste_face(output, matrix, predicted_face, mask, crop_face, options, motion)
    return output


def paste_face(
    frame: np.ndarray,
    matrix: np.ndarray,
    predicted_face: np.ndarray,
    mask: np.ndarray,
    crop_face: np.ndarray,
    options: CompositeOptions = CompositeOptions(),
    motion: MotionBlur | None = None,
) -> tuple[int, int, int, int] | None:
    """``composite_face`` in place: the face is blended into ``frame`` itself, only inside its box.

    Several faces of one frame are pasted into one copy of it this way, instead of copying the
    whole frame per face; the pixels are the same as chaining ``composite_face``.

    Args:
        frame: (H, W, 3) uint8 BGR full frame, written in place.
        matrix, predicted_face, mask, crop_face, options, motion: as ``composite_face``.

    Returns:
        The frame box (x0, y0, x1, y1) that was blended, or None when nothing of the face is visible.

    Raises:
        As ``composite_face``.
    """
    check_image(frame, "frame", np.uint8, 3)
    check_image(crop_face, "crop_face", np.uint8, 3)
    check_image(predicted_face, "predicted_face", None, 3)
    mask = squeeze_mask(mask, "mask")
    side = crop_face.shape[0]
    if crop_face.shape[1] != side:
        raise CompositeError(f"crop_face must be a square crop, got {crop_face.shape}")
    if predicted_face.shape[0] != predicted_face.shape[1] or mask.shape[0] != mask.shape[1]:
        raise CompositeError(f"predicted_face {predicted_face.shape} and mask {mask.shape} must be square")
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3) or abs(np.linalg.det(matrix[:, :2])) < 1e-12:
        raise CompositeError(f"matrix must be an invertible (2, 3) frame->crop transform, got {matrix.tolist()}")
    recipe = find_blend_mode(options.blend_mode)

    face = np.clip(resize_to(predicted_face.astype(np.float32), side, cv2.INTER_CUBIC), 0.0, 1.0)
    if recipe.square:
        mask = np.ones((side, side), dtype=np.float32)
    else:
        mask = np.clip(resize_to(mask, side, cv2.INTER_LINEAR), 0.0, 1.0)
        if not recipe.raw:
            mask = refine_mask(mask, options.erode, options.blur)  # (S, S) float32

    box = find_face_box(mask, cv2.invertAffineTransform(matrix), frame.shape)
    if box is None or float(mask.sum()) < MINIMUM_MASK_WEIGHT:
        logger.debug("nothing of the face is visible in the frame; frame left unchanged")
        return None
    if not recipe.raw:
        face = prepare_face(face, mask, crop_face, options, motion)

    # The region's own frame->crop transform: region pixel (x, y) is frame pixel (x + x0, y + y0).
    x0, y0, x1, y1 = box
    region_matrix = matrix.copy()
    region_matrix[:, 2] += matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    region_size = (x1 - x0, y1 - y0)
    warped_face = cv2.warpAffine(face * 255.0, region_matrix, region_size, flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_REPLICATE)
    warped_mask = cv2.warpAffine(mask, region_matrix, region_size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    np.clip(warped_mask, 0.0, 1.0, out=warped_mask)

    region = frame[y0:y1, x0:x1]
    blended = recipe.blend(region.astype(np.float32), warped_face, warped_mask[..., None])
    # rounded and clipped in place: whole numbers in 0..255, so the uint8 assignment is exact
    region[...] = np.clip(np.rint(blended, out=blended), 0, 255, out=blended)
    logger.debug("composited face into frame box %s (%s, %s)", box, options.blend_mode, options.color_transfer)
    return box
