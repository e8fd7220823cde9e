"""A FaceAnalyzer backed by an insightface model pack: SCRFD detection, 68 3-D landmarks, ArcFace.

Nothing is downloaded: the user puts a model pack folder on disk (by default
~/.insightface/models/buffalo_l) and installs the insightface package. The pack's ONNX files are
told apart by their graphs (input size, outputs), not by name, so any pack works (buffalo_l,
buffalo_s, antelopev2) as long as it holds a detector, the 68-point landmark model and a
recognition model.

Embeddings are 512-D and L2-normalised (ArcFace): unlike dlib's 128-D descriptors, compare them
by cosine similarity (same person above about 0.35).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from tasks.detect import DetectedFace

logger = logging.getLogger(__name__)

PackRole = Literal["detection", "landmark_3d_68", "landmark_2d_106", "recognition", "genderage"]
REQUIRED_ROLES: tuple[PackRole, ...] = ("detection", "landmark_3d_68", "recognition")
DEFAULT_PACK = Path("~/.insightface/models/buffalo_l")
EMBEDDING_SIZE = 512

# what each role's file is called in the packs insightface publishes
ROLE_FILES: dict[PackRole, str] = {
    "detection": "det_10g.onnx or det_500m.onnx (buffalo_*), scrfd_10g_bnkps.onnx (antelopev2): SCRFD face detector",
    "landmark_3d_68": "1k3d68.onnx: 68 3-D landmarks in iBUG order",
    "landmark_2d_106": "2d106det.onnx: 106 2-D landmarks (optional, unused)",
    "recognition": "w600k_r50.onnx or w600k_mbf.onnx (buffalo_*), glintr100.onnx (antelopev2): ArcFace identity",
    "genderage": "genderage.onnx: gender and age (optional, unused)",
}
assert set(ROLE_FILES) == set(get_args(PackRole)), "ROLE_FILES must cover every PackRole"

_INSTALL_HINT = ("pip install insightface onnxruntime (insightface imports cv2: keep opencv-python, "
                 "not opencv-python-headless, installed beside it)")


class InsightFaceMissingError(ImportError):
    """The insightface or onnxruntime package is not installed; the message says what to install."""


class ModelPackError(FileNotFoundError):
    """The model pack folder is missing, incomplete or ambiguous; the message says which files go where."""


def import_package(name: str):
    """Import insightface or onnxruntime, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise InsightFaceMissingError(f"the insightface analyzer needs the {name} package ({error}); {_INSTALL_HINT}") \
            from error


def describe_pack(folder: Path) -> str:
    """What a pack folder must hold, for error messages."""
    lines = "\n".join(f"  {role}: {ROLE_FILES[role]}" for role in REQUIRED_ROLES)
    return (f"put an insightface model pack in {folder}: the .onnx files directly in that folder, at least\n{lines}\n"
            "(unzip buffalo_l.zip from insightface's model releases there, or point the analyzer's pack option at "
            "the folder that holds them)")


def classify_model(inputs: list[tuple[str, list]], outputs: list[tuple[str, list]]) -> PackRole | None:
    """The role of an ONNX model from its inputs' and outputs' (name, shape); None when unknown.

    SCRFD detectors have one output per stride and kind (scores, boxes, keypoints): 6 or 9. The
    others take one NCHW image whose side gives the role: 112 recognition, 192 landmarks (3309
    values: 68 3-D points after the pose parameters; 212: 106 2-D points), 96 gender and age.
    """
    if len(outputs) >= 5:
        return "detection"
    if len(inputs) != 1 or len(inputs[0][1]) != 4:
        return None
    side = tuple(inputs[0][1][2:])
    width = outputs[0][1][-1] if outputs and outputs[0][1] else None
    if side == (112, 112):
        return "recognition"
    if side == (192, 192):
        return {3309: "landmark_3d_68", 212: "landmark_2d_106"}.get(width)
    if side == (96, 96):
        return "genderage"
    return None


def read_model_signature(path: Path) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """(name, shape) of an ONNX file's inputs and outputs; symbolic dimensions are kept as strings."""
    onnxruntime = import_package("onnxruntime")
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped failures
        raise ModelPackError(f"{path}: not a readable ONNX model ({error}); replace it with the pack's original file") \
            from error
    return ([(item.name, list(item.shape)) for item in session.get_inputs()],
            [(item.name, list(item.shape)) for item in session.get_outputs()])


