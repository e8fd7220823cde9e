"""The mask stage: one mask per face of a faces table, written to a masks table."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import ConfigDict, with_config

from tasks.align import transform_points
from tasks.faceset import MASKS_SCHEMA, encode_png, finalize_table, open_faces, write_table
from tasks.masks import hull_mask

logger = logging.getLogger(__name__)

MaskKind = Literal["hull"]


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class MaskOptions:
    """params.yaml ``mask``: how training masks are made (XSeg comes later)."""

    kind: MaskKind = "hull"


def crop_landmarks(landmarks: list[float], matrix: list[float]) -> np.ndarray:
    """Frame-space landmarks of a row -> (68, 2) in its crop's coordinates."""
    return transform_points(np.asarray(landmarks, np.float32).reshape(-1, 2), np.asarray(matrix, np.float32).reshape(2, 3))


def iter_mask_batches(faces_path: Path, options: MaskOptions, batch_size: int = 256, on_batch=None) -> Iterator[pa.RecordBatch]:
    dataset = open_faces(faces_path)
    for batch in dataset.to_batches(columns=["face_id", "landmarks", "matrix", "crop_size"], batch_size=batch_size):
        rows = batch.to_pydict()
        masks = [
            encode_png(hull_mask(crop_landmarks(landmarks, matrix), size))
            for landmarks, matrix, size in zip(rows["landmarks"], rows["matrix"], rows["crop_size"], strict=True)
        ]
        if on_batch is not None:
            on_batch(len(masks))
        yield pa.RecordBatch.from_pydict(
            {"face_id": rows["face_id"], "kind": [options.kind] * len(masks), "mask": masks}, schema=MASKS_SCHEMA
        )


def build_masks(faces_path: Path, masks_path: Path, options: MaskOptions, on_batch=None) -> int:
    """Write a mask for every face of ``faces_path`` into ``masks_path``; returns the count."""
    count = write_table(masks_path, iter_mask_batches(faces_path, options, on_batch=on_batch), MASKS_SCHEMA)
    finalize_table(masks_path)
    logger.info("wrote %d %s masks to %s", count, options.kind, masks_path)
    return count
