"""The xseg stage and the mask stage's xseg kind as flows, and the `faceflow xseg` commands, on real faces."""

from __future__ import annotations

import json
import logging
import shutil

import cv2
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.mask import mask_flow
from flows.xseg import xseg_flow
from model.xseg import UNTRAINED_FILE, load_xseg
from tasks.faceset import open_masks
from tasks.xseg_labels import XsegLabelError
from tests.flows.project import set_params
from tests.tasks.xseg_faces import extract_photos, write_hull_labels

pytestmark = pytest.mark.usefixtures("prefect_api")
TINY_XSEG = {("xseg", "resolution"): 64, ("xseg", "dims"): 8, ("xseg", "iterations"): 20, ("xseg", "batch_size"): 4,
             ("xseg", "learning_rate"): 0.002, ("train", "runtime", "device"): "cpu"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, project_root, media_dir):
    """params.yaml with a tiny XSeg, and faces tables of group photos for both sides (no labels)."""
    root = tmp_path_factory.mktemp("xseg-project")
    shutil.copy(project_root / "params.yaml", root / "params.yaml")
    set_params(root, TINY_XSEG)
    extract_photos(media_dir, ["bbt1.jpg", "bbt4.jpg", "bbt5.jpg"], root / "data" / "src" / "faces.lance", root)
    extract_photos(media_dir, ["bbt2.jpg", "couple.jpg"], root / "data" / "dst" / "faces.lance", root)
    return root


@pytest.fixture()
def labels(project, monkeypatch):
    """Empty label folders (each test writes its own), the mask kind back to hull afterwards."""
    monkeypatch.setenv("FACEFLOW_PROGRESS", "0")
    folders = {side: project / "data" / side / "xseg_labels" for side in ("src", "dst")}
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    yield folders
    set_params(project, {("mask", "kind"): "hull"})


def test_without_labels_xseg_is_marked_untrained_and_masks_stay_hulls(project, labels, caplog):
    (labels["src"] / "README.md").write_text("labels go here")
    metrics = xseg_flow(project)
    assert metrics == {"trained": False, "labels_src": 0, "labels_dst": 0}
    assert json.loads((project / "metrics" / "xseg.json").read_text()) == metrics
    checkpoint = project / "checkpoints" / "xseg"
    assert [path.name for path in checkpoint.iterdir()] == [UNTRAINED_FILE]
    assert str(labels["src"]) in json.loads((checkpoint / UNTRAINED_FILE).read_text())["reason"]

    set_params(project, {("mask", "kind"): "xseg"})
    with caplog.at_level(logging.WARNING):
        result = mask_flow("src", project)
    assert result["kind"] == "hull"
    assert {row["kind"] for row in open_masks(project / "data" / "src" / "masks.lance").to_table().to_pylist()} == {"hull"}
    warning = next(record.getMessage() for record in caplog.records if "keeping the landmark hull" in record.getMessage())
    assert str(labels["src"]) in warning and str(labels["dst"]) in warning


def test_with_labels_xseg_trains_and_the_mask_stage_writes_xseg_rows(project, labels):
    src_ids = write_hull_labels(project / "data" / "src" / "faces.lance", labels["src"])
    dst_ids = write_hull_labels(project / "data" / "dst" / "faces.lance", labels["dst"])
    metrics = xseg_flow(project)
    assert metrics["trained"] and metrics["labels_src"] == len(src_ids) and metrics["labels_dst"] == len(dst_ids)
    assert metrics["train_faces"] + metrics["holdout_faces"] == len(src_ids) + len(dst_ids)
    assert metrics["holdout_faces"] >= 1 and 0 <= metrics["iou"] <= 1
    checkpoint = load_xseg(project / "checkpoints" / "xseg")
    assert checkpoint.config.resolution == 64 and checkpoint.config.face_type == "whole_face"
    assert sorted(checkpoint.state["face_ids"]) == sorted(src_ids + dst_ids)
    assert not (project / "checkpoints" / "xseg" / UNTRAINED_FILE).exists()

    set_params(project, {("mask", "kind"): "xseg"})
    result = mask_flow("dst", project)
    rows = open_masks(project / "data" / "dst" / "masks.lance").to_table().to_pylist()
    assert result == {"masks": len(dst_ids), "kind": "xseg"} and {row["kind"] for row in rows} == {"xseg"}


def test_a_bad_label_stops_the_stage_naming_the_file(project, labels):
    face_ids = write_hull_labels(project / "data" / "dst" / "faces.lance", labels["dst"])
    bad = labels["dst"] / f"{face_ids[0]}.png"
    cv2.imwrite(str(bad), cv2.resize(cv2.imread(str(bad)), (40, 40)))
    with pytest.raises(XsegLabelError, match=f"{bad}: is 40x40 px"):
        xseg_flow(project)
    result = CliRunner().invoke(app, ["stage", "xseg", "--root", str(project)])
    assert result.exit_code == 1 and "is 40x40 px" in result.output and "Traceback" not in result.output


def test_label_commands_write_a_sheet_and_check_the_labels(project, labels):
    runner = CliRunner()
    result = runner.invoke(app, ["xseg", "labels", "src", "--root", str(project)])
    assert result.exit_code == 0 and "0 usable label(s)" in result.output and "label-sheet src" in result.output
    result = runner.invoke(app, ["xseg", "label-sheet", "src", "--count", "3", "--root", str(project)])
    todo = project / "review" / "src" / "xseg_todo"
    assert result.exit_code == 0 and "wrote 3 faces to label" in result.output
    drafts = sorted(todo.glob("*.mask.png"))
    assert len(drafts) == 3 and len(list(todo.glob("*.png"))) == 6
    for draft in drafts[:2]:  # the user accepts two starting masks as they are
        shutil.copy(draft, labels["src"] / draft.name.replace(".mask.png", ".png"))
    shutil.copy(drafts[2], labels["src"] / drafts[2].name)  # and saves one under its draft name by mistake
    result = runner.invoke(app, ["xseg", "labels", "src", "--root", str(project)])
    assert result.exit_code == 1 and "2 usable label(s)" in result.output
    assert drafts[2].name in result.output and "save your corrected mask as" in result.output
