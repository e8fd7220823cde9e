"""Stage flows under a real (temporary) Prefect API: warnings and errors a user can act on."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from flows.curate import curate_flow
from flows.extract import ExtractionError, extract_flow
from flows.mask import mask_flow
from flows.params import ParamsError
from flows.stages import loss_history_file, read_loss_history
from flows.train import train_flow
from model.checkpoint import load_checkpoint
from tasks.faceset import open_faces, open_masks
from tasks.holdout import split_holdout
from tasks.selection import Selection
from tasks.train import EmptyFacesetError
from tasks.train_options import TrainOptionsError
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


def prepare_faces(project, media_dir) -> None:
    """A talking-head clip for src and six photos of two people for dst, extracted, curated and masked; the init model."""
    from flows.init_model import init_flow

    shutil.copy(media_dir / "videos" / "talking_head_a.mp4", project / "data" / "raw" / "src" / "clip.mp4")
    for person in ("barack_obama", "joe_biden"):
        for photo in sorted((media_dir / "photos" / "identities" / person).glob("*.jpg")):
            shutil.copy(photo, project / "data" / "raw" / "dst" / photo.name)
    for side in ("src", "dst"):
        extract_flow(side, project)
        curate_flow(side, project)
        mask_flow(side, project)
    init_flow(project)


def test_training_reads_reframed_faces_holds_some_out_and_writes_its_metrics(project, media_dir, caplog):
    set_params(project, {("train", "model", "face_type"): "full", ("train", "runtime", "workers"): 0,
                         ("train", "stages", "warp", "iterations"): 6, ("train", "stages", "warp", "preview_every"): 3,
                         ("train", "stages", "warp", "gan_power"): 0.1, ("train", "stages", "warp", "gan_dims"): 4})
    prepare_faces(project, media_dir)
    with caplog.at_level(logging.INFO, logger="tasks.faceset_reader"):
        metrics = train_flow("warp", project)
    # The whole_face crops of the faces tables are re-framed to the model's full face type on the fly.
    assert any("re-framing" in record.getMessage() and "as full" in record.getMessage() for record in caplog.records)
    assert metrics["iterations"] == 6 and 0 < metrics["score"] < 1 and {"src_ssim", "dst_ssim", "src_gan"} <= set(metrics)
    assert json.loads((project / "metrics" / "train" / "warp.json").read_text()) == pytest.approx(metrics)
    rows = read_loss_history(project / loss_history_file("warp"))
    assert [row["iteration"] for row in rows] == [3, 6] and all("score" in row for row in rows)
    assert sorted(path.name for path in (project / "logs" / "warp" / "previews").iterdir()) == [
        "000000003.jpg", "000000006.jpg"]
    checkpoint = load_checkpoint(project / "checkpoints" / "warp")
    assert checkpoint.config.face_type == "full" and set(checkpoint.networks) == {"patch_discriminator"}
    held_out = {side: split_holdout(Selection.load(project / f"data/{side}/selection.json").kept)[1] for side in ("src", "dst")}
    assert all(held_out.values()), "both sides keep faces out of training to score the model on"
    # A stage that is already trained is not trained again, and still writes its metrics and loss curve.
    (project / loss_history_file("warp")).unlink()
    assert train_flow("warp", project)["score"] == pytest.approx(metrics["score"])
    assert [row["iteration"] for row in read_loss_history(project / loss_history_file("warp"))] == [3, 6]
    # Two more iterations in 2 data-parallel processes (torchrun, gloo): they go on from the run's snapshot,
    # rank 0 writes the outputs and the flow reports its metrics.
    set_params(project, {("train", "runtime", "processes"): 2, ("train", "stages", "warp", "iterations"): 8})
    metrics = train_flow("warp", project)
    assert metrics["iterations"] == 8 and 0 < metrics["score"] < 1
    assert load_checkpoint(project / "checkpoints" / "warp").state["iteration"] == 8
    assert [row["iteration"] for row in read_loss_history(project / loss_history_file("warp"))] == [3, 6, 8]
    set_params(project, {("train", "stages", "warp", "batch_size"): 3})
    with pytest.raises(TrainOptionsError, match=r"batch_size 3 does not split evenly across 2 .*train\.runtime\.processes"):
        train_flow("warp", project)


def test_a_pretraining_stage_trains_both_sides_on_the_generic_faceset(project, media_dir, tmp_path):
    import yaml

    from flows.init_model import init_flow
    from tasks.extract import FaceOptions, SideOptions, extract_folder

    data = yaml.safe_load((project / "params.yaml").read_text())
    data["train"]["stages"] = {"pre": {"pretrain": True, "iterations": 3, "batch_size": 4, "preview_every": 10},
                               **data["train"]["stages"]}
    data["train"]["runtime"] = {"workers": 0}
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ParamsError, match=r"train\.pretrain_faceset"):
        train_flow("pre", project)
    generic = project / "pretrain"
    set_params(project, {("train", "pretrain_faceset"): "pretrain"})
    with pytest.raises(ParamsError, match=r"pretrain_faceset pretrain: .*faces\.lance not found"):
        train_flow("pre", project)
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in sorted((media_dir / "photos" / "distractors").glob("*.jpg"))[:8]:
        shutil.copy(photo, photos / photo.name)
    extract_folder(photos, generic / "faces.lance", FaceOptions(size=96), SideOptions(embeddings=False), project)
    init_flow(project)
    metrics = train_flow("pre", project)  # no masks.lance there: landmark hull masks, no src/dst faces needed
    assert metrics["iterations"] == 3 and "score" in metrics
    assert load_checkpoint(project / "checkpoints" / "pre").state["history"] == ["pre"]
