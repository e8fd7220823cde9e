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


def test_place_shows_the_detector_then_records_and_clears_a_box(tmp_path, media_dir, project_root):
    from tasks.decisions import load_landmark_overrides

    raw = tmp_path / "data" / "raw" / "src"
    raw.mkdir(parents=True)
    shutil.copy(media_dir / "videos" / "webcam_streamer.mp4", raw / "my clip.mp4")
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")
    clip, decisions = "data/raw/src/my clip.mp4", tmp_path / "data" / "src" / "landmarks.yaml"

    looked = invoke("place", str(raw / "my clip.mp4"), "7", "--root", str(tmp_path))
    assert looked.exit_code == 0, looked.output
    assert "detected 0: box " in looked.output and not decisions.exists(), "looking records nothing"
    x0, y0, x1, y1 = (float(value) for value in looked.output.split("detected 0: box ")[1].split()[0].split(","))
    preview = tmp_path / "review" / "src" / "place-my clip-000007.png"
    assert cv2.imread(str(preview)).shape[0] == 512

    placed = invoke("place", str(raw / "my clip.mp4"), "7", "--box", f"{x0 + 4},{y0},{x1},{y1 + 6}", "--root", str(tmp_path))
    assert placed.exit_code == 0, placed.output
    assert load_landmark_overrides(decisions) == {clip: {7: [{"box": [x0 + 4, y0, x1, y1 + 6]}]}}
    assert decisions.read_text().startswith("# Faces placed by hand")
    wide = cv2.imread(str(preview))
    assert wide.shape[1] > 512 and wide.shape[0] == 512, "the aligned crop is shown beside the frame"

    cleared = invoke("place", str(raw / "my clip.mp4"), "7", "--clear", "--root", str(tmp_path))
    assert cleared.exit_code == 0 and load_landmark_overrides(decisions) == {}

    beyond = invoke("place", str(raw / "my clip.mp4"), "100000", "--root", str(tmp_path))
    assert beyond.exit_code == 1 and "has no frame 100000" in beyond.output
    bad_box = invoke("place", str(raw / "my clip.mp4"), "7", "--box", "10,10,5,5", "--root", str(tmp_path))
    assert bad_box.exit_code != 0 and "x0 < x1" in bad_box.output