def find_pack_models(folder: Path) -> dict[PackRole, Path]:
    """Find the ONNX file of each role in a model pack folder.

    Args:
        folder: the pack folder, e.g. ~/.insightface/models/buffalo_l.

    Returns:
        role -> file, for every role found; the required roles are always present.

    Raises:
        ModelPackError: the folder is missing, a required role has no file, or two files claim one role.
        InsightFaceMissingError: onnxruntime is not installed.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelPackError(f"{folder}: model pack folder not found; {describe_pack(folder)}")
    found: dict[PackRole, Path] = {}
    for path in sorted(folder.glob("*.onnx")):
        role = classify_model(*read_model_signature(path))
        if role is None:
            logger.info("%s: not a model this analyzer uses; ignored", path)
            continue
        if role in found:
            raise ModelPackError(f"{folder}: both {found[role].name} and {path.name} are {role} models; "
                                 "keep one pack per folder (move the other file out)")
        found[role] = path
    missing = [role for role in REQUIRED_ROLES if role not in found]
    if missing:
        have = ", ".join(f"{path.name} ({role})" for role, path in found.items()) or "no usable .onnx file"
        raise ModelPackError(f"{folder}: no {' / '.join(missing)} model (found {have}); {describe_pack(folder)}")
    return found


def to_detected_face(box: np.ndarray, landmarks_3d: np.ndarray) -> DetectedFace:
    """A DetectedFace from one detector row (x0, y0, x1, y1, score) and (68, 3) frame-pixel landmarks."""
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    landmarks_3d = np.asarray(landmarks_3d, dtype=np.float32)
    if box.shape != (5,) or landmarks_3d.shape != (68, 3):
        raise ValueError(f"need a (5,) detection and (68, 3) landmarks, got {box.shape} and {landmarks_3d.shape}")
    x0, y0, x1, y1, score = (float(value) for value in box)
    # depth (the third column) is relative to the face, not the frame: dropped
    return DetectedFace(bbox=(x0, y0, x1, y1), score=score, landmarks=np.ascontiguousarray(landmarks_3d[:, :2]))


def order_faces(faces: list[DetectedFace], min_size: float = 0) -> list[DetectedFace]:
    """Faces whose box sides are at least `min_size`, largest box area first."""
    kept = [face for face in faces if min(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]) >= min_size]
    return sorted(kept, key=lambda face: (face.bbox[2] - face.bbox[0]) * (face.bbox[3] - face.bbox[1]), reverse=True)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """ArcFace's alignment points from iBUG 68: eye centres, nose tip, mouth corners (image-left first), (5, 2)."""
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.shape != (68, 2):
        raise ValueError(f"need (68, 2) landmarks, got {landmarks.shape}")
    return np.stack([landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0), landmarks[30], landmarks[48],
                     landmarks[54]]).astype(np.float32)


def normalize_embedding(embedding: np.ndarray) -> np.ndarray:
    """A (512,) float32 unit vector; a zero vector (a failed model) is an error."""
    embedding = np.asarray(embedding, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(embedding))
    if embedding.shape != (EMBEDDING_SIZE,) or not np.isfinite(norm) or norm == 0:
        raise ValueError(f"recognition model gave a {embedding.shape} embedding of norm {norm}; "
                         f"expected {EMBEDDING_SIZE} values, not all zero")
    return embedding / norm


class InsightFaceAnalyzer:
    """SCRFD detection, 68 landmarks (1k3d68) and 512-D ArcFace embeddings from a model pack.

    Detection runs at `detection_size` (the detector letterboxes any frame into it); landmarks
    and embeddings come from the full-resolution frame.
    """

    name = "insightface"

    def __init__(self, pack: Path | str = DEFAULT_PACK, detection_size: int = 640, detection_threshold: float = 0.5,
                 min_size: int = 0, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        """Load the pack's models.

        Args:
            pack: the model pack folder (see describe_pack).
            detection_size: side of the detector's square input, a multiple of 32.
            detection_threshold: lowest detector score kept.
            min_size: smallest bbox side kept, in frame pixels.
            providers: ONNX Runtime execution providers, in order of preference.

        Raises:
            InsightFaceMissingError: insightface or onnxruntime is not installed.
            ModelPackError: the pack folder is missing or incomplete.
            ValueError: an out-of-range option.
        """
        if detection_size < 32 or detection_size % 32 or not 0 < detection_threshold < 1 or min_size < 0:
            raise ValueError(f"need detection_size a multiple of 32, 0 < detection_threshold < 1, min_size >= 0; "
                             f"got {detection_size}, {detection_threshold}, {min_size}")
        insightface = import_package("insightface")
        import_package("onnxruntime")
        self.pack, self.min_size = Path(pack).expanduser(), min_size
        self.models = find_pack_models(self.pack)
        model_zoo = importlib.import_module("insightface.model_zoo")
        self._face_type = importlib.import_module("insightface.app.common").Face
        self._norm_crop = importlib.import_module("insightface.utils.face_align").norm_crop
        loaded = {role: model_zoo.get_model(str(self.models[role]), providers=list(providers)) for role in REQUIRED_ROLES}
        self._detector, self._landmarker, self._recognizer = (loaded[role] for role in REQUIRED_ROLES)
        self._detector.prepare(0, input_size=(detection_size, detection_size), det_thresh=detection_threshold)
        self._landmarker.prepare(0)
        self._recognizer.prepare(0)
        logger.info("insightface %s: %s", insightface.__version__,
                    ", ".join(f"{role} {path.name}" for role, path in self.models.items()))

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Find every face in a BGR frame (see FaceAnalyzer.detect)."""
        _check_frame(image)
        boxes, keypoints = self._detector.detect(image, max_num=0, metric="default")
        faces = []
        for index, box in enumerate(boxes):
            record = self._face_type(bbox=box[:4], kps=None if keypoints is None else keypoints[index], det_score=box[4])
            landmarks = self._landmarker.get(image, record)
            faces.append(to_detected_face(box, landmarks))
        return order_faces(faces, self.min_size)

    def embed(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """Describe a face's identity as a (512,) float32 unit vector (ArcFace; compare by cosine)."""
        _check_frame(image)
        aligned = self._norm_crop(image, landmark=five_points(face.landmarks), image_size=112)
        return normalize_embedding(self._recognizer.get_feat(aligned))


def _check_frame(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) BGR frame, got {image.dtype} {image.shape}")
