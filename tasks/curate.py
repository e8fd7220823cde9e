"""Curation: a first filter over a faces table, written as a selection of face ids with reasons."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import ConfigDict, with_config

from tasks.faceset import open_faces
from tasks.selection import Selection

logger = logging.getLogger(__name__)

@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class CurateOptions:
    """params.yaml ``curate.<side>``: faces failing a threshold are left out of training."""

    min_face_size: int = 64  # shorter side of the detector box, frame pixels
    blur_threshold: float = 10.0  # minimum blur score (variance of the Laplacian); 0 keeps all

    def __post_init__(self) -> None:
        if self.min_face_size < 0 or self.blur_threshold < 0:
            raise ValueError("curate.min_face_size and curate.blur_threshold must be >= 0")


def curate_faces(faces_path: Path, options: CurateOptions, rejects: dict[str, str] | None = None) -> Selection:
    """Apply the human rejects, then the size and blur thresholds, to every face of a table."""
    rejects = rejects or {}
    table = open_faces(faces_path).to_table(columns=["face_id", "bbox", "blur"])
    face_ids = table["face_id"].to_pylist()
    boxes = table["bbox"].to_pylist()
    blurs = table["blur"].to_pylist()
    kept, rejected = [], {}
    for face_id, box, blur in zip(face_ids, boxes, blurs, strict=True):
        size = min(box[2] - box[0], box[3] - box[1])
        if face_id in rejects:
            rejected[face_id] = f"by hand: {rejects[face_id]}"
        elif size < options.min_face_size:
            rejected[face_id] = f"small: {size:.0f} px < {options.min_face_size}"
        elif blur < options.blur_threshold:
            rejected[face_id] = f"blurry: {blur:.1f} < {options.blur_threshold}"
        else:
            kept.append(face_id)
    logger.info("curated %s: kept %d of %d faces", faces_path, len(kept), len(face_ids))
    return Selection(kept=sorted(kept), rejected=rejected, options=asdict(options))


