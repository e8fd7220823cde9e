"""XSeg labels: a person's face masks as PNG files, one per labelled face, and the faces worth labelling.

A label is ``<face_id>.png`` in a side's label folder (data/<side>/xseg_labels/): a single-channel
image at the face's crop size, drawn on that face's aligned crop (the image in the faces table),
white (>= 128) where the face is and black over everything else: background, hair, hands, glasses,
anything in front of the face. Any image editor will do. The label sheet writes the crops of faces
spread over the poses of a side, each with its landmark hull as a starting mask to correct.

Labels are human decisions: git keeps them, and the xseg stage depends on the folders.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import lance
import numpy as np

from tasks.contact_sheet import write_png
from tasks.coverage_select import select_best
from tasks.decisions import DecisionsError
from tasks.faceset import open_faces
from tasks.mask_table import crop_landmarks
from tasks.masks import hull_mask

logger = logging.getLogger(__name__)

LABEL_SUFFIX = ".png"
DRAFT_SUFFIX = ".mask.png"  # the label sheet's starting masks: corrected, they are saved as <face_id>.png
FACE_LEVEL = 128  # label pixels at or above this are face
IDS_PER_QUERY = 500  # face ids per Lance filter


class XsegLabelError(DecisionsError):
    """A label file is unusable; the message names each file and what to do about it."""


@dataclass(frozen=True)
class LabelFile:
    face_id: str
    path: Path


@dataclass
class LabelScan:
    """What a label folder holds: the usable labels, and one line per unusable file naming it."""

    folder: Path
    labels: list[LabelFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def list_label_files(folder: Path) -> list[Path]:
    """The PNG files directly in ``folder`` (sorted); other files (a README) and subfolders are not labels."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and path.suffix.lower() == LABEL_SUFFIX and not path.name.startswith("."))


def read_label_image(path: Path) -> np.ndarray:
    """A label file as an (H, W) uint8 image.

    Grey images saved as RGB(A), as some editors do, are accepted when their colour channels are equal.

    Raises:
        XsegLabelError: the file is not a readable PNG, or holds colours or an unsupported depth.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise XsegLabelError(f"{path}: not a readable PNG image; save the label as a single-channel PNG")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise XsegLabelError(f"{path}: pixels of type {image.dtype}; save the label as an 8-bit greyscale PNG")
    if image.ndim == 3:
        colours = image[..., :3]
        if not (np.array_equal(colours[..., 0], colours[..., 1]) and np.array_equal(colours[..., 0], colours[..., 2])):
            raise XsegLabelError(f"{path}: has colours; a label is a single-channel (greyscale) PNG, white = face, "
                                 "black = everything else")
        image = np.ascontiguousarray(colours[..., 0])
    return image


def check_label(path: Path, crop_size: int) -> np.ndarray:
    """Read one label and check it fits its face: (crop_size, crop_size) uint8.

    Raises:
        XsegLabelError: naming the file: unreadable, coloured, the wrong size, or empty.
    """
    image = read_label_image(path)
    if image.shape != (crop_size, crop_size):
        raise XsegLabelError(f"{path}: is {image.shape[1]}x{image.shape[0]} px but the face's crop is {crop_size}x"
                             f"{crop_size}; draw the label on the crop itself (faceflow xseg label-sheet writes it)")
    if not np.any(image >= FACE_LEVEL):
        raise XsegLabelError(f"{path}: is empty (no white pixels); paint the face white, or delete the file")
    return image


def read_crop_sizes(faces_path: Path) -> dict[str, int]:
    table = open_faces(faces_path).to_table(columns=["face_id", "crop_size"])
    return dict(zip(table["face_id"].to_pylist(), table["crop_size"].to_pylist(), strict=True))


def scan_labels(folder: Path, faces_path: Path) -> LabelScan:
    """Find a side's labels and check each: face id in the faces table, size, content.

    Args:
        folder: The side's label folder (missing = no labels).
        faces_path: The side's faces table; read only when the folder holds PNG files.

    Returns:
        The usable labels and a problem line for every other PNG file.

    Raises:
        tasks.faceset.FacesetError: there are labels but the faces table is missing or unreadable.
    """
    scan = LabelScan(Path(folder))
    files = list_label_files(folder)
    if not files:
        return scan
    sizes = read_crop_sizes(faces_path)
    for path in files:
        if path.name.lower().endswith(DRAFT_SUFFIX):
            face_id = path.name[:-len(DRAFT_SUFFIX)]
            scan.problems.append(f"{path}: a starting mask from the label sheet; save your corrected mask as "
                                 f"{face_id}{LABEL_SUFFIX} instead")
            continue
        face_id = path.name[:-len(LABEL_SUFFIX)]
        if face_id not in sizes:
            scan.problems.append(f"{path}: no face {face_id!r} in {faces_path}; a label is named after its face id "
                                 "(as the label sheet names the crops); rename it or delete it")
            continue
        try:
            check_label(path, sizes[face_id])
        except XsegLabelError as error:
            scan.problems.append(str(error))
            continue
        scan.labels.append(LabelFile(face_id, path))
    logger.info("%s: %d labels, %d unusable files", folder, len(scan.labels), len(scan.problems))
    return scan


def check_labels(folder: Path, faces_path: Path) -> list[LabelFile]:
    """The usable labels of a folder, or an error listing every unusable file.

    Raises:
        XsegLabelError: one or more label files are unusable (each named, with what to do).
    """
    scan = scan_labels(folder, faces_path)
    if scan.problems:
        listed = "\n  ".join(scan.problems)
        raise XsegLabelError(f"{len(scan.problems)} unusable XSeg label file(s) in {folder}:\n  {listed}")
    return scan.labels


def read_face_rows(faces_path: Path, face_ids: list[str], columns: list[str]) -> dict[str, dict]:
    """face id -> the row's ``columns`` for the given ids (one Lance filter per chunk of ids)."""
    dataset: lance.LanceDataset = open_faces(faces_path)
    rows: dict[str, dict] = {}
    for start in range(0, len(face_ids), IDS_PER_QUERY):
        quoted = ", ".join("'" + face_id.replace("'", "''") + "'" for face_id in face_ids[start:start + IDS_PER_QUERY])
        table = dataset.to_table(columns=sorted({"face_id", *columns}), filter=f"face_id IN ({quoted})")
        rows.update({row["face_id"]: row for row in table.to_pylist()})
    return rows


