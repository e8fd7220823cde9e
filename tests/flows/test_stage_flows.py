"""Stage flows under a real (temporary) Prefect API: warnings and errors a user can act on."""

from __future__ import annotations

import logging
import shutil

import pytest

from flows.curate import curate_flow
from flows.extract import ExtractionError, extract_flow
from flows.mask import mask_flow
from flows.params import ParamsError
from flows.train import train_flow
from tasks.faceset import open_faces, open_masks
from tasks.train import EmptyFacesetError
from tests.flows.project import TINY_PARAMS, set_params

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture()
def project(tmp_path, project_root, monkeypatch):
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, TINY_PARAMS)
    monkeypatch.setenv("FACEFLOW_PROGRESS", "0")
    for side in ("src", "dst"):
        (tmp_path / "data" / "raw" / side).mkdir(parents=True)
    return tmp_path


def test_video_without_faces_gives_a_warning_an_empty_table_and_a_clear_training_error(project, media_dir, caplog):
    shutil.copy(media_dir / "videos" / "no_faces.mp4", project / "data" / "raw" / "src" / "no_faces.mp4")
    shutil.copy(media_dir / "photos" / "identities" / "barack_obama" / "obama.jpg", project / "data" / "raw" / "dst" / "obama.jpg")
    with caplog.at_level(logging.WARNING):
        result = extract_flow("src", project)
    assert result["faces"] == 0 and open_faces(project / "data" / "src" / "faces.lance").count_rows() == 0
    assert any("no faces found" in record.getMessage() for record in caplog.records)
    extract_flow("dst", project)
    curate_flow("src", project)
    curate_flow("dst", project)
    mask_flow("src", project)
    mask_flow("dst", project)
    assert open_masks(project / "data" / "dst" / "masks.lance").count_rows() == 1
    from flows.init_model import init_flow

    init_flow(project)
    with pytest.raises(EmptyFacesetError) as error:
        train_flow("warp", project)
    message = str(error.value)
    assert "no src faces" in message and "data/raw/src" in message


def test_corrupt_video_is_named_and_good_faces_are_kept(project, media_dir):
    raw = project / "data" / "raw" / "dst"
    shutil.copy(media_dir / "photos" / "identities" / "joe_biden" / "biden.jpg", raw / "biden.jpg")
    (raw / "broken clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 2000)
    with pytest.raises(ExtractionError) as error:
        extract_flow("dst", project)
    assert "broken clip.mp4" in str(error.value) and "kept" in str(error.value)
    table = open_faces(project / "data" / "dst" / "faces.lance")
    assert [row["source_path"].rsplit("/", 1)[-1] for row in table.to_table(columns=["source_path"]).to_pylist()] == ["biden.jpg"]
    (raw / "broken clip.mp4").unlink()
    result = extract_flow("dst", project)
    assert result["extracted"] == [] and result["faces"] == 1, "the finished photo is not extracted again"


def test_unknown_training_stage_is_named(project):
    with pytest.raises(ParamsError, match="nope"):
        train_flow("nope", project)
