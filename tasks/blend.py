"""Blend modes, histogram matching, sharpening and motion blur for pasting a swapped face.

Blend modes follow DeepFaceLab's merger:
- overlay: alpha blend through the feathered mask.
- hist_match: the face's per-channel histograms matched to the dst crop's inside the mask, then overlay.
- seamless: Poisson blending (cv2.seamlessClone) inside the mask, so the face takes the frame's
  colours at its border; the result is then alpha blended through the feathered mask again.
- seamless_hist_match: histogram match, then seamless.
- raw_rgb: the whole predicted square pasted as it is: no mask, colour transfer or sharpening.
- raw_predict: the prediction through the mask as given, without erode, feather, colour transfer
  or sharpening. (DeepFaceLab writes the bare crop instead; a render keeps the frame's size.)

A mode is a recipe: the frame-space blend function plus the crop-space steps it asks for.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import cv2
import numpy as np

logger = logging.getLogger(__name__)

BlendMode = Literal["overlay", "hist_match", "seamless", "seamless_hist_match", "raw_rgb", "raw_predict"]
BLEND_MODE_CHOICES: tuple[str, ...] = get_args(BlendMode)
SharpenMode = Literal["none", "box", "gaussian"]
SHARPEN_MODE_CHOICES: tuple[str, ...] = get_args(SharpenMode)

# seamlessClone needs a hard mask: the feathered mask above this level (DeepFaceLab's first step, 0.1).
SEAMLESS_MASK_LEVEL = 0.1
# A Poisson region narrower than this (px) has no inside to solve for; it is overlaid instead.
SEAMLESS_MIN_SIDE = 3
SEAMLESS_PAD = 2  # px of replicated edge around the region (seamlessClone skips its mask's outer ring)
HISTOGRAM_LEVELS = 256
SHARPEN_KERNEL = 3  # px at the crop side, DeepFaceLab's


class BlendError(ValueError):
    """A blend or sharpen mode is unknown, or its inputs cannot be blended."""


class BlendFunction(Protocol):
    """The frame-space half of a blend mode."""

    def __call__(self, frame_region: np.ndarray, face_region: np.ndarray, mask_region: np.ndarray) -> np.ndarray:
        """Blend a warped face over a frame region.

        Args:
            frame_region: (h, w, 3) float32 frame pixels in 0..255 (whole numbers: the frame is uint8).
            face_region: (h, w, 3) float32 face pixels in 0..255, already in frame coordinates.
            mask_region: (h, w, 1) float32 weights in [0, 1].

        Returns:
            (h, w, 3) float32 in 0..255; where the mask is 0 the frame value must come back
            bit-exact so untouched pixels stay untouched.
        """
        ...


def blend_overlay(frame_region: np.ndarray, face_region: np.ndarray, mask_region: np.ndarray) -> np.ndarray:
    """Alpha blend: frame * (1 - m) + face * m, written so m == 0 returns the frame exactly."""
    blended = face_region - frame_region  # one (h, w, 3) temporary, updated in place
    blended *= mask_region
    blended += frame_region
    return blended


def blend_seamless(frame_region: np.ndarray, face_region: np.ndarray, mask_region: np.ndarray) -> np.ndarray:
    """Poisson-blend the face into the region inside the hard mask, then overlay that through the soft mask."""
    # Padded by replicating the edge: seamlessClone ignores the outermost pixel ring of its mask,
    # which would otherwise leave a strip unblended where a face runs off the frame.
    def pad(image: np.ndarray) -> np.ndarray:
        return cv2.copyMakeBorder(image, SEAMLESS_PAD, SEAMLESS_PAD, SEAMLESS_PAD, SEAMLESS_PAD, cv2.BORDER_REPLICATE)

    hard = pad((mask_region[..., 0] > SEAMLESS_MASK_LEVEL).astype(np.uint8) * 255)
    hard[[0, -1], :] = 0  # cleared here too, so the bounding box below is the one seamlessClone uses
    hard[:, [0, -1]] = 0
    x, y, width, height = cv2.boundingRect(hard)
    if width < SEAMLESS_MIN_SIDE or height < SEAMLESS_MIN_SIDE:
        return blend_overlay(frame_region, face_region, mask_region)
    frame_pixels = pad(frame_region.astype(np.uint8))  # whole numbers already: exact
    face_pixels = pad(np.clip(np.rint(face_region), 0, 255).astype(np.uint8))
    centre = (x + width // 2, y + height // 2)  # where the clone lands exactly where it came from
    cloned = cv2.seamlessClone(face_pixels, frame_pixels, hard, centre, cv2.NORMAL_CLONE)
    cloned = cloned[SEAMLESS_PAD:-SEAMLESS_PAD, SEAMLESS_PAD:-SEAMLESS_PAD]
    return blend_overlay(frame_region, cloned.astype(np.float32), mask_region)


@dataclass(frozen=True)
class BlendRecipe:
    """One blend mode: the frame-space blend and which crop-space steps run before it.

    Attributes:
        blend: mixes the warped face into the frame.
        match_histogram: match the face's histograms to the dst crop's first.
        raw: skip mask refinement, colour transfer, histogram matching, sharpening and motion blur.
        square: paste the whole crop (the mask is ignored).
    """

    blend: BlendFunction
    match_histogram: bool = False
    raw: bool = False
    square: bool = False


BLEND_MODES: dict[str, BlendRecipe] = {
    "overlay": BlendRecipe(blend_overlay),
    "hist_match": BlendRecipe(blend_overlay, match_histogram=True),
    "seamless": BlendRecipe(blend_seamless),
    "seamless_hist_match": BlendRecipe(blend_seamless, match_histogram=True),
    "raw_rgb": BlendRecipe(blend_overlay, raw=True, square=True),
    "raw_predict": BlendRecipe(blend_overlay, raw=True),
}
assert set(BLEND_MODES) == set(BLEND_MODE_CHOICES), "BLEND_MODES must cover every BlendMode"


def find_blend_mode(mode: str) -> BlendRecipe:
    """The recipe of a blend mode.

    Raises:
        BlendError: for an unknown mode (the message lists the valid ones).
    """
    recipe = BLEND_MODES.get(mode)
    if recipe is None:
        raise BlendError(f"unknown blend mode {mode!r}; choose one of {', '.join(BLEND_MODE_CHOICES)}")
    return recipe


def match_histograms(source: np.ndarray, target: np.ndarray, mask: np.ndarray, threshold: int = 255) -> np.ndarray:
    """Map each channel of ``source`` so its histogram inside the mask becomes ``target``'s.

    Args:
        source: (S, S, 3) float32 BGR in [0, 1], the face to change.
        target: (S, S, 3) float32 or uint8 BGR, the dst crop (same coordinates as the source).
        mask: (S, S) float32 weights in [0, 1], where both histograms are measured.
        threshold: 0..255; below 255 the source's cumulative histogram is squeezed, so its
            brightest tones map to the target's tone at that quantile instead of its brightest
            (DeepFaceLab's hist_match_threshold).

    Returns:
        (S, S, 3) float32 in [0, 1]; the whole source is mapped, pixels outside the mask included.
    """
    if target.dtype == np.uint8:
        target = target.astype(np.float32) / 255.0
    weights = mask.reshape(-1).astype(np.float64)
    if weights.sum() < 1.0:
        return source.copy()
    levels = np.arange(HISTOGRAM_LEVELS, dtype=np.float64)
    scale = HISTOGRAM_LEVELS - 1
    matched = np.empty_like(source, dtype=np.float32)
    for channel in range(3):
        source_values = source[..., channel] * scale  # (S, S) in 0..255
        source_bins = np.clip(np.rint(source_values), 0, scale).astype(np.int64).reshape(-1)
        target_bins = np.clip(np.rint(target[..., channel] * scale), 0, scale).astype(np.int64).reshape(-1)
        source_histogram = np.bincount(source_bins, weights=weights, minlength=HISTOGRAM_LEVELS)
        target_histogram = np.bincount(target_bins, weights=weights, minlength=HISTOGRAM_LEVELS)
        # mid-step cumulative fractions: a level's own pixels sit half way up its step
        source_cdf = (np.cumsum(source_histogram) - source_histogram / 2) / source_histogram.sum()
        target_cdf = (np.cumsum(target_histogram) - target_histogram / 2) / target_histogram.sum()
        lookup = np.interp(source_cdf * (threshold / scale), target_cdf, levels)  # (256,) source level -> target level
        matched[..., channel] = np.interp(source_values, levels, lookup) / scale
    return np.clip(matched, 0.0, 1.0)


def sharpen_face(image: np.ndarray, mode: SharpenMode, amount: int) -> np.ndarray:
    """Unsharp-mask a (S, S, 3) float32 face in [0, 1] by ``amount`` percent (0 = unchanged).

    box subtracts a 3x3 mean, gaussian a 3x3 Gaussian blur; 100 adds the detail once more.

    Raises:
        BlendError: unknown mode or an amount outside 0..100.
    """
    if mode not in SHARPEN_MODE_CHOICES:
        raise BlendError(f"unknown sharpen mode {mode!r}; choose one of {', '.join(SHARPEN_MODE_CHOICES)}")
    if not 0 <= amount <= 100:
        raise BlendError(f"sharpen amount must be in 0..100 (percent), got {amount}")
    if mode == "none" or amount == 0:
        return image
    size = (SHARPEN_KERNEL, SHARPEN_KERNEL)
    blurred = cv2.blur(image, size) if mode == "box" else cv2.GaussianBlur(image, size, 0)
    return np.clip(image + (image - blurred) * (amount / 100.0), 0.0, 1.0)


@dataclass(frozen=True)
class MotionBlur:
    """A straight motion streak: its length in px at the crop side, its direction in degrees.

    The angle is measured from the crop's +x axis towards +y (image coordinates, y down).
    """

    length: int
    angle: float


def blur_along_motion(image: np.ndarray, motion: MotionBlur) -> np.ndarray:
    """Average a (S, S, C) image along a line of ``motion.length`` px in ``motion.angle``'s direction."""
    length = int(motion.length) | 1  # odd, so the line has a centre pixel
    if length < 3:
        return image
    centre = length // 2
    kernel = np.zeros((length, length), dtype=np.float32)
    kernel[centre, :] = 1.0
    # getRotationMatrix2D turns counter-clockwise as displayed, i.e. towards -y: negate the angle
    rotation = cv2.getRotationMatrix2D((centre, centre), -motion.angle, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length), flags=cv2.INTER_LINEAR)
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REPLICATE)


