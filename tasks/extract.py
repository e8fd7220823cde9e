"""Extraction: decode videos and photos, find faces, align them and append them to a faces table.

Videos are followed along tracks (tasks/tracking.py: detection every few frames, landmark refits
between, a descriptor every few faces carried along the track). With ``smooth_landmarks`` rows are
built a smoothing window behind decoding (tasks/smoothing.py), holding only that window's frames.

The table remembers which sources it holds (by content hash) and with which settings, so a rerun
skips finished sources, redoes a source that was interrupted, drops sources that were removed, and
re-crops the stored faces when only their framing (face type, size, JPEG quality) changes
(tasks/recrop.py: no detection), and rebuilds everything when other settings change. A source that fails midway keeps the faces it
gave before the failure, and the failure is reported with the file's name.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ConfigDict, with_config

from tasks.align import FaceType
from tasks.analyzers import AnalyzerName, create_analyzer
from tasks.detect import DetectedFace, DetectorKind, FaceAnalyzer
from tasks.faceset import (
    FACES_SCHEMA,
    SETTINGS_KEY,
    SOURCES_KEY,
    FacesetError,
    append_rows,
    create_empty_table,
    finalize_table,
    hash_file,
    open_faces,
    read_json_metadata,
    write_json_metadata,
)
from tasks.decisions import overrides_key
from tasks.face_rows import build_face_row
from tasks.images import IMAGE_SUFFIXES, ImageError, list_media, read_image
from tasks.recrop import can_recrop, recrop_table, restore_interrupted
from tasks.rotation import RotationRetryAnalyzer
from tasks.smoothing import LandmarkSmoother
from tasks.tracking import FaceFollower, TrackedFace, TrackIdentities
from tasks.video import VideoError, iter_frames, probe_video

logger = logging.getLogger(__name__)

RotateRetry = Literal["off", "photos", "all"]
ROWS_PER_COMMIT = 256


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class FaceOptions:
    """How faces are aligned and stored (params.yaml ``extract.faces``; shared by src and dst)."""

    # dlib: bundled, offline (HOG/CNN detector, 68 landmarks, 128-D descriptor); insightface: SCRFD,
    # 68 3-D landmarks and 512-D ArcFace from a model pack you put on disk (see model_pack)
    analyzer: AnalyzerName = "dlib"
    # insightface only: the model pack folder (e.g. buffalo_l), relative to the project root;
    # None = ~/.insightface/models/buffalo_l
    model_pack: str | None = None
    face_type: FaceType = "whole_face"
    size: int = 256  # aligned crop size in pixels
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if self.size < 32 or self.size % 2:
            raise ValueError(f"extract.faces.size must be an even number >= 32, got {self.size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"extract.faces.jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class SideOptions:
    """How one side's sources are read and searched (params.yaml ``extract.src`` / ``extract.dst``)."""

    detector: DetectorKind = "hog"  # dlib only
    upsample: int = 1  # dlib only: detector upsampling passes; finds smaller faces, costs time
    min_face_size: int = 40  # faces whose box is smaller (px) are ignored
    max_faces: int = 1  # per frame, largest first; 0 keeps every face
    embeddings: bool = True  # identity descriptor per face (dlib 128-D, insightface 512-D)
    fps: float | None = None  # sample videos at this rate; None keeps every frame
    every_n: int = 1  # then keep every n-th sampled frame
    # videos: run the detector every n-th analysed frame and refit each track's landmarks in between
    # (far faster; a doubtful refit, a lost track and the first frame re-detect at once); 1 = every frame
    detect_every: int = 5
    # identity descriptor for a track's first face, then every n-th face of the track; each face
    # stores its track's latest one; 1 = every face, 0 = once per track
    embed_every: int = 30
    # zero-lag temporal smoothing of each track's landmarks before alignment (anti-jitter; worth it
    # for dst): Gaussian sigma in analysed frames, e.g. 1.5; 0 = off
    smooth_landmarks: float = 0.0
    # look again at 90/180/270 degrees when nothing is found: photos (cheap), all (videos too:
    # a faceless frame then costs four detections), off
    rotate_retry: RotateRetry = "photos"

    def __post_init__(self) -> None:
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be positive or null, got {self.fps}")
        if self.every_n < 1 or self.upsample < 0 or self.max_faces < 0 or self.min_face_size < 0:
            raise ValueError("every_n must be >= 1; upsample, max_faces and min_face_size must be >= 0")
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1 (1 detects on every frame), got {self.detect_every}")
        if self.embed_every < 0:
            raise ValueError(f"embed_every must be >= 0 (0 = once per track), got {self.embed_every}")
        if not 0 <= self.smooth_landmarks <= 30:
            raise ValueError(f"smooth_landmarks must be in 0..30 frames (0 = off), got {self.smooth_landmarks}")

    @property
    def samples_every_frame(self) -> bool:
        return self.fps is None and self.every_n == 1


