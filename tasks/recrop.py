"""Re-derive the aligned crops of a faces table for another face type, size or JPEG quality.

Every row keeps the 68 landmarks it was aligned from, in frame pixels (after tracking, smoothing and
any face placed by hand). A new framing is then only arithmetic on those landmarks plus one decode
of each source: no detector, landmark fit or descriptor runs again, and face ids, track ids, poses
and identity descriptors stay as they were, so curation decisions keyed by face id stay valid.

The new table is written beside the old one and swapped in by renaming, so an interruption leaves
either the old table (the next run re-crops again) or the new one, never a mix.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from tasks.align import compute_alignment, warp_to_crop
from tasks.faceset import (
    FACES_SCHEMA,
    SETTINGS_KEY,
    SOURCES_KEY,
    append_rows,
    create_empty_table,
    open_faces,
    read_json_metadata,
)
from tasks.images import IMAGE_SUFFIXES, read_image
from tasks.scores import score_crop
from tasks.video import iter_frames

logger = logging.getLogger(__name__)

CROP_KEYS = ("face_type", "size", "jpeg_quality")  # extract.faces keys that only change how a face is cut out
ROWS_PER_BATCH = 256


def detection_settings(settings: dict) -> dict:
    """The part of an extraction settings fingerprint that decides which faces and landmarks are found."""
    faces = {key: value for key, value in settings.get("faces", {}).items() if key not in CROP_KEYS}
    return {**settings, "faces": faces}


def can_recrop(recorded: dict | None, wanted: dict) -> bool:
    """Whether a table made with ``recorded`` settings reaches ``wanted`` by re-cropping alone."""
    return recorded is not None and recorded != wanted and detection_settings(recorded) == detection_settings(wanted)


def iter_source_frames_at(path: Path, frame_indices: set[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(frame_index, BGR frame) for the wanted frames of a video, or frame 0 of a photo, in order."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        yield 0, read_image(path)
        return
    last = max(frame_indices)
    for frame_index, _, frame in iter_frames(path):
        if frame_index in frame_indices:
            yield frame_index, frame
        if frame_index >= last:
            return


def recrop_rows(rows: list[dict], frame: np.ndarray, face_type: str, size: int, jpeg_quality: int) -> None:
    """Replace the crop, matrix and crop scores of one frame's rows in place."""
    for row in rows:
        landmarks = np.asarray(row["landmarks"], dtype=np.float32).reshape(68, 2)
        matrix = compute_alignment(landmarks, face_type, size)
        crop = warp_to_crop(frame, matrix, size)
        ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for face {row['face_id']}")
        row.update(matrix=matrix.reshape(-1).tolist(), face_type=face_type, crop_size=size, image=jpeg.tobytes(),
                   **score_crop(crop))


def recrop_table(table_path: Path, settings: dict, root: Path) -> int:
    """Rewrite every crop of a faces table for the face settings in ``settings`` (see module doc).

    Args:
        table_path: The faces table.
        settings: The new settings fingerprint (tasks.extract.settings_fingerprint); its "faces" entry
            gives face_type, size and jpeg_quality.
        root: The project root the table's source paths are relative to.

    Returns:
        The number of faces re-cropped.

    Raises:
        FileNotFoundError: A source recorded in the table is gone (extraction plans drop those first).
        VideoError, ImageError: A source can no longer be decoded.
    """
    dataset = open_faces(table_path)
    sources = read_json_metadata(dataset, SOURCES_KEY) or {}
    face_type, size, quality = (settings["faces"][key] for key in CROP_KEYS)
    staging = table_path.with_name(table_path.name + ".recrop")
    create_empty_table(staging, FACES_SCHEMA, {SETTINGS_KEY: settings, SOURCES_KEY: sources})
    count = 0
    for record in sources.values():
        path = root / record["path"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: a source of {table_path} is gone; run the extract stage to drop its faces")
        table = dataset.to_table(filter=f"source_path = {sql_literal(record['path'])}")
        by_frame: dict[int, list[dict]] = {}
        for row in table.to_pylist():
            by_frame.setdefault(row["frame_index"], []).append(row)
        if not by_frame:
            continue
        batch: list[dict] = []
        for frame_index, frame in iter_source_frames_at(path, set(by_frame)):
            rows = by_frame.pop(frame_index)
            recrop_rows(rows, frame, face_type, size, quality)
            batch.extend(rows)
            if len(batch) >= ROWS_PER_BATCH:
                count += append_batch(staging, batch)
        count += append_batch(staging, batch)
        if by_frame:
            raise RuntimeError(f"{path} ended before frame {min(by_frame)} that {table_path} has faces from; "
                               "the file changed without changing its content hash? Re-run extraction from scratch")
    replace_table(staging, table_path)
    logger.info("re-cropped %d faces of %s as %s %d px without re-detecting", count, table_path, face_type, size)
    return count


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def append_batch(path: Path, rows: list[dict]) -> int:
    """Append the rows to the staging table and empty the list; returns how many there were."""
    count = len(rows)
    append_rows(path, rows, FACES_SCHEMA)
    rows.clear()
    return count


def replace_table(staging: Path, table_path: Path) -> None:
    """Swap the finished staging table in; an old copy is removed only once the new one is in place."""
    previous = table_path.with_name(table_path.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    table_path.rename(previous)
    staging.rename(table_path)
    shutil.rmtree(previous)


def restore_interrupted(table_path: Path) -> None:
    """Undo a swap cut short: bring back the old table, drop a half-written staging one."""
    previous = table_path.with_name(table_path.name + ".previous")
    if previous.exists() and not table_path.exists():
        previous.rename(table_path)
    shutil.rmtree(previous, ignore_errors=True)
    shutil.rmtree(table_path.with_name(table_path.name + ".recrop"), ignore_errors=True)
