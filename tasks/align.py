"""Aligned face crops: a similarity transform from frame pixels to a square crop.

A least-squares similarity fit (Umeyama) of the landmarks onto a canonical mean face, followed by
a per-face-type framing, gives a 2x3 matrix that only rotates, scales and translates: the face is
upright, its eyes level and centred left-right, at a size set by the face type.
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import cv2
import numpy as np

logger = logging.getLogger(__name__)

FaceType = Literal["half", "mid_full", "full", "whole_face", "head"]

# Mean face of the iBUG points 17..54 (brows, nose, eyes, mouth corners and upper lip): the mean of
# the test photos' frontal dlib landmarks after Procrustes alignment, mirror-averaged. Units: the
# distance from the midpoint of the eye centres (the origin) to the mouth centre; x right, y down.
# The jaw line, lower lip and inner lips are left out: they move with pose and speech.
MEAN_FACE = np.array([
    [-0.866, -0.144], [-0.739, -0.277], [-0.552, -0.322], [-0.357, -0.298], [-0.171, -0.226],  # 17-21
    [0.171, -0.226], [0.357, -0.298], [0.552, -0.322], [0.739, -0.277], [0.866, -0.144],  # 22-26
    [0.0, -0.033], [0.0, 0.150], [0.0, 0.332], [0.0, 0.520],  # 27-30 nose ridge
    [-0.207, 0.635], [-0.108, 0.669], [0.0, 0.704], [0.108, 0.669], [0.207, 0.635],  # 31-35 nose base
    [-0.642, 0.007], [-0.531, -0.063], [-0.396, -0.062], [-0.277, 0.025], [-0.405, 0.046], [-0.537, 0.047],
    [0.277, 0.025], [0.396, -0.062], [0.531, -0.063], [0.642, 0.007], [0.537, 0.047], [0.405, 0.046],
    [-0.439, 0.952], [-0.274, 0.906], [-0.118, 0.882], [0.0, 0.908], [0.118, 0.882], [0.274, 0.906],
    [0.439, 0.952],  # 48-54 mouth corners and upper lip
], dtype=np.float64)
MEAN_FACE_INDICES = slice(17, 55)

# face type -> (crop side, vertical position of the crop centre), both in mean-face units (see
# MEAN_FACE); the eyes sit at y=0, mouth centre at y=1, chin near y=1.73, hairline near y=-1.3.
FACE_TYPE_FRAMING: dict[str, tuple[float, float]] = {
    "half": (1.65, 0.45),  # eyes to mouth
    "mid_full": (2.1, 0.55),  # brows to below the mouth
    "full": (2.5, 0.70),  # brows to chin
    "whole_face": (3.2, 0.40),  # full plus the forehead
    "head": (4.8, -0.15),  # the whole head with hair
}
assert set(FACE_TYPE_FRAMING) == set(get_args(FaceType)), "FACE_TYPE_FRAMING must cover every FaceType"


def framing_fits(inner: FaceType, outer: FaceType) -> bool:
    """Whether an ``inner`` crop lies wholly inside an ``outer`` crop of the same face (so it can be cut from it)."""
    inner_side, inner_centre = FACE_TYPE_FRAMING[inner]
    outer_side, outer_centre = FACE_TYPE_FRAMING[outer]
    return abs(inner_centre - outer_centre) + inner_side / 2 <= outer_side / 2 + 1e-9


def framing_scale(inner: FaceType, outer: FaceType) -> float:
    """Side of an ``inner`` crop as a fraction of the ``outer`` crop's side."""
    return FACE_TYPE_FRAMING[inner][0] / FACE_TYPE_FRAMING[outer][0]

# below this scale the crop is supersampled and area-averaged (warpAffine alone would alias),
# sampling at most this many pixels across
_SUPERSAMPLE_BELOW = 0.5
_SUPERSAMPLE_MAX_SIDE = 4096


def _fit_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation+scale+translation taking source points onto target points (Umeyama)."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])  # no reflections
    rotation = u @ np.diag(sign) @ vt
    scale = (singular * sign).sum() / source_centred.var(axis=0).sum()
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def compute_alignment(landmarks: np.ndarray, face_type: FaceType, size: int) -> np.ndarray:
    """Matrix taking frame pixels to an aligned size x size crop of the given face type.

    Args:
        landmarks: (68, 2) iBUG landmarks in frame pixels.
        face_type: framing, from "half" (eyes to mouth) to "head" (whole head with hair).
        size: crop side in pixels.

    Returns:
        (2, 3) float32 similarity matrix (rotation, uniform scale, translation), pixel centres
        convention: the crop's vertical centre line is x = (size - 1) / 2.

    Raises:
        ValueError: unknown face type, bad or degenerate landmarks, or size < 1.
    """
    if face_type not in FACE_TYPE_FRAMING:
        raise ValueError(f"face_type must be one of {list(get_args(FaceType))}, got {face_type!r}")
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2) or size < 1:
        raise ValueError(f"need (68, 2) landmarks and size >= 1, got {landmarks.shape} and {size}")
    if np.ptp(landmarks[MEAN_FACE_INDICES], axis=0).max() < 1e-3:
        raise ValueError("landmarks collapse to a single point; they cannot be aligned")
    to_mean_face = _fit_similarity(landmarks[MEAN_FACE_INDICES], MEAN_FACE)
    side, centre_y = FACE_TYPE_FRAMING[face_type]
    pixels_per_unit = size / side
    centre = (size - 1) / 2.0
    framing = np.array([[pixels_per_unit, 0.0, centre], [0.0, pixels_per_unit, centre - centre_y * pixels_per_unit]])
    return _compose(framing, to_mean_face).astype(np.float32)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 matrix applying `inner` first, then `outer`."""
    return np.hstack([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2:] + outer[:, 2:]])


def invert_matrix(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (crop -> frame for an alignment matrix), as float32 2x3."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64)).astype(np.float32)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a 2x3 affine matrix; returns (N, 2) float32."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    matrix = np.asarray(matrix, dtype=np.float64)
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def warp_to_crop(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Cut the size x size crop that `matrix` describes out of a frame.

    Bilinear sampling with replicated borders. When the crop shrinks the frame by more than 2x,
    it is sampled at a whole multiple of `size` and area-averaged down, so detail does not alias.

    Args:
        image: (H, W, C) or (H, W) frame.
        matrix: 2x3 frame -> crop matrix, e.g. from compute_alignment.
        size: crop side in pixels.

    Returns:
        (size, size, C) or (size, size) crop of the image's dtype.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    factor = 1
    if 0 < scale < _SUPERSAMPLE_BELOW:
        factor = max(1, min(int(np.ceil(1.0 / scale)), _SUPERSAMPLE_MAX_SIDE // size))
    if factor == 1:
        return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # output pixel j averages supersampled pixels factor*j .. factor*j + factor - 1
    offset = (factor - 1) / 2.0
    supersampled = _compose(np.array([[factor, 0.0, offset], [0.0, factor, offset]]), matrix)
    large = cv2.warpAffine(image, supersampled, (size * factor, size * factor), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(large, (size, size), interpolation=cv2.INTER_AREA)