@dataclass
class SourceReport:
    """What extraction did with one source file."""

    path: str
    source_id: str
    frames: int = 0
    faces: int = 0
    status: Literal["complete", "failed"] = "complete"
    error: str | None = None
    skipped: bool = False
    overrides: str | None = None  # content key of the faces placed by hand on this source


@dataclass
class ExtractionPlan:
    """Sources still to extract (path -> source id) and sources already complete in the table."""

    pending: dict[Path, str] = field(default_factory=dict)
    done: dict[str, dict] = field(default_factory=dict)


def settings_fingerprint(faces: FaceOptions, side: SideOptions) -> dict:
    return {"faces": asdict(faces), "side": asdict(side), "schema": FACES_SCHEMA.to_string()}


def plan_extraction(
    raw_dir: Path, table_path: Path, settings: dict, root: Path, overrides: dict[str, dict] | None = None
) -> ExtractionPlan:
    """Make the table ready for this run and say which sources still need extracting.

    A table whose settings differ only in framing (face type, size, JPEG quality) is re-cropped
    from its stored landmarks; one made with other settings (or unreadable) is rebuilt; rows of sources that are
    incomplete, failed, changed or no longer present are deleted, so rerunning after an
    interruption never duplicates faces.
    """
    videos, images = list_media(raw_dir) if raw_dir.exists() else ([], [])
    current: dict[str, Path] = {}
    for path in videos + images:
        source_id = hash_file(path)
        if source_id in current:
            logger.warning("%s has the same content as %s: extracting it once", path, current[source_id])
            continue
        current[source_id] = path

    recorded: dict[str, dict] | None = None
    recrop = False
    restore_interrupted(table_path)
    if table_path.exists():
        try:
            dataset = open_faces(table_path)
        except FacesetError as error:
            logger.warning("rebuilding %s: %s", table_path, error)
        else:
            stored = read_json_metadata(dataset, SETTINGS_KEY)
            recrop = can_recrop(stored, settings)
            if stored == settings or recrop:
                recorded = read_json_metadata(dataset, SOURCES_KEY) or {}
            else:
                logger.info("extraction settings changed: rebuilding %s", table_path)
    if recorded is None:
        create_empty_table(table_path, FACES_SCHEMA, {SETTINGS_KEY: settings, SOURCES_KEY: {}})
        recorded = {}

    keep = {
        source_id: record
        for source_id, record in recorded.items()
        if record.get("status") == "complete" and source_id in current
        and record.get("overrides") == overrides_key((overrides or {}).get(record["path"]))
    }
    # rows of anything not kept: removed or changed sources, failed ones, and an interrupted one never recorded
    leftover = f"source_id NOT IN ({', '.join(repr(source_id) for source_id in keep)})" if keep else "true"
    dataset = open_faces(table_path)
    if dataset.count_rows(filter=leftover):
        dataset.delete(leftover)
        logger.info("dropped the faces of removed, changed or unfinished sources from %s", table_path)
    if keep != recorded:
        write_json_metadata(table_path, SOURCES_KEY, keep)
    if recrop:  # only the framing changed: the stored landmarks give the new crops, no detector needed
        logger.info("face framing changed: re-cropping %s from its stored landmarks", table_path)
        recrop_table(table_path, settings, root)
    return ExtractionPlan(
        pending={path: source_id for source_id, path in current.items() if source_id not in keep},
        done=keep,
    )


def relative_path(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def iter_source_frames(path: Path, side: SideOptions, include: Collection[int] = ()) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame_index, timestamp, bgr) for a video's sampled frames plus ``include``, or one frame for a photo."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        yield 0, 0.0, read_image(path)
        return
    yield from iter_frames(path, every_n=side.every_n, fps=side.fps, include=include)


