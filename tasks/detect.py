"""Face detection, 68-point landmarks and identity descriptors.

Analyzers share one interface (FaceAnalyzer) and are picked by name from tasks.analyzers.ANALYZERS,
so another detector can be added without touching the callers.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

import cv2
import dlib
import numpy as np

logger = logging.getLogger(__name__)

DetectorKind = Literal["hog", "cnn"]


@dataclass(frozen=True)
class DetectedFace:
    """One face found in a frame.

    bbox is the detector's box (x0, y0, x1, y1) in frame pixels; the jaw may reach below it.
    score is the detector's own confidence, comparable only between faces of the same detector.
    landmarks is (68, 2) float32 in frame pixels, iBUG 68-point order.
    """

    bbox: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray


class FaceAnalyzer(Protocol):
    """Finds faces in BGR frames and describes who they are."""

    name: str

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Find every face in a frame.

        Args:
            image: uint8 (H, W, 3) BGR frame.

        Returns:
            The faces, largest bbox area first; empty when there is none.
        """
        ...

    def embed(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """Describe a face's identity.

        Args:
            image: the frame `face` was detected in.
            face: a face from detect() on that frame.

        Returns:
            (D,) float32 descriptor, D fixed per analyzer (dlib 128, insightface 512); compare by
            Euclidean distance against the analyzer's tasks.analyzers.IdentitySpace.
        """
        ...


class ModelFileError(FileNotFoundError):
    """A model file the analyzer needs is missing."""


def _model_path(file_name: str) -> Path:
    """Locate a model file shipped in the face_recognition_models package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f"{file_name}: package face_recognition_models is not installed; install the "
                             "project's requirements (pip install -e .)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / file_name
    if not path.is_file():
        raise ModelFileError(f"{path}: model file missing; reinstall face_recognition_models")
    return path


class DlibAnalyzer:
    """dlib's HOG or CNN (MMOD) face detector, 68-point shape predictor and 128-D ResNet descriptor.

    Detection runs on a copy whose longer side is at most `max_side` (for speed); landmarks are
    fitted on the full-resolution frame. Faces whose bbox is shorter than `min_size` pixels on
    either side are dropped.
    """

    name = "dlib"

    def __init__(self, detector: DetectorKind = "hog", upsample: int = 1, max_side: int = 640,
                 min_size: int = 0) -> None:
        """Load the models (about a second; keep one analyzer per worker).

        Args:
            detector: "hog" (fast, frontal faces) or "cnn" (slower on CPU, handles more poses).
            upsample: times the detection copy is doubled; each doubling finds faces half as large.
            max_side: longer side of the detection copy, in pixels.
            min_size: smallest bbox side kept, in frame pixels.

        Raises:
            ValueError: unknown detector or out-of-range option.
            ModelFileError: a model file is missing.
        """
        if detector not in get_args(DetectorKind):
            raise ValueError(f"detector must be one of {list(get_args(DetectorKind))}, got {detector!r}")
        if upsample < 0 or max_side < 32 or min_size < 0:
            raise ValueError(f"need upsample >= 0, max_side >= 32, min_size >= 0; got {upsample}, {max_side}, "
                             f"{min_size}")
        self.detector, self.upsample, self.max_side, self.min_size = detector, upsample, max_side, min_size
        if detector == "hog":
            self._hog = dlib.get_frontal_face_detector()
        else:
            self._cnn = dlib.cnn_face_detection_model_v1(str(_model_path("mmod_human_face_detector.dat")))
        self._shape_predictor = dlib.shape_predictor(str(_model_path("shape_predictor_68_face_landmarks.dat")))
        self._describer = dlib.face_recognition_model_v1(str(_model_path("dlib_face_recognition_resnet_model_v1.dat")))

    def _find_boxes(self, rgb: np.ndarray) -> list[tuple[dlib.rectangle, float]]:
        if self.detector == "hog":
            boxes, scores, _ = self._hog.run(rgb, self.upsample)
            return list(zip(boxes, scores))
        return [(found.rect, found.confidence) for found in self._cnn(rgb, self.upsample)]

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Find every face in a BGR frame (see FaceAnalyzer.detect)."""
        _check_frame(image)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small = rgb
        if scale < 1.0:
            small = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        faces = []
        for box, score in self._find_boxes(small):
            # boxes may reach past the frame edge; keep them as found, in full-resolution pixels
            x0, y0, x1, y1 = (value / scale for value in (box.left(), box.top(), box.right() + 1, box.bottom() + 1))
            if min(x1 - x0, y1 - y0) < self.min_size:
                continue
            full_box = dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1)
            shape = self._shape_predictor(rgb, full_box)
            landmarks = np.array([(point.x, point.y) for point in shape.parts()], dtype=np.float32)
            faces.append(DetectedFace(bbox=(x0, y0, x1, y1), score=float(score), landmarks=landmarks))
        faces.sort(key=lambda face: (face.bbox[2] - face.bbox[0]) * (face.bbox[3] - face.bbox[1]), reverse=True)
        logger.debug("%s detector found %d faces in a %dx%d frame", self.detector, len(faces), width, height)
        return faces

    def embed(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """Describe a face's identity as a (128,) float32 vector (see FaceAnalyzer.embed)."""
        _check_frame(image)
        if face.landmarks.shape != (68, 2):
            raise ValueError(f"embedding needs (68, 2) landmarks, got {face.landmarks.shape}")
        x0, y0, x1, y1 = (round(value) for value in face.bbox)
        points = dlib.points([dlib.point(round(float(x)), round(float(y))) for x, y in face.landmarks])
        shape = dlib.full_object_detection(dlib.rectangle(x0, y0, x1 - 1, y1 - 1), points)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return np.asarray(self._describer.compute_face_descriptor(rgb, shape), dtype=np.float32)

    def fit_landmarks(self, image: np.ndarray, box: tuple[float, float, float, float]) -> DetectedFace:
        """Fit the 68 landmarks inside a given box, without running the detector (about 1-2 ms).

        Args:
            image: uint8 (H, W, 3) BGR frame.
            box: (x0, y0, x1, y1) in frame pixels, framed like this analyzer's detector boxes
                (e.g. derived from the same face's landmarks in the previous frame).

        Returns:
            The face with that bbox, score 0.0 (no detector ran) and the fitted landmarks.

        Raises:
            ValueError: bad frame or an empty box.
        """
        _check_frame(image)
        x0, y0, x1, y1 = (float(value) for value in box)
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise ValueError(f"fit_landmarks needs a non-empty box, got {box}")
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        shape = self._shape_predictor(rgb, dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1))
        landmarks = np.array([(point.x, point.y) for point in shape.parts()], dtype=np.float32)
        return DetectedFace(bbox=(x0, y0, x1, y1), score=0.0, landmarks=landmarks)

    def detect_at_least(self, image: np.ndarray, min_size: float) -> list[DetectedFace]:
        """Find the faces whose bbox side is at least about `min_size` pixels, with fewer upsampling passes.

        Re-detecting faces known to be large needs no upsampling: the HOG detector then searches a
        quarter of the pixels per pass saved. Smaller faces may be missed. The CNN detector keeps
        its upsampling.

        Args:
            image: uint8 (H, W, 3) BGR frame.
            min_size: smallest face side needed, in frame pixels.

        Returns:
            As detect(): the faces found, largest first.
        """
        if self.detector != "hog":
            return self.detect(image)
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        upsample = 0  # HOG's window is 80 px of the detection copy, halved by each upsampling pass
        while upsample < self.upsample and 80 / (scale * 2**upsample) > min_size:
            upsample += 1
        configured, self.upsample = self.upsample, upsample
        try:
            return self.detect(image)
        finally:
            self.upsample = configured


def _check_frame(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) BGR frame, got {image.dtype} {image.shape}")
