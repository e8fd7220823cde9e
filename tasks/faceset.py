"""The faceset tables: one Lance row per detected face, one per mask.

Both schemas are declared once here and checked whenever a table is opened, so a table written by
another version of faceflow (or by hand) fails loudly instead of feeding garbage to training.

Each faces table also carries, in its schema metadata, a record of the sources it holds
(``faceflow.sources``: source id -> path, frame and face counts, status) and the fingerprint of the
extraction settings that produced it (``faceflow.settings``). Extraction uses them to skip sources
that are already complete and to rebuild the table when the settings change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import lance
import numpy as np
import pyarrow as pa

logger = logging.getLogger(__name__)

LANDMARK_COUNT = 68

FACES_SCHEMA = pa.schema(
    [
        pa.field("face_id", pa.string(), nullable=False),  # "<source_id>-<frame:06d>-<face:02d>"
        pa.field("source_id", pa.string(), nullable=False),  # sha256 prefix of the source file's bytes
        pa.field("source_path", pa.string(), nullable=False),  # relative to the project root
        pa.field("frame_index", pa.int32(), nullable=False),  # index in the full decoded stream; 0 for photos
        pa.field("timestamp", pa.float64(), nullable=False),  # seconds
        pa.field("face_index", pa.int16(), nullable=False),  # 0 = largest face in the frame
        pa.field("track_id", pa.int32(), nullable=False),  # faces linked across frames of one source
        pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),  # x0, y0, x1, y1 in frame pixels
        pa.field("detector_score", pa.float32(), nullable=False),
        pa.field("landmarks", pa.list_(pa.float32(), LANDMARK_COUNT * 2), nullable=False),  # (68, 2) frame px
        pa.field("matrix", pa.list_(pa.float32(), 6), nullable=False),  # 2x3 frame -> crop
        pa.field("face_type", pa.string(), nullable=False),
        pa.field("crop_size", pa.int32(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # the aligned crop, JPEG
        pa.field("yaw", pa.float32(), nullable=False),  # degrees
        pa.field("pitch", pa.float32(), nullable=False),
        pa.field("roll", pa.float32(), nullable=False),
        pa.field("blur", pa.float32(), nullable=False),  # variance of the Laplacian inside the face; higher = sharper
        pa.field("brightness", pa.float32(), nullable=False),  # mean V of HSV, 0..255
        pa.field("hue", pa.float32(), nullable=False),  # circular mean hue, degrees
        pa.field("embedding", pa.list_(pa.float32()), nullable=True),  # identity descriptor, length set by the analyzer
    ]
)

MASKS_SCHEMA = pa.schema(
    [
        pa.field("face_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # how the mask was made, e.g. "hull"
        pa.field("mask", pa.binary(), nullable=False),  # PNG, single channel, crop_size x crop_size
    ]
)

SOURCES_KEY = "faceflow.sources"
SETTINGS_KEY = "faceflow.settings"


class FacesetError(Exception):
    """A faceset table is missing, unreadable or has the wrong schema."""


def validate_schema(actual: pa.Schema, expected: pa.Schema, path: Path) -> None:
    """Raise FacesetError naming the table and the first field that differs from ``expected``."""
    actual_fields = {field.name: field for field in actual}
    for field in expected:
        found = actual_fields.get(field.name)
        if found is None:
            raise FacesetError(f"{path}: column '{field.name}' is missing; re-run the stage that writes it")
        if found.type != field.type:
            raise FacesetError(
                f"{path}: column '{field.name}' has type {found.type}, expected {field.type}; "
                "the table was written by another version: delete it and re-run the stage"
            )
    extra = sorted(set(actual_fields) - {field.name for field in expected})
    if extra:
        raise FacesetError(f"{path}: unexpected columns {extra}; delete the table and re-run the stage")


def open_table(path: Path, schema: pa.Schema) -> lance.LanceDataset:
    """Open a Lance table and check it against ``schema``.

    Raises:
        FacesetError: the table does not exist, cannot be read, or its schema differs.
    """
    if not path.exists():
        raise FacesetError(f"{path} does not exist; run the stage that writes it first (dvc repro)")
    try:
        dataset = lance.dataset(str(path))
    except Exception as error:  # lance raises plain ValueError/OSError variants
        raise FacesetError(f"{path} is not a readable Lance table ({error}); delete it and re-run the stage") from error
    validate_schema(dataset.schema, schema, path)
    return dataset


def open_faces(path: Path) -> lance.LanceDataset:
    return open_table(path, FACES_SCHEMA)


def open_masks(path: Path) -> lance.LanceDataset:
    return open_table(path, MASKS_SCHEMA)


def create_empty_table(path: Path, schema: pa.Schema, metadata: dict[str, Any] | None = None) -> lance.LanceDataset:
    """Create (or replace) a table with no rows."""
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = {key: json.dumps(value, sort_keys=True) for key, value in (metadata or {}).items()}
    table = schema.with_metadata(encoded).empty_table()
    return lance.write_dataset(table, str(path), mode="create")


def append_rows(path: Path, rows: Sequence[dict[str, Any]], schema: pa.Schema) -> None:
    """Append rows (dicts keyed by column) to an existing table in one commit."""
    if not rows:
        return
    table = pa.Table.from_pylist(list(rows), schema=schema)
    lance.write_dataset(table, str(path), mode="append")


def write_table(path: Path, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> int:
    """Write a whole table from a stream of record batches (replacing any old one); returns the row count."""
    count = 0

    def counted() -> Iterable[pa.RecordBatch]:
        nonlocal count
        for batch in batches:
            count += batch.num_rows
            yield batch

    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reader = pa.RecordBatchReader.from_batches(schema, counted())
    lance.write_dataset(reader, str(path), schema=schema, mode="create")
    return count


def read_json_metadata(dataset: lance.LanceDataset, key: str) -> Any:
    raw = (dataset.schema.metadata or {}).get(key.encode())
    return json.loads(raw) if raw else None


def write_json_metadata(path: Path, key: str, value: Any) -> None:
    """Store ``value`` as JSON under ``key`` in the table's schema metadata (a new table version)."""
    dataset = lance.dataset(str(path))
    dataset.update_schema_metadata({key: json.dumps(value, sort_keys=True)})


def finalize_table(path: Path) -> None:
    """Compact fragments and drop old versions, so a DVC snapshot holds one clean version."""
    from datetime import timedelta

    dataset = lance.dataset(str(path))
    if dataset.count_rows() > 0:
        dataset.optimize.compact_files()
    dataset = lance.dataset(str(path))
    stats = dataset.cleanup_old_versions(older_than=timedelta(0), delete_unverified=True)
    logger.debug("compacted %s: removed %s old bytes", path, getattr(stats, "bytes_removed", "?"))


def hash_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """A source's id: the first 16 hex digits of the sha256 of its bytes (face ids build on it)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def encode_png(mask: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", mask)
    if not ok:
        raise RuntimeError("PNG encoding of a mask failed")
    return data.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