def expected_frames(path: Path, side: SideOptions) -> int | None:
    """How many frames extraction will analyse in a source (for progress), None if unknown."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return 1
    try:
        info = probe_video(path)
    except VideoError:
        return None
    sampled = info.frame_count if side.fps is None else info.frame_count * min(1.0, side.fps / float(info.fps))
    return max(1, int(sampled) // side.every_n)


def extract_source(
    path: Path,
    source_id: str,
    table_path: Path,
    analyzer: FaceAnalyzer,
    faces_options: FaceOptions,
    side: SideOptions,
    root: Path,
    on_frame=None,
    overrides: dict[str, dict] | None = None,
) -> SourceReport:
    """Extract every face of one video or photo into the table and record the source.

    Decoding errors do not lose work: faces found before the error are kept (the smoothing
    window is flushed first), and the source is recorded as failed with the error (so the next
    run retries it).

    Args:
        path, source_id, table_path: the file, its content-hash id and the table (from plan_extraction).
        analyzer, faces_options, side: from create_face_analyzer, and the settings.
        root: project root, which the stored source path is relative to.
        on_frame: called with no arguments after each analysed frame (progress).
        overrides: faces placed by hand (tasks.decisions.load_landmark_overrides), used instead of
            the detector on their frames.

    Returns:
        The source's report, also recorded in the table's metadata.
    """
    source_path = relative_path(path, root)
    placed = (overrides or {}).get(source_path, {})
    report = SourceReport(path=source_path, source_id=source_id, overrides=overrides_key(placed))
    fitter = analyzer
    is_photo = path.suffix.lower() in IMAGE_SUFFIXES
    if side.rotate_retry == "all" or (side.rotate_retry == "photos" and is_photo):
        analyzer = RotationRetryAnalyzer(analyzer)  # one per source: it remembers the turn that worked
    follower = FaceFollower(analyzer, detect_every=1 if is_photo else side.detect_every, max_faces=side.max_faces)
    identities = TrackIdentities(analyzer, side.embed_every) if side.embeddings else None
    smoother = LandmarkSmoother(0.0 if is_photo else side.smooth_landmarks)
    pending: list[dict] = []

    def add_rows(ready: list[tuple[tuple, dict]]) -> None:
        for (frame_index, timestamp, frame, faces, embeddings), landmarks in ready:
            for face_index, (item, embedding) in enumerate(zip(faces, embeddings, strict=True)):
                face = replace(item.face, landmarks=landmarks[item.track_id])
                position = (frame_index, timestamp, face_index, item.track_id)
                pending.append(build_face_row(frame, face, embedding, faces_options, (source_id, source_path), position))

    try:
        for step, (frame_index, timestamp, frame) in enumerate(iter_source_frames(path, side, include=placed.keys())):
            if frame_index in placed:
                faces: list[TrackedFace] = follower.place(frame, [place_face(fitter, frame, face) for face in placed[frame_index]])
            else:
                faces = follower.follow(frame)
            embeddings = identities.describe(frame, faces) if identities else [None] * len(faces)
            landmarks = {item.track_id: item.face.landmarks for item in faces}
            add_rows(smoother.push(step, (frame_index, timestamp, frame, faces, embeddings), landmarks))
            report.frames += 1
            if len(pending) >= ROWS_PER_COMMIT:
                report.faces += _flush(table_path, pending)
            if on_frame is not None:
                on_frame()
    except (VideoError, ImageError) as error:
        report.status, report.error = "failed", str(error)
    add_rows(smoother.flush())
    report.faces += _flush(table_path, pending)
    logger.debug("%s: %d frames, %d detector runs, %d descriptors", source_path, report.frames, follower.detections,
                 identities.computed if identities else 0)
    record_source(table_path, report)
    return report


def _flush(table_path: Path, rows: list[dict]) -> int:
    count = len(rows)
    append_rows(table_path, rows, FACES_SCHEMA)
    rows.clear()
    return count


def record_source(table_path: Path, report: SourceReport) -> None:
    dataset = open_faces(table_path)
    sources = read_json_metadata(dataset, SOURCES_KEY) or {}
    sources[report.source_id] = {
        "path": report.path,
        "frames": report.frames,
        "faces": report.faces,
        "status": report.status,
        "error": report.error,
        "overrides": report.overrides,
    }
    write_json_metadata(table_path, SOURCES_KEY, sources)


def place_face(fitter: FaceAnalyzer, frame: np.ndarray, placed: dict) -> DetectedFace:
    """A face placed by hand: given landmarks as they are, or landmarks fitted inside a given box."""
    if "landmarks" in placed:
        points = placed["landmarks"]
        box = (*points.min(axis=0).tolist(), *points.max(axis=0).tolist())
        return DetectedFace(bbox=tuple(float(value) for value in box), score=1.0, landmarks=points)
    if not hasattr(fitter, "fit_landmarks"):
        raise ValueError(f"the {fitter.name} analyzer cannot fit landmarks in a box: give all 68 landmarks instead")
    face = fitter.fit_landmarks(frame, tuple(placed["box"]))
    return DetectedFace(bbox=face.bbox, score=1.0, landmarks=face.landmarks)


def extract_folder(
    raw_dir: Path, table_path: Path, faces: FaceOptions, side: SideOptions, root: Path, analyzer: FaceAnalyzer | None = None,
    overrides: dict[str, dict] | None = None,
) -> list[SourceReport]:
    """Extract every pending source of a folder in this process and compact the table.

    The extract stage's flow does the same with a retryable task per source; this is for scripts
    and benchmarks.
    """
    plan = plan_extraction(raw_dir, table_path, settings_fingerprint(faces, side), root, overrides)
    if plan.pending and analyzer is None:
        analyzer = create_face_analyzer(faces, side)
    reports = [extract_source(path, source_id, table_path, analyzer, faces, side, root, overrides=overrides)
               for path, source_id in plan.pending.items()]
    finalize_table(table_path)
    return reports


def create_face_analyzer(faces: FaceOptions, side: SideOptions) -> FaceAnalyzer:
    """The analyzer extract.faces names, set up with the side's detection options."""
    if faces.analyzer == "insightface":
        options = {"pack": faces.model_pack} if faces.model_pack else {}
        return create_analyzer("insightface", min_size=side.min_face_size, **options)
    return create_analyzer(faces.analyzer, detector=side.detector, upsample=side.upsample, min_size=side.min_face_size)
