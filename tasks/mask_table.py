"""The mask stage: one mask per face of a faces table, written to a masks table.

Mask kinds, each made by the function ``MASK_MAKERS`` names:
- hull: the convex hull of the face's 68 landmarks, forehead included (tasks.masks.hull_mask);
- xseg: the trained XSeg network's segmentation of the face's crop (tasks.xseg_masks), which
  leaves out what covers the face: hands, hair, glasses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import cv2
import numpy as np
import pyarrow as pa
from pydantic import ConfigDict, with_config

from tasks.align import transform_points
from tasks.faceset import MASKS_SCHEMA, encode_png, finalize_table, open_faces, write_table
from tasks.masks import hull_mask

if TYPE_CHECKING:
    from tasks.xseg_masks import XsegMasker

logger = logging.getLogger(__name__)

MaskKind = Literal["hull", "xseg"]
MASK_KIND_CHOICES: tuple[str, ...] = get_args(MaskKind)


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class MaskOptions:
    """params.yaml ``mask``: how training masks are made: the landmark hull or the trained XSeg."""

    kind: MaskKind = "hull"


def crop_landmarks(landmarks: list[float], matrix: list[float]) -> np.ndarray:
    """Frame-space landmarks of a row -> (68, 2) in its crop's coordinates."""
    return transform_points(np.asarray(landmarks, np.float32).reshape(-1, 2), np.asarray(matrix, np.float32).reshape(2, 3))


def make_hull_masks(rows: dict[str, list], masker: XsegMasker | None) -> list[np.ndarray]:
    """The landmark hull of each row's face: (S, S) uint8 0/255."""
    return [hull_mask(crop_landmarks(landmarks, matrix), size)
            for landmarks, matrix, size in zip(rows["landmarks"], rows["matrix"], rows["crop_size"], strict=True)]


def make_xseg_masks(rows: dict[str, list], masker: XsegMasker | None) -> list[np.ndarray]:
    """The XSeg segmentation of each row's crop: (S, S) uint8 0..255."""
    from tasks.xseg_masks import to_uint8_mask

    if masker is None:
        raise ValueError("mask kind xseg needs a trained XSeg network (an XsegMasker); none was given")
    crops = [cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) for jpeg in rows["image"]]
    return [to_uint8_mask(mask) for mask in masker.predict(crops)]


MaskMaker = Callable[[dict[str, list], "XsegMasker | None"], list[np.ndarray]]
MASK_MAKERS: dict[str, MaskMaker] = {"hull": make_hull_masks, "xseg": make_xseg_masks}
MASK_COLUMNS: dict[str, list[str]] = {"hull": ["face_id", "landmarks", "matrix", "crop_size"], "xseg": ["face_id", "image"]}
assert set(MASK_MAKERS) == set(MASK_COLUMNS) == set(MASK_KIND_CHOICES), "every MaskKind needs a maker and its columns"


def iter_mask_batches(faces_path: Path, options: MaskOptions, batch_size: int = 256, on_batch=None,
                      masker: XsegMasker | None = None) -> Iterator[pa.RecordBatch]:
    dataset = open_faces(faces_path)
    make = MASK_MAKERS[options.kind]
    for batch in dataset.to_batches(columns=MASK_COLUMNS[options.kind], batch_size=batch_size):
        rows = batch.to_pydict()
        masks = [encode_png(mask) for mask in make(rows, masker)]
        if on_batch is not None:
            on_batch(len(masks))
        yield pa.RecordBatch.from_pydict(
            {"face_id": rows["face_id"], "kind": [options.kind] * len(masks), "mask": masks}, schema=MASKS_SCHEMA
        )


def build_masks(faces_path: Path, masks_path: Path, options: MaskOptions, on_batch=None,
                masker: XsegMasker | None = None) -> int:
    """Write a mask for every face of ``faces_path`` into ``masks_path``.

    Args:
        faces_path: The side's faces table.
        masks_path: The masks table to write (replaced).
        options: The mask params: which kind of mask.
        on_batch: Called with the number of masks after each batch (progress).
        masker: The trained XSeg network; needed for kind "xseg".

    Returns:
        The number of masks written.

    Raises:
        ValueError: kind "xseg" without a masker.
    """
    if options.kind == "xseg" and masker is None:
        raise ValueError("mask kind xseg needs a trained XSeg network (an XsegMasker); none was given")
    count = write_table(masks_path, iter_mask_batches(faces_path, options, on_batch=on_batch, masker=masker), MASKS_SCHEMA)
    finalize_table(masks_path)
    logger.info("wrote %d %s masks to %s", count, options.kind, masks_path)
    return count
