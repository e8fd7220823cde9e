"""Human decisions about faces, kept as small git-tracked files the stages read.

``data/<side>/landmarks.yaml`` places faces by hand where detection missed them or aligned them
badly; extraction uses them instead of the detector on those frames.
``data/<side>/rejects.yaml`` maps face ids to the reason a person rejected them. Face ids are
derived from content hashes, so the decisions survive re-extraction, and because the file is
versioned with everything else, rolling the pipeline back restores the decisions of that time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

import yaml

REJECTS_HEADER = """\
# Faces rejected by hand for this side: face id -> why. Curation leaves them out of training.
# Face ids come from `faceflow faceset review` contact sheets (or the faces table); they stay the
# same when faces are extracted again. Commit this file with your pipeline changes.
"""


class DecisionsError(ValueError):
    """A decisions file cannot be read; the message names it and the problem."""


def read_decisions_file(path: Path) -> object:
    """The YAML of a decisions file ({} when it does not exist yet)."""
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise DecisionsError(f"{path} is not valid YAML ({error}); fix it or restore it with git") from None


def load_rejects(path: Path) -> dict[str, str]:
    """face id -> reason; a missing file means no decisions yet.

    Raises:
        DecisionsError: the file is not YAML or not a mapping under ``rejects``.
    """
    data = read_decisions_file(path)
    rejects = data.get("rejects", {}) if isinstance(data, dict) else None
    if rejects is None:
        rejects = {}
    if not isinstance(rejects, dict) or not all(isinstance(key, str) for key in rejects):
        raise DecisionsError(f"{path}: 'rejects' must map face ids to reasons, e.g. 'rejects: {{abc123-000010-00: blurry}}'")
    unknown = sorted(set(data) - {"rejects"}) if isinstance(data, dict) else []
    if unknown:
        raise DecisionsError(f"{path}: unknown keys {unknown}; the file holds only 'rejects'")
    return {face_id: str(reason or "rejected by hand") for face_id, reason in rejects.items()}


def save_rejects(path: Path, rejects: dict[str, str]) -> None:
    """Write the rejects file atomically, sorted so diffs stay small."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump({"rejects": dict(sorted(rejects.items()))}, sort_keys=False, allow_unicode=True, width=120)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(REJECTS_HEADER + body)
    os.replace(temporary, path)


LANDMARKS_HEADER = """\
# Faces placed by hand, for frames where detection missed a face or aligned it badly. Extraction
# uses them instead of the detector on those frames and re-extracts a source when its entries change.
# source file (as stored in the faces table, e.g. data/raw/src/clip.mp4; a photo's frame is 0)
#   -> frame index -> list of faces, each either
#        box: [x0, y0, x1, y1]           68 landmarks are fitted inside the box
#        landmarks: [[x, y], ...]        all 68 points, in frame pixels
faces: {}
"""

PlacedFace = dict  # {"box": [x0, y0, x1, y1]} or {"landmarks": (68, 2) array}


def load_landmark_overrides(path: Path) -> dict[str, dict[int, list[PlacedFace]]]:
    """source path -> frame index -> faces placed by hand; a missing file means none.

    Raises:
        DecisionsError: naming the file and the entry that is malformed.
    """
    data = read_decisions_file(path)
    if not isinstance(data, dict) or set(data) - {"faces"} or not isinstance(data.get("faces") or {}, dict):
        raise DecisionsError(f"{path}: the file holds one mapping, 'faces: {{source file: {{frame: [faces]}}}}'")
    overrides: dict[str, dict[int, list[PlacedFace]]] = {}
    for source, frames in (data.get("faces") or {}).items():
        if not isinstance(frames, dict):
            raise DecisionsError(f"{path}: faces of {source!r} must map frame numbers to lists of faces")
        overrides[str(source)] = {int(frame): [parse_placed_face(face, path, source, frame) for face in faces or []]
                                  for frame, faces in frames.items()}
    return overrides


def parse_placed_face(face: object, path: Path, source: str, frame: int) -> PlacedFace:
    where = f"{path}: {source} frame {frame}"
    if isinstance(face, dict) and set(face) == {"box"}:
        box = face["box"]
        if not (isinstance(box, list) and len(box) == 4 and box[0] < box[2] and box[1] < box[3]):
            raise DecisionsError(f"{where}: box must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {box!r}")
        return {"box": [float(value) for value in box]}
    if isinstance(face, dict) and set(face) == {"landmarks"}:
        points = np.asarray(face["landmarks"], np.float32)
        if points.shape != (68, 2):
            raise DecisionsError(f"{where}: landmarks must be 68 [x, y] pairs, got shape {points.shape}")
        return {"landmarks": points}
    raise DecisionsError(f"{where}: each face is either 'box: [x0, y0, x1, y1]' or 'landmarks: [[x, y], ...]' (68 points)")


def overrides_key(frames: dict[int, list[PlacedFace]] | None) -> str | None:
    """A short content hash of one source's placed faces (None when it has none)."""
    if not frames:
        return None
    plain = {str(frame): [{key: np.asarray(value).tolist() for key, value in face.items()} for face in faces]
             for frame, faces in sorted(frames.items())}
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]
