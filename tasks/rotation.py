"""Finding faces in images stored sideways or upside down: retry detection on quarter turns.

Detectors are trained on upright faces. When an image holds none, the same image turned by 90, 180
and 270 degrees is searched too, and the faces found are mapped back to the image as given: boxes
stay axis-aligned, landmarks keep their iBUG order, so compute_alignment on them turns the crop
upright whatever the image's orientation.
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import cv2
import numpy as np

from tasks.align import invert_matrix, transform_points
from tasks.detect import DetectedFace, FaceAnalyzer

logger = logging.getLogger(__name__)

QuarterTurn = Literal[0, 90, 180, 270]  # degrees clockwise
RETRY_TURNS: tuple[QuarterTurn, ...] = (90, 180, 270)

_ROTATE_FLAGS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def rotate_image(image: np.ndarray, turn: QuarterTurn) -> np.ndarray:
    """The image turned clockwise by a quarter-turn multiple (an exact pixel permutation)."""
    if turn not in get_args(QuarterTurn):
        raise ValueError(f"turn must be one of {list(get_args(QuarterTurn))} degrees, got {turn!r}")
    return image if turn == 0 else cv2.rotate(image, _ROTATE_FLAGS[turn])


def turn_matrix(turn: QuarterTurn, width: int, height: int) -> np.ndarray:
    """2x3 matrix taking pixel centres of a width x height image to those of the image turned clockwise."""
    matrices = {
        0: [[1, 0, 0], [0, 1, 0]],
        90: [[0, -1, height - 1], [1, 0, 0]],
        180: [[-1, 0, width - 1], [0, -1, height - 1]],
        270: [[0, 1, 0], [-1, 0, width - 1]],
    }
    if turn not in matrices:
        raise ValueError(f"turn must be one of {list(get_args(QuarterTurn))} degrees, got {turn!r}")
    return np.array(matrices[turn], dtype=np.float64)


def map_face(face: DetectedFace, matrix: np.ndarray) -> DetectedFace:
    """A face moved through a quarter-turn matrix (landmarks: pixel centres; box: pixel edges)."""
    landmarks = transform_points(face.landmarks, matrix)
    x0, y0, x1, y1 = face.bbox
    # box edges sit half a pixel off the centres the matrix maps
    corners = transform_points(np.array([[x0, y0], [x1, y1]]) - 0.5, matrix) + 0.5
    (left, top), (right, bottom) = corners.min(axis=0), corners.max(axis=0)
    return DetectedFace(bbox=(float(left), float(top), float(right), float(bottom)), score=face.score,
                        landmarks=landmarks.astype(np.float32))


def detect_turned(analyzer: FaceAnalyzer, image: np.ndarray, turn: QuarterTurn) -> list[DetectedFace]:
    """Detect on the image turned clockwise by `turn`; faces come back in the given image's pixels."""
    if turn == 0:
        return analyzer.detect(image)
    height, width = image.shape[:2]
    back = invert_matrix(turn_matrix(turn, width, height))
    return [map_face(face, back) for face in analyzer.detect(rotate_image(image, turn))]


def detect_with_rotation(analyzer: FaceAnalyzer, image: np.ndarray,
                         turns: tuple[QuarterTurn, ...] = RETRY_TURNS) -> list[DetectedFace]:
    """Find faces; when there are none upright, search the image turned by each of `turns`.

    Among the turns, the one whose best face has the highest detector score wins (a stray
    detection in a wrong orientation scores lower than the real face), so a retried image costs
    1 + len(turns) detections; an image with an upright face costs one.

    Args:
        analyzer: any FaceAnalyzer.
        image: uint8 (H, W, 3) BGR frame.
        turns: clockwise quarter turns to retry, in degrees.

    Returns:
        The faces in `image`'s own pixel coordinates, largest first; empty when no turn finds any.
    """
    faces, _ = detect_with_turn(analyzer, image, turns)
    return faces


def detect_with_turn(analyzer: FaceAnalyzer, image: np.ndarray,
                     turns: tuple[QuarterTurn, ...] = RETRY_TURNS) -> tuple[list[DetectedFace], QuarterTurn]:
    """detect_with_rotation, also saying which clockwise turn found the faces (0 when upright or none)."""
    faces = analyzer.detect(image)
    return (faces, 0) if faces else search_turns(analyzer, image, turns)


def search_turns(analyzer: FaceAnalyzer, image: np.ndarray,
                 turns: tuple[QuarterTurn, ...]) -> tuple[list[DetectedFace], QuarterTurn]:
    """The faces of the turn whose best face scores highest, and that turn; ([], 0) when none finds any."""
    best: tuple[list[DetectedFace], QuarterTurn] = ([], 0)
    for turn in turns:
        found = detect_turned(analyzer, image, turn)
        if found and (not best[0] or max(face.score for face in found) > max(face.score for face in best[0])):
            best = (found, turn)
    if best[0]:
        logger.debug("found %d faces after turning the image %d degrees clockwise", len(best[0]), best[1])
    return best


class RotationRetryAnalyzer:
    """A FaceAnalyzer that retries quarter turns when nothing is found upright.

    For a video, keep one per source: the turn that last found faces is tried first, so a clip
    shot sideways (without rotation metadata) costs one detection a frame once its turn is known,
    frames with an upright face cost one, and only frames with no face at all cost 1 + len(turns).
    """

    def __init__(self, analyzer: FaceAnalyzer, turns: tuple[QuarterTurn, ...] = RETRY_TURNS) -> None:
        unknown = [turn for turn in turns if turn not in RETRY_TURNS]
        if unknown:
            raise ValueError(f"turns must be among {list(RETRY_TURNS)} degrees, got {unknown}")
        self.analyzer, self.turns = analyzer, tuple(turns)
        self.name = analyzer.name
        self.last_turn: QuarterTurn = 0

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Find every face (see FaceAnalyzer.detect), trying the last successful turn first."""
        faces = detect_turned(self.analyzer, image, self.last_turn)
        if faces:
            return faces
        if self.last_turn:
            faces = self.analyzer.detect(image)
            turn: QuarterTurn = 0
        if not faces:
            faces, turn = search_turns(self.analyzer, image, tuple(t for t in self.turns if t != self.last_turn))
        if faces:
            self.last_turn = turn
        return faces

    def embed(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """Describe a face (see FaceAnalyzer.embed); descriptors align on the landmarks, so any turn works."""
        return self.analyzer.embed(image, face)
