"""Placing faces by hand: look at one frame, fit landmarks in a box, record it in landmarks.yaml.

The interactive loop is: show a frame with what the detector finds there (boxes labelled with their
coordinates), give a box around the face it missed or aligned badly, check the fitted landmarks and
the aligned crop they give, and keep the box in ``data/<side>/landmarks.yaml``. The next extraction
uses it instead of the detector on that frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import yaml

from tasks.align import compute_alignment, warp_to_crop
from tasks.decisions import LANDMARKS_HEADER, read_decisions_file
from tasks.detect import DetectedFace
from tasks.images import IMAGE_SUFFIXES
from tasks.recrop import iter_source_frames_at
from tasks.video import probe_video

PREVIEW_HEIGHT = 512
DETECTED_COLOUR = (0, 200, 255)  # BGR: the detector's faces
PLACED_COLOUR = (80, 255, 80)  # the face placed by hand


def read_source_frame(path: Path, frame_index: int) -> np.ndarray:
    """One upright BGR frame of a video (by index in the full stream) or the image of a photo.

    Raises:
        tasks.video.VideoError, tasks.images.ImageError: the file cannot be read.
        ValueError: no such frame (the message says how many there are).
    """
    if path.suffix.lower() in IMAGE_SUFFIXES and frame_index != 0:
        raise ValueError(f"{path} is a photo: its only frame is 0, not {frame_index}")
    for _, frame in iter_source_frames_at(path, {frame_index}):
        return frame
    raise ValueError(f"{path} has no frame {frame_index} (frames are numbered from 0; it has "
                     f"{probe_video(path).frame_count})")


def draw_face(image: np.ndarray, face: DetectedFace, colour: tuple[int, int, int], label: str) -> None:
    """Box, 68 landmarks and a label, drawn in place at the image's own scale."""
    thickness = max(1, round(max(image.shape[:2]) / 400))
    x0, y0, x1, y1 = (round(value) for value in face.bbox)
    cv2.rectangle(image, (x0, y0), (x1, y1), colour, thickness)
    for x, y in np.asarray(face.landmarks):
        cv2.circle(image, (round(float(x)), round(float(y))), thickness + 1, colour, -1)
    cv2.putText(image, label, (x0, max(12 * thickness, y0 - 4 * thickness)), cv2.FONT_HERSHEY_SIMPLEX,
                0.4 * thickness, colour, thickness, cv2.LINE_AA)


def render_placement(frame: np.ndarray, detected: list[DetectedFace], placed: DetectedFace | None,
                     face_type: str, size: int) -> np.ndarray:
    """The frame with the detector's faces (and the placed one), beside the placed face's aligned crop."""
    canvas = frame.copy()
    for number, face in enumerate(detected):
        box = ", ".join(f"{value:.0f}" for value in face.bbox)
        draw_face(canvas, face, DETECTED_COLOUR, f"detected {number}: [{box}]")
    if placed is not None:
        draw_face(canvas, placed, PLACED_COLOUR, "placed")
    scale = PREVIEW_HEIGHT / canvas.shape[0]
    canvas = cv2.resize(canvas, (max(1, round(canvas.shape[1] * scale)), PREVIEW_HEIGHT), interpolation=cv2.INTER_AREA)
    if placed is None:
        return canvas
    crop = warp_to_crop(frame, compute_alignment(placed.landmarks, face_type, size), size)
    crop = cv2.resize(crop, (PREVIEW_HEIGHT, PREVIEW_HEIGHT), interpolation=cv2.INTER_CUBIC)
    return np.hstack([canvas, crop])


def record_placed_face(path: Path, source: str, frame_index: int, box: list[float] | None) -> int:
    """Set (or with ``box`` None, clear) the face placed on one frame; returns how many frames the source has placed.

    The file keeps its explanatory header and is written atomically.
    """
    data = read_decisions_file(path)
    faces = dict(data.get("faces") or {}) if isinstance(data, dict) else {}
    frames = {int(frame): entries for frame, entries in (faces.get(source) or {}).items()}
    if box is None:
        frames.pop(frame_index, None)
    else:
        frames[frame_index] = [{"box": [round(float(value), 1) for value in box]}]
    if frames:
        faces[source] = dict(sorted(frames.items()))
    else:
        faces.pop(source, None)
    header = LANDMARKS_HEADER.rsplit("faces: {}", 1)[0]
    body = yaml.safe_dump({"faces": dict(sorted(faces.items()))}, sort_keys=False, allow_unicode=True, width=120,
                          default_flow_style=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(header + body)
    os.replace(temporary, path)
    return len(frames)

