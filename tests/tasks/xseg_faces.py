"""Real faces with labels for the XSeg tests: group photos extracted into a faces table, hull masks as labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2

from tasks.extract import FaceOptions, SideOptions, extract_folder
from tasks.faceset import open_faces
from tasks.mask_table import crop_landmarks
from tasks.masks import hull_mask

CROP_SIZE = 128
# about 60 faces of many people in 5 s of extraction (max_faces 0: every face of each photo), 3 of them held out
GROUP_PHOTOS = ["bbt1.jpg", "bbt2.jpg", "bbt3.jpg", "bbt4.jpg", "bbt5.jpg", "selfie-many-people.jpg", "multi_people.jpg",
                "multiface.jpg", "couple.jpg", "mtdm.jpg", "bald_guys.jpg"]


def extract_photos(media_dir: Path, names: list[str], table: Path, work: Path) -> Path:
    """Every face of the named photos/misc photos, as a faces table of CROP_SIZE whole-face crops."""
    raw = work / f"raw-{table.parent.name}-{table.stem}"
    raw.mkdir(parents=True)
    for name in names:
        shutil.copy(media_dir / "photos" / "misc" / name, raw / name)
    extract_folder(raw, table, FaceOptions(size=CROP_SIZE), SideOptions(embeddings=False, max_faces=0), work)
    return table


def write_hull_labels(table: Path, folder: Path) -> list[str]:
    """Each face's landmark hull as its label, <face_id>.png in ``folder``; returns the face ids."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = open_faces(table).to_table(columns=["face_id", "landmarks", "matrix", "crop_size"]).to_pylist()
    for row in rows:
        mask = hull_mask(crop_landmarks(row["landmarks"], row["matrix"]), row["crop_size"])
        assert cv2.imwrite(str(folder / f"{row['face_id']}.png"), mask)
    return [row["face_id"] for row in rows]
