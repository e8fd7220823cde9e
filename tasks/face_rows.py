"""One faces-table row per face: alignment, aligned crop (JPEG), pose and sort scores from its landmarks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from tasks.align import compute_alignment, warp_to_crop
from tasks.detect import DetectedFace
from tasks.pose import estimate_pose
from tasks.scores import score_crop

if TYPE_CHECKING:
    from tasks.extract import FaceOptions


def build_face_row(
    frame: np.ndarray,
    face: DetectedFace,
    embedding: np.ndarray | None,
    options: FaceOptions,
    source: tuple[str, str],
    position: tuple[int, float, int, int],
) -> dict:
    """One faces-table row for a face (alignment, crop, pose and scores from its landmarks)."""
    source_id, source_path = source
    frame_index, timestamp, face_index, track_id = position
    matrix = compute_alignment(face.landmarks, options.face_type, options.size)
    crop = warp_to_crop(frame, matrix, options.size)
    ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for a face in {source_path} frame {frame_index}")
    yaw, pitch, roll = estimate_pose(face.landmarks, frame.shape[:2])
    scores = score_crop(crop)
    return {
        "face_id": f"{source_id}-{frame_index:06d}-{face_index:02d}",
        "source_id": source_id,
        "source_path": source_path,
        "frame_index": frame_index,
        "timestamp": float(timestamp),
        "face_index": face_index,
        "track_id": track_id,
        "bbox": [float(value) for value in face.bbox],
        "detector_score": float(face.score),
        "landmarks": face.landmarks.astype(np.float32).reshape(-1).tolist(),
        "matrix": np.asarray(matrix, dtype=np.float32).reshape(-1).tolist(),
        "face_type": options.face_type,
        "crop_size": options.size,
        "image": jpeg.tobytes(),
        "yaw": float(yaw),
        "pitch": float(pitch),
        "roll": float(roll),
        **scores,
        "embedding": None if embedding is None else np.asarray(embedding, dtype=np.float32).tolist(),
    }