def decode_crop(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def load_labelled_faces(faces_path: Path, labels: list[LabelFile], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The labelled faces' crops and their labels, resized to ``size``.

    Returns:
        faces (N, size, size, 3) uint8 BGR and masks (N, size, size) uint8, in the order of ``labels``.

    Raises:
        XsegLabelError: a label's face is no longer in the table or its label no longer fits it.
    """
    rows = read_face_rows(faces_path, [label.face_id for label in labels], ["image", "crop_size"])
    faces, masks = [], []
    for label in labels:
        row = rows.get(label.face_id)
        if row is None:
            raise XsegLabelError(f"{label.path}: no face {label.face_id!r} in {faces_path}; rename or delete the label")
        mask = check_label(label.path, row["crop_size"])
        crop = decode_crop(row["image"])
        interpolation = cv2.INTER_AREA if size < crop.shape[0] else cv2.INTER_LINEAR
        faces.append(cv2.resize(crop, (size, size), interpolation=interpolation))
        masks.append(cv2.resize(mask, (size, size), interpolation=interpolation))
    if not faces:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8)
    return np.stack(faces), np.stack(masks)


def pick_faces_to_label(faces_path: Path, count: int, exclude: set[str]) -> list[str]:
    """Up to ``count`` face ids spread over the yaw/pitch grid, sharpest first in each cell, skipping ``exclude``."""
    table = open_faces(faces_path).to_table(columns=["face_id", "yaw", "pitch", "blur"])
    face_ids = table["face_id"].to_pylist()
    keep = np.array([face_id not in exclude for face_id in face_ids], dtype=bool)
    if not keep.any():
        return []
    columns = {name: table[name].to_numpy()[keep] for name in ("yaw", "pitch", "blur")}
    picked = select_best(columns["yaw"], columns["pitch"], columns["blur"], count)
    candidates = [face_id for face_id, wanted in zip(face_ids, keep, strict=True) if wanted]
    return [candidates[index] for index in picked]


def write_label_sheet(faces_path: Path, folder: Path, count: int, labelled: set[str]) -> list[str]:
    """Write the faces worth labelling next: ``<face_id>.png`` (the crop) and ``<face_id>.mask.png`` (its hull).

    The folder is replaced: it always holds exactly the current to-do list.

    Args:
        faces_path: The side's faces table.
        folder: Where to write the to-do list.
        count: How many faces to pick (spread over the poses).
        labelled: Face ids that already have a label (not picked again).

    Returns:
        The picked face ids, in picking order.
    """
    face_ids = pick_faces_to_label(faces_path, count, labelled)
    rows = read_face_rows(faces_path, face_ids, ["image", "landmarks", "matrix", "crop_size"])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for face_id in face_ids:
        row = rows[face_id]
        write_png(folder / f"{face_id}{LABEL_SUFFIX}", decode_crop(row["image"]))
        hull = hull_mask(crop_landmarks(row["landmarks"], row["matrix"]), row["crop_size"])
        write_png(folder / f"{face_id}{DRAFT_SUFFIX}", hull)
    logger.info("wrote %d faces to label in %s", len(face_ids), folder)
    return face_ids
