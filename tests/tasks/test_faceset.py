"""The Lance faceset schema: declared once, round-tripped, validated on open."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pytest

from tasks.faceset import (
    FACES_SCHEMA,
    MASKS_SCHEMA,
    SOURCES_KEY,
    FacesetError,
    append_rows,
    create_empty_table,
    finalize_table,
    open_faces,
    open_masks,
    read_json_metadata,
    write_json_metadata,
)


def make_row(index: int) -> dict:
    rng = np.random.default_rng(index)
    return {
        "face_id": f"abc-{index:06d}-00",
        "source_id": "abc",
        "source_path": "data/raw/src/clip one.mp4",
        "frame_index": index,
        "timestamp": index / 25,
        "face_index": 0,
        "track_id": 0,
        "bbox": [1.0, 2.0, 3.0, 4.0],
        "detector_score": 0.9,
        "landmarks": rng.random(136, dtype=np.float32).tolist(),
        "matrix": [1, 0, 0, 0, 1, 0],
        "face_type": "whole_face",
        "crop_size": 256,
        "image": bytes([index % 256]) * 10,
        "yaw": 1.0,
        "pitch": -2.0,
        "roll": 0.5,
        "blur": 10.0,
        "brightness": 100.0,
        "hue": 20.0,
        "embedding": None if index % 2 else rng.random(128, dtype=np.float32).tolist(),
    }


def test_round_trip_keeps_every_value(tmp_path):
    path = tmp_path / "faces.lance"
    create_empty_table(path, FACES_SCHEMA, {SOURCES_KEY: {}})
    rows = [make_row(index) for index in range(5)]
    append_rows(path, rows[:3], FACES_SCHEMA)
    append_rows(path, rows[3:], FACES_SCHEMA)
    write_json_metadata(path, SOURCES_KEY, {"abc": {"status": "complete"}})
    finalize_table(path)
    dataset = open_faces(path)
    assert len(dataset.versions()) == 1, "finalize leaves one clean version for DVC"
    back = sorted(dataset.to_table().to_pylist(), key=lambda row: row["frame_index"])
    for original, stored in zip(rows, back, strict=True):
        for key, value in original.items():
            if isinstance(value, list):
                np.testing.assert_allclose(stored[key], value, rtol=1e-6)
            else:
                assert stored[key] == pytest.approx(value) if isinstance(value, float) else stored[key] == value
    assert read_json_metadata(dataset, SOURCES_KEY) == {"abc": {"status": "complete"}}


def test_wrong_schema_is_rejected_with_the_column_named(tmp_path):
    path = tmp_path / "faces.lance"
    wrong = pa.schema([pa.field("face_id", pa.string()), pa.field("bbox", pa.list_(pa.float64(), 4))])
    lance.write_dataset(wrong.empty_table(), str(path))
    with pytest.raises(FacesetError, match="bbox|source_id"):
        open_faces(path)


def test_missing_or_foreign_table(tmp_path):
    with pytest.raises(FacesetError, match="does not exist"):
        open_masks(tmp_path / "masks.lance")
    (tmp_path / "masks.lance").mkdir()
    (tmp_path / "masks.lance" / "junk").write_text("not lance")
    with pytest.raises(FacesetError):
        open_masks(tmp_path / "masks.lance")


def test_masks_schema_rejects_extra_columns(tmp_path):
    path = tmp_path / "masks.lance"
    schema = pa.schema([*MASKS_SCHEMA, pa.field("extra", pa.int32())])
    lance.write_dataset(schema.empty_table(), str(path))
    with pytest.raises(FacesetError, match="unexpected columns"):
        open_masks(path)
