"""Curation: which faces of a table to train on, written as a selection with a reason for every face left out.

The filters run in this order, each on the faces the earlier ones kept: hand rejects, size, blur,
identity (only the target person: reference photos, or the dominant identity), near-duplicates
(the sharpest of each group stays) and best-N (keeps pose coverage).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ConfigDict, with_config

from tasks.coverage_select import select_best
from tasks.dedup import make_thumbnails, near_duplicates
from tasks.analyzers import IdentitySpace, identity_space
from tasks.faceset import SETTINGS_KEY, open_faces, read_json_metadata
from tasks.identity import IdentityError, filter_identity
from tasks.selection import Selection

logger = logging.getLogger(__name__)

IdentityMode = Literal["auto", "reference", "dominant", "off"]


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class CurateOptions:
    """params.yaml ``curate.<side>``: which faces are left out of training, and why."""

    min_face_size: int = 64  # shorter side of the detector box, frame pixels
    blur_threshold: float = 10.0  # minimum blur score (variance of the Laplacian); 0 keeps all
    identity: IdentityMode = "auto"  # auto: reference photos in data/<side>/reference/ if any, else the dominant identity
    # descriptor distance under which two faces are one person; None = the analyzer's own
    # (dlib 0.56, measured on the identities test set; insightface 1.10)
    identity_threshold: float | None = None
    # thumbnail difference below which faces are near-identical; 0 = off. 0.1 drops about a quarter of
    # a talking head sampled at 10 frames/s (0.25, the "same moment" bound, would drop nine tenths)
    dedup_threshold: float = 0.1
    max_faces: int = 0  # keep at most this many, spread over yaw/pitch (best-N); 0 = no limit

    def __post_init__(self) -> None:
        if self.min_face_size < 0 or self.blur_threshold < 0 or self.dedup_threshold < 0 or self.max_faces < 0:
            raise ValueError("curate.min_face_size, blur_threshold, dedup_threshold and max_faces must be >= 0")
        if self.identity_threshold is not None and not 0 < self.identity_threshold < 2:
            raise ValueError(f"curate.identity_threshold must be in (0, 2), got {self.identity_threshold}")


@dataclass
class FaceColumns:
    """The columns curation reads, as arrays in table order."""

    face_ids: list[str]
    sizes: np.ndarray  # (N,) shorter side of the detector box
    blur: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    embeddings: np.ndarray  # (N, D) float32, NaN rows where none was computed
    track_ids: np.ndarray
    source_ids: np.ndarray
    space: IdentitySpace  # how the analyzer that made the table compares its descriptors


def read_columns(faces_path: Path) -> FaceColumns:
    dataset = open_faces(faces_path)
    settings = read_json_metadata(dataset, SETTINGS_KEY) or {}
    space = identity_space(settings.get("faces", {}).get("analyzer", "dlib"))
    table = dataset.to_table(
        columns=["face_id", "bbox", "blur", "yaw", "pitch", "embedding", "track_id", "source_id"]
    ).to_pydict()
    boxes = np.asarray(table["bbox"], np.float32).reshape(-1, 4)
    embeddings = np.full((len(boxes), space.embedding_size), np.nan, np.float32)
    for index, embedding in enumerate(table["embedding"]):
        if embedding is not None:
            embeddings[index] = embedding
    return FaceColumns(
        face_ids=table["face_id"],
        sizes=np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]),
        blur=np.asarray(table["blur"], np.float32),
        yaw=np.asarray(table["yaw"], np.float32),
        pitch=np.asarray(table["pitch"], np.float32),
        embeddings=embeddings,
        track_ids=np.asarray(table["track_id"], np.int64),
        source_ids=np.asarray(table["source_id"], dtype=object),
        space=space,
    )


def identity_mask(columns: FaceColumns, options: CurateOptions, references: np.ndarray | None) -> tuple[np.ndarray, dict[int, str]]:
    """Keep mask and reasons for the identity filter (all kept when it is off or cannot run)."""
    keep = np.ones(len(columns.face_ids), bool)
    mode = options.identity
    if mode == "off":
        return keep, {}
    if mode == "reference" and (references is None or not len(references)):
        raise IdentityError("curate.identity is 'reference' but no reference photo with a face was found: add photos of the "
                         "target person to data/<side>/reference/ or set curate.identity to auto")
    if np.isnan(columns.embeddings).all():
        if mode != "auto":
            raise IdentityError(f"curate.identity is {mode!r} but the faces have no identity descriptors: set "
                             "extract.<side>.embeddings: true, or curate.identity: off")
        logger.warning("no identity descriptors in the faces table (extract embeddings off): identity filter skipped")
        return keep, {}
    use_references = references if mode in ("auto", "reference") and references is not None and len(references) else None
    threshold = options.identity_threshold if options.identity_threshold is not None else columns.space.same_person
    result = filter_identity(columns.embeddings, use_references, threshold, columns.track_ids, columns.source_ids)
    return result.keep, result.reasons


def curate_faces(
    faces_path: Path, options: CurateOptions, rejects: dict[str, str] | None = None, references: np.ndarray | None = None
) -> Selection:
    """Run every filter over a faces table.

    Args:
        faces_path: the side's faces table.
        options: the side's curate params.
        rejects: face id -> reason, from the hand-rejects file.
        references: (K, D) descriptors of the reference photos (same analyzer as the table), if any.
    """
    rejects = rejects or {}
    columns = read_columns(faces_path)
    reasons: dict[int, str] = {}
    for index, face_id in enumerate(columns.face_ids):
        if face_id in rejects:
            reasons[index] = f"by hand: {rejects[face_id]}"
        elif columns.sizes[index] < options.min_face_size:
            reasons[index] = f"small: {columns.sizes[index]:.0f} px < {options.min_face_size}"
        elif columns.blur[index] < options.blur_threshold:
            reasons[index] = f"blurry: {columns.blur[index]:.1f} < {options.blur_threshold}"
    keep_identity, identity_reasons = identity_mask(columns, options, references)
    for index in np.nonzero(~keep_identity)[0]:
        reasons.setdefault(int(index), identity_reasons.get(int(index), "other person"))

    remaining = np.asarray([index for index in range(len(columns.face_ids)) if index not in reasons], np.int64)
    if options.dedup_threshold > 0 and len(remaining) > 1:
        reasons.update(drop_duplicates(faces_path, columns, remaining, options.dedup_threshold))
        remaining = np.asarray([index for index in remaining if index not in reasons], np.int64)
    if options.max_faces and len(remaining) > options.max_faces:
        chosen = set(remaining[select_best(columns.yaw[remaining], columns.pitch[remaining], columns.blur[remaining], options.max_faces)].tolist())
        for index in remaining:
            if int(index) not in chosen:
                reasons[int(index)] = f"over budget: best {options.max_faces} by pose coverage and sharpness"

    kept = sorted(face_id for index, face_id in enumerate(columns.face_ids) if index not in reasons)
    rejected = {columns.face_ids[index]: reason for index, reason in reasons.items()}
    logger.info("curated %s: kept %d of %d faces", faces_path, len(kept), len(columns.face_ids))
    return Selection(kept=kept, rejected=rejected, options=asdict(options))


def drop_duplicates(faces_path: Path, columns: FaceColumns, candidates: np.ndarray, threshold: float) -> dict[int, str]:
    """Near-duplicates among ``candidates``: the sharpest of each group stays."""
    images = open_faces(faces_path).take(candidates.tolist(), columns=["image"]).to_pydict()["image"]
    order = np.argsort(-columns.blur[candidates], kind="stable")
    keep, duplicate_of = near_duplicates(make_thumbnails(images), columns.embeddings[candidates], order, pixel_threshold=threshold,
                                         embedding_threshold=columns.space.duplicate)
    return {
        int(candidates[dropped]): f"duplicate: of {columns.face_ids[int(candidates[kept])]}"
        for dropped, kept in duplicate_of.items()
    }
