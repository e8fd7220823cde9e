"""Head pose (yaw, pitch, roll) from 68 facial landmarks.

Conventions, in degrees, all 0 for a face looking straight into the camera:
- yaw > 0 when the face turns to its own left (its nose moves toward the image's right side);
- pitch > 0 when the face looks up;
- roll > 0 when the face is turned clockwise in the image (its left eye, on the image's right,
  sits lower than its right eye); taken from the line through the two eye centres.
Yaw and pitch come from fitting a generic 3D face to the landmarks (cv2.solvePnP) and are measured
against the line of sight to the face, so an off-centre face looking at the camera reads 0.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

logger = logging.getLogger(__name__)

# The one pose grid every pose histogram uses (coverage report, best-N curation, best_faces sorting;
# uniform yaw sampling bins finer with the same pose_bins), so their cells mean the same thing: 10-degree cells, yaw from
# profile to profile, pitch over the range a face stays detectable in. Poses beyond the edges count
# in the edge cells; a missing angle counts as frontal.
YAW_EDGES = np.arange(-90.0, 90.1, 10.0)  # 18 cells
PITCH_EDGES = np.arange(-60.0, 60.1, 10.0)  # 12 cells


def pose_bins(angles: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(N,) int64 cell of each angle on one axis of the grid (0 .. len(edges) - 2).

    Args:
        angles: (N,) degrees; NaN counts as 0 (frontal).
        edges: increasing cell edges, e.g. YAW_EDGES.
    """
    angles = np.nan_to_num(np.asarray(angles, dtype=np.float64), nan=0.0)
    return np.clip(np.searchsorted(edges, angles, side="right") - 1, 0, len(edges) - 2).astype(np.int64)

# A generic adult face in millimetres: x toward the face's left (image right when frontal), y down,
# z away from the camera (into the head); origin between the eye centres. x and y are the mean of
# the test photos' frontal landmarks (eye-to-mouth distance taken as 60 mm); depths are estimates.
# Only points fixed to the skull are used: the jaw line and lower lip move as the mouth opens.
GENERIC_FACE_3D: dict[int, tuple[float, float, float]] = {
    17: (-51.9, -8.6, 14.0), 19: (-33.1, -19.3, -2.0), 21: (-10.3, -13.6, -8.0),  # face's right brow
    22: (10.3, -13.6, -8.0), 24: (33.1, -19.3, -2.0), 26: (51.9, -8.6, 14.0),  # face's left brow
    27: (0.0, -2.0, -10.0), 28: (0.0, 9.0, -15.0), 29: (0.0, 19.9, -21.0), 30: (0.0, 31.2, -28.0),  # nose ridge
    31: (-12.4, 38.1, -10.0), 33: (0.0, 42.2, -16.0), 35: (12.4, 38.1, -10.0),  # nostrils, base of nose
    36: (-38.5, 0.4, 10.0), 39: (-16.6, 1.5, -1.0),  # face's right eye, outer and inner corner
    42: (16.6, 1.5, -1.0), 45: (38.5, 0.4, 10.0),  # face's left eye, inner and outer corner
    48: (-26.3, 57.1, 3.0), 51: (0.0, 54.5, -14.0), 54: (26.3, 57.1, 3.0),  # mouth corners, top of upper lip
}
_MODEL_INDICES = np.array(sorted(GENERIC_FACE_3D))
_MODEL_POINTS = np.array([GENERIC_FACE_3D[index] for index in _MODEL_INDICES], dtype=np.float64)
RIGHT_EYE = slice(36, 42)  # the face's right eye, on the image's left
LEFT_EYE = slice(42, 48)


def estimate_pose(landmarks: np.ndarray, image_size: tuple[int, int]) -> tuple[float, float, float]:
    """Estimate head yaw, pitch and roll (see the module docstring for the sign conventions).

    Args:
        landmarks: (68, 2) iBUG 68-point landmarks in frame pixels.
        image_size: (height, width) of the frame, i.e. image.shape[:2]; it sets a pinhole camera
            centred on the frame whose focal length equals the longer side.

    Returns:
        (yaw, pitch, roll) in degrees.

    Raises:
        ValueError: landmarks are not (68, 2) or the 3D fit fails.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"pose needs (68, 2) landmarks, got {landmarks.shape}")
    height, width = image_size
    focal = float(max(width, height))
    camera = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    found, rotation_vector, translation = cv2.solvePnP(
        _MODEL_POINTS, landmarks[_MODEL_INDICES], camera, None, flags=cv2.SOLVEPNP_EPNP)
    if found:
        found, rotation_vector, translation = cv2.solvePnP(
            _MODEL_POINTS, landmarks[_MODEL_INDICES], camera, None, rotation_vector, translation,
            useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not found or translation[2, 0] <= 0:
        raise ValueError("head pose fit failed: the landmarks do not look like a face")
    rotation, _ = cv2.Rodrigues(rotation_vector)
    eye_line = landmarks[LEFT_EYE].mean(axis=0) - landmarks[RIGHT_EYE].mean(axis=0)
    roll = np.arctan2(eye_line[1], eye_line[0])
    # the direction the face points (out of the nose), seen along the line of sight to the head and
    # turned by -roll, so that tilting the head in the image plane leaves yaw and pitch alone
    facing = _rotation_onto_optical_axis(translation[:, 0]) @ (rotation @ np.array([0.0, 0.0, -1.0]))
    cosine, sine = np.cos(-roll), np.sin(-roll)
    across, down = cosine * facing[0] - sine * facing[1], sine * facing[0] + cosine * facing[1]
    yaw = np.degrees(np.arctan2(across, -facing[2]))
    pitch = np.degrees(np.arctan2(-down, np.hypot(across, facing[2])))
    return float(yaw), float(pitch), float(np.degrees(roll))


def _rotation_onto_optical_axis(direction: np.ndarray) -> np.ndarray:
    """3x3 rotation taking `direction` onto the camera's +z axis by the shortest turn."""
    direction = direction / np.linalg.norm(direction)
    axis = np.cross(direction, [0.0, 0.0, 1.0])
    sine, cosine = np.linalg.norm(axis), direction[2]
    if sine < 1e-9:
        return np.eye(3)
    rotation, _ = cv2.Rodrigues(axis / sine * np.arctan2(sine, cosine))
    return rotation
