"""The mask stage on real faces: one hull mask per face, covering the face in its crop."""

from __future__ import annotations

import shutil

import cv2
import numpy as np

from tasks.extract import FaceOptions, SideOptions, extract_folder
from tasks.faceset import decode_png, open_faces, open_masks
from tasks.mask_table import MaskOptions, build_masks
from tasks.training_data import load_side


def test_masks_cover_each_face_and_load_for_training(tmp_path, media_dir):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(media_dir / "photos" / "misc" / "two_people.jpg", raw / "two.jpg")
    faces, side = FaceOptions(size=128), SideOptions(embeddings=False, max_faces=0)
    table = tmp_path / "faces.lance"
    extract_folder(raw, table, faces, side, tmp_path)
    count = build_masks(table, tmp_path / "masks.lance", MaskOptions())
    rows = open_faces(table).to_table(columns=["face_id", "image"]).to_pylist()
    masks = {row["face_id"]: decode_png(row["mask"]) for row in open_masks(tmp_path / "masks.lance").to_table().to_pylist()}
    assert count == len(rows) == 2 and set(masks) == {row["face_id"] for row in rows}
    for mask in masks.values():
        assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}
        assert mask[64, 64] == 255, "the crop centre (nose) is inside the face"
        assert mask[0, 0] == 0 and mask[127, 127] == 0, "corners are background"
        assert 0.2 < (mask > 0).mean() < 0.8
    images, loaded = load_side(table, tmp_path / "masks.lance", None, 64)
    assert images.shape == (2, 64, 64, 3) and loaded.shape == (2, 64, 64)
    expected = cv2.resize(masks[rows[0]["face_id"]], (64, 64), interpolation=cv2.INTER_AREA)
    assert np.array_equal(loaded[0], expected)
