"""The eyes-and-mouth priority mask: where a face swap's detail matters most.

Eyes and mouth carry expression and gaze; blurry or misplaced ones give a swap away first. With
DeepFaceLab's "eyes and mouth priority" the training loss adds 300 * L1 inside this mask (see
model.losses.reconstruction_loss), so the model spends its capacity there.

The mask is the convex hull of each eye (iBUG points 36-41 and 42-47) and of the outer lips
(48-59), dilated by a little and feathered, as DeepFaceLab's get_image_eye_mask and
get_image_mouth_mask build it: dilation by an ellipse of side size // 32 and a gaussian blur of
side size // 16 (made odd).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from tasks.masks import SHIFT_BITS, MaskError, check_landmarks

logger = logging.getLogger(__name__)

RIGHT_EYE = slice(36, 42)  # the subject's right eye, on the image's left
LEFT_EYE = slice(42, 48)
OUTER_LIPS = slice(48, 60)
DILATE_DIVISOR = 32  # the dilation ellipse's side is size // 32
FEATHER_DIVISOR = 16  # the blur kernel's side is size // 16, made odd


def eyes_mouth_mask(landmarks_68: np.ndarray, size: int, feather: bool = True) -> np.ndarray:
    """Fill the eyes and the mouth of a face, slightly enlarged, in a square crop.

    Args:
        landmarks_68: (68, 2) x, y points (iBUG 68 layout) in the crop's pixels, e.g. a face's
            landmarks mapped through its alignment matrix with tasks.align.transform_points.
        size: The crop's side in pixels.
        feather: Soften the edges with DeepFaceLab's blur; False keeps them hard (0 or 255).

    Returns:
        (size, size) uint8 mask, 255 on the eyes and mouth, 0 elsewhere (soft edges if feathered).

    Raises:
        MaskError: if the landmarks are not a finite (68, 2) array or the size is not positive.
    """
    points = check_landmarks(landmarks_68)
    if int(size) <= 0:
        raise MaskError(f"mask size must be positive, got {size!r}")
    size = int(size)
    mask = np.zeros((size, size), dtype=np.uint8)
    for part in (RIGHT_EYE, LEFT_EYE, OUTER_LIPS):
        hull = cv2.convexHull(np.round(points[part] * (1 << SHIFT_BITS)).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_8, shift=SHIFT_BITS)
    dilation = size // DILATE_DIVISOR
    if dilation > 1:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (dilation, dilation)))
    blur = size // FEATHER_DIVISOR
    blur += 1 - blur % 2  # odd, at least 1
    if feather and blur > 1:
        mask = cv2.GaussianBlur(mask, (blur, blur), 0)
    logger.debug("eyes/mouth mask %dx%d covers %d pixels", size, size, int(np.count_nonzero(mask)))
    return mask