# A streak longer than this fraction of the crop is a tracking jump, not motion.
MAX_MOTION_FRACTION = 0.25


def estimate_motion(before: np.ndarray | None, current: np.ndarray, after: np.ndarray | None, matrix: np.ndarray,
                    percent: int, side: int) -> MotionBlur | None:
    """A face's motion streak from its track's landmarks in the neighbouring frames (DeepFaceLab's motion blur).

    Args:
        before, current, after: (68, 2) frame-px landmarks of the face in the previous, this and the
            next frame; a missing neighbour is None.
        matrix: (2, 3) frame -> crop of this face.
        percent: streak length as a percentage of the distance the face moves per frame, in crop px.
        side: the crop side; a streak over a quarter of it is a tracking jump and gives None.

    Returns:
        The streak, or None when the face moves less than 2 crop px (per ``percent``) or has no neighbour.
    """
    if before is None and after is None:
        return None
    start = current if before is None else before
    end = current if after is None else after
    steps = 2 if before is not None and after is not None else 1
    velocity = np.asarray(matrix, np.float64)[:, :2] @ ((end.mean(axis=0) - start.mean(axis=0)) / steps)  # crop px/frame
    length = float(np.hypot(*velocity)) * percent / 100.0
    if length < 2 or length > MAX_MOTION_FRACTION * side:
        return None
    return MotionBlur(round(length), math.degrees(math.atan2(velocity[1], velocity[0])))
