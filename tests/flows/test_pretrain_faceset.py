"""`faceflow faceset pretrain`: a generic faceset from a folder of many people's photos, for pretraining stages."""

from __future__ import annotations

import shutil

import yaml
from typer.testing import CliRunner

from flows.faceset_commands import faceset_app
from tasks.faceset import open_faces


def invoke(*arguments):
    return CliRunner().invoke(faceset_app, list(arguments))


def test_builds_a_faceset_of_every_face_and_says_how_to_use_it(tmp_path, project_root, media_dir):
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")
    people = tmp_path / "people"
    people.mkdir()
    photos = sorted((media_dir / "photos" / "distractors").glob("*.jpg"))[:5] + [media_dir / "photos" / "misc" / "two_people.jpg"]
    for photo in photos:
        shutil.copy(photo, people / photo.name)
    result = invoke("pretrain", str(people), "--root", str(tmp_path))
    assert result.exit_code == 0, result.output
    table = open_faces(tmp_path / "data" / "pretrain" / "faces.lance")
    rows = table.to_table(columns=["source_path", "crop_size"]).to_pylist()
    sources = {row["source_path"].rsplit("/", 1)[-1] for row in rows}
    assert len(rows) >= 6 and "two_people.jpg" in sources, "every face, several per photo"
    assert sum(row["source_path"].endswith("two_people.jpg") for row in rows) == 2
    faces = yaml.safe_load((tmp_path / "params.yaml").read_text())["extract"]["faces"]
    assert {row["crop_size"] for row in rows} == {faces["size"]}, "the project's framing"
    assert f"{len(rows)} faces" in result.output and "train.pretrain_faceset: data/pretrain" in result.output

    again = invoke("pretrain", str(people), "--root", str(tmp_path))
    assert again.exit_code == 0 and open_faces(tmp_path / "data" / "pretrain" / "faces.lance").count_rows() == len(rows)


def test_a_folder_without_faces_or_media_is_a_clear_error(tmp_path, project_root, media_dir):
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("pretrain", str(empty), "--root", str(tmp_path))
    assert result.exit_code == 1 and "holds no photo or video" in result.output
    shutil.copy(media_dir / "videos" / "no_faces.mp4", empty / "no_faces.mp4")
    result = invoke("pretrain", str(empty), "--root", str(tmp_path), "--fps", "2")
    assert result.exit_code == 1 and "no face was found" in result.output
