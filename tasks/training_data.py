"""Load a side's selected faces and masks into memory at once.

Training reads its faces through ``tasks.faceset_reader`` (only the sampled faces, re-framed to the
model's face type); this whole-side load serves benchmarks and tests that compare against it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from tasks.faceset import decode_png, open_faces, open_masks
from tasks.selection import Selection

logger = logging.getLogger(__name__)


def load_side(faces_path: Path, masks_path: Path, selection_path: Path | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode the (selected) aligned crops and their masks, resized to ``size``.

    Returns:
        faces (N, size, size, 3) uint8 BGR and masks (N, size, size) uint8, in face-id order.
    """
    faces = open_faces(faces_path).to_table(columns=["face_id", "image"])
    masks = open_masks(masks_path).to_table(columns=["face_id", "mask"])
    mask_by_id = dict(zip(masks["face_id"].to_pylist(), masks["mask"].to_pylist(), strict=True))
    wanted = set(Selection.load(selection_path).kept) if selection_path is not None else None

    images, mask_images = [], []
    for face_id, jpeg in zip(faces["face_id"].to_pylist(), faces["image"].to_pylist(), strict=True):
        if wanted is not None and face_id not in wanted:
            continue
        mask_png = mask_by_id.get(face_id)
        if mask_png is None:
            raise ValueError(f"{masks_path} has no mask for face {face_id}; re-run the mask stage")
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        mask = decode_png(mask_png)
        if image.shape[0] != size:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)
        images.append(image)
        mask_images.append(mask)
    logger.info("loaded %d faces from %s", len(images), faces_path)
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8)
    return np.stack(images), np.stack(mask_images)
