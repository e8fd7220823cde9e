"""XSeg labels: reading, validation errors that name the file, and the label sheet of faces to label next."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tasks.xseg_labels import (DRAFT_SUFFIX, XsegLabelError, check_labels, load_labelled_faces, read_label_image,
                               scan_labels, write_label_sheet)
from tests.tasks.xseg_faces import CROP_SIZE, extract_photos, write_hull_labels


@pytest.fixture(scope="module")
def table(tmp_path_factory, media_dir):
    work = tmp_path_factory.mktemp("xseg-labels")
    return extract_photos(media_dir, ["bbt2.jpg", "bbt3.jpg"], work / "faces.lance", work)


def test_hull_labels_are_read_in_order_with_their_faces(table, tmp_path):
    face_ids = write_hull_labels(table, tmp_path / "labels")
    (tmp_path / "labels" / "README.md").write_text("not a label")
    labels = check_labels(tmp_path / "labels", table)
    assert len(face_ids) >= 5 and sorted(label.face_id for label in labels) == sorted(face_ids)
    faces, masks = load_labelled_faces(table, labels, 64)
    assert faces.shape == (len(labels), 64, 64, 3) and masks.shape == (len(labels), 64, 64)
    assert faces.std() > 20 and 0.2 < (masks >= 128).mean() < 0.8
    assert masks[0, 32, 32] == 255 and masks[0, 0, 0] == 0, "the face centre is face, the corner background"


def test_every_unusable_label_is_named_with_what_to_do(table, tmp_path):
    folder = tmp_path / "labels"
    face_ids = write_hull_labels(table, folder)
    good = cv2.imread(str(folder / f"{face_ids[0]}.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(folder / f"{face_ids[1]}.png"), cv2.resize(good, (64, 64)))  # wrong size
    cv2.imwrite(str(folder / f"{face_ids[2]}.png"), np.zeros_like(good))  # empty
    coloured = cv2.cvtColor(good, cv2.COLOR_GRAY2BGR)
    coloured[..., 2] = 255 - coloured[..., 2]
    cv2.imwrite(str(folder / f"{face_ids[3]}.png"), coloured)  # red and blue differ
    cv2.imwrite(str(folder / "0123456789abcdef-000000-00.png"), good)  # no such face
    cv2.imwrite(str(folder / f"{face_ids[0]}{DRAFT_SUFFIX}"), good)  # a draft saved under its draft name
    (folder / f"{face_ids[4]}.png").write_bytes(b"not a png")

    scan = scan_labels(folder, table)
    assert [label.face_id for label in scan.labels] == sorted(set(face_ids) - set(face_ids[1:5]))
    problems = "\n".join(scan.problems)
    assert len(scan.problems) == 6
    assert f"{face_ids[1]}.png: is 64x64 px but the face's crop is {CROP_SIZE}x{CROP_SIZE}" in problems
    assert f"{face_ids[2]}.png: is empty" in problems
    assert f"{face_ids[3]}.png: has colours" in problems
    assert "0123456789abcdef-000000-00.png: no face '0123456789abcdef-000000-00'" in problems
    assert f"save your corrected mask as {face_ids[0]}.png" in problems
    assert f"{face_ids[4]}.png: not a readable PNG" in problems
    with pytest.raises(XsegLabelError, match=f"6 unusable XSeg label file\\(s\\) in {folder}"):
        check_labels(folder, table)


def test_grey_saved_as_rgba_is_accepted(tmp_path):
    grey = np.zeros((8, 8), np.uint8)
    grey[2:6, 2:6] = 255
    cv2.imwrite(str(tmp_path / "label.png"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGRA))
    assert np.array_equal(read_label_image(tmp_path / "label.png"), grey)


def test_no_folder_means_no_labels_and_no_table_read(tmp_path):
    scan = scan_labels(tmp_path / "missing", tmp_path / "no-table.lance")
    assert scan.labels == [] and scan.problems == []


def test_label_sheet_picks_unlabelled_faces_with_hull_starting_masks(table, tmp_path):
    face_ids = write_hull_labels(table, tmp_path / "labels")
    labelled = set(face_ids[:2])
    todo = tmp_path / "todo"
    (todo / "old").mkdir(parents=True)
    picked = write_label_sheet(table, todo, 3, labelled)
    assert len(picked) == 3 and not labelled & set(picked) and set(picked) <= set(face_ids)
    assert sorted(path.name for path in todo.iterdir()) == sorted(
        [f"{face_id}.png" for face_id in picked] + [f"{face_id}{DRAFT_SUFFIX}" for face_id in picked])
    for face_id in picked:
        crop = cv2.imread(str(todo / f"{face_id}.png"))
        draft = read_label_image(todo / f"{face_id}{DRAFT_SUFFIX}")
        label = read_label_image(tmp_path / "labels" / f"{face_id}.png")
        assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and np.array_equal(draft, label)
    assert write_label_sheet(table, todo, 5, set(face_ids)) == [] and not any(todo.iterdir())
