"""`faceflow faceset sort` on a small real faceset: printed ends, contact sheets, user errors."""

from __future__ import annotations

import shutil

import cv2
import pytest
from typer.testing import CliRunner

from flows.faceset_commands import SHEET_TILE, faceset_app
from tasks.extract import FaceOptions, SideOptions, extract_folder
from tasks.faceset import open_faces
from tasks.sort import SORT_METHOD_CHOICES

FACES = FaceOptions(size=64)
SIDE = SideOptions(embeddings=False, max_faces=0)
PHOTOS = ["identities/barack_obama/obama.jpg", "identities/joe_biden/biden.jpg", "misc/two_people.jpg", "misc/blur.jpg"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, media_dir):
    """A project folder whose data/src/faces.lance holds the faces of four photos (five faces)."""
    root = tmp_path_factory.mktemp("project")
    raw = root / "data" / "raw" / "src"
    raw.mkdir(parents=True)
    for photo in PHOTOS:
        shutil.copy(media_dir / "photos" / photo, raw / photo.rsplit("/", 1)[-1])
    table = root / "data" / "src" / "faces.lance"
    extract_folder(raw, table, FACES, SIDE, root)
    return root


def invoke(*arguments):
    return CliRunner().invoke(faceset_app, list(arguments))


def test_sort_prints_both_ends_and_writes_a_sheet(project):
    result = invoke("sort", "--by", "yaw", "--root", str(project))
    assert result.exit_code == 0, result.output
    rows = open_faces(project / "data" / "src" / "faces.lance").to_table(columns=["face_id", "yaw"]).to_pylist()
    lowest = min(rows, key=lambda row: row["yaw"])
    assert lowest["face_id"] in result.output.splitlines()[1], "the first printed face has the lowest yaw"
    sheet_path = project / "review" / "src" / "sort-yaw.png"
    assert str(sheet_path) in result.output
    sheet = cv2.imread(str(sheet_path))
    assert sheet is not None and sheet.shape[1] == len(rows) * SHEET_TILE


def test_output_limit_and_target_count(project, tmp_path):
    output = tmp_path / "best.png"
    result = invoke("sort", "--by", "best_faces_fast", "--target-count", "2", "--limit", "2", "--output", str(output), "--root", str(project))
    assert result.exit_code == 0, result.output
    sheet = cv2.imread(str(output))
    assert sheet is not None and sheet.shape[1] == 2 * SHEET_TILE


def test_unknown_method_lists_the_choices(project):
    result = invoke("sort", "--by", "sharpness", "--root", str(project))
    assert result.exit_code == 2
    flat = "".join(result.output.split())
    assert "sharpness" in flat and all(choice in flat for choice in SORT_METHOD_CHOICES)


def test_missing_table_and_bad_side_are_reported(project):
    result = invoke("sort", "--by", "blur", "--side", "dst", "--root", str(project))
    assert result.exit_code == 1 and "data/dst/faces.lance does not exist" in result.output
    result = invoke("sort", "--by", "blur", "--side", "left", "--root", str(project))
    assert result.exit_code == 2 and "src, dst" in result.output


def test_review_groups_by_reason_and_keeps_hand_rejects(project):
    from tasks.curate import CurateOptions, curate_faces
    from tasks.decisions import load_rejects

    table = project / "data" / "src" / "faces.lance"
    rows = open_faces(table).to_table(columns=["face_id", "blur"]).to_pylist()
    median = sorted(row["blur"] for row in rows)[len(rows) // 2]
    selection = curate_faces(table, CurateOptions(min_face_size=0, blur_threshold=median))
    selection.save(project / "data" / "src" / "selection.json")
    result = invoke("review", "--accept", "blurry", "--root", str(project))
    assert result.exit_code == 0, result.output
    for group in ("kept", "blurry"):
        assert cv2.imread(str(project / "review" / "src" / f"{group}.png")) is not None
    listed = (project / "review" / "src" / "blurry.txt").read_text().split()
    assert set(selection.rejected) <= set(listed)
    rejects = load_rejects(project / "data" / "src" / "rejects.yaml")
    assert set(rejects) == set(selection.rejected) and all(reason.startswith("accepted: blurry") for reason in rejects.values())
    assert invoke("review", "--accept", "small", "--root", str(project)).exit_code == 1, "no face was left out as small"


def test_review_needs_a_curated_selection(tmp_path):
    result = invoke("review", "--root", str(tmp_path))
    assert result.exit_code == 1 and "curate" in result.output
