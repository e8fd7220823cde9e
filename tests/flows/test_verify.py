"""`faceflow verify` on renders made by the merge stage's task: all three labels on a labelled render, none on
footage faceflow never touched, tampering and unreadable files reported, labelling turned off."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from flows.merge import merge_flow, render_dst_video
from flows.params import load_params
from flows.stages import checkpoint_dir, faces_table
from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.networks import build_model
from tasks.c2pa_signing import ensure_signing_identity
from tasks.faceset import FACES_SCHEMA, create_empty_table
from tasks.merge import FaceSwapper, MergeOptions
from tasks.provenance import pipeline_revision
from tests.flows.conftest import Project
from tests.flows.project import TINY_PARAMS, set_params

CLIP = "videos/talking_head_a.mp4"
runner = CliRunner()


@pytest.fixture(scope="module")
def render_setup(tmp_path_factory, media_dir):
    """A project folder with a dst clip, an empty dst faces table (frames pass through) and a tiny model."""
    root = tmp_path_factory.mktemp("verify-project")
    faces = root / "data" / "dst" / "faces.lance"
    create_empty_table(faces, FACES_SCHEMA)
    torch.manual_seed(0)
    swapper = FaceSwapper(build_model(ModelConfig(resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=4)))
    return root, media_dir / CLIP, faces, swapper


def render(render_setup, name: str, **options) -> Path:
    """Render 20 frames of the clip through the merge stage's task, as the merge flow does."""
    root, clip, faces, swapper = render_setup
    options = MergeOptions(end_frame=19, **options)
    output = root / "renders" / (name if options.codec == "png" else f"{name}.mp4")
    identity = ensure_signing_identity(root) if options.label_synthetic else None
    revision = pipeline_revision(root, {"merge": {"crf": options.crf}})
    render_dst_video.fn(clip, faces, swapper, output, options, revision, frozenset(), identity)
    return output


def verify(*arguments: str):
    return runner.invoke(app, ["verify", *arguments], env={"COLUMNS": "200"})


def statuses(output: str) -> dict[str, str]:
    """label -> status, from the rows of verify's table."""
    found = re.findall(r"│ (C2PA manifest|watermark|sidecar)\s+│ (\w+)", output)
    return dict(found)


def test_a_labelled_render_shows_all_three_labels(render_setup):
    output = render(render_setup, "labelled")
    result = verify(str(output))
    assert result.exit_code == 0, result.output
    assert statuses(result.output) == {"C2PA manifest": "found", "watermark": "found", "sidecar": "found"}
    assert "trainedAlgorithmicMedia" in result.output and "trusted (this project's certificate)" in result.output
    sidecar = json.loads(output.with_name(output.name + ".provenance.json").read_text())
    assert sidecar["labels"]["c2pa_signed_files"] == 1 and sidecar["synthetic"] is True

    tampered = output.with_name("tampered.mp4")
    data = bytearray(output.read_bytes())
    data[data.find(b"mdat") + 400] ^= 0x01
    tampered.write_bytes(bytes(data))
    shutil.copy(output.with_name(output.name + ".provenance.json"), tampered.with_name("tampered.mp4.provenance.json"))
    result = verify(str(tampered))
    assert result.exit_code == 1, result.output
    assert statuses(result.output) == {"C2PA manifest": "invalid", "watermark": "found", "sidecar": "invalid"}


def test_a_png_render_is_labelled_frame_by_frame(render_setup):
    output = render(render_setup, "frames", codec="png")
    assert len(list(output.glob("*.png"))) == 20
    result = verify(str(output), "--frames", "6")
    assert result.exit_code == 0, result.output
    assert "6/6 labelled" in result.output
    assert verify(str(next(output.glob("*.png")))).exit_code == 1  # one frame alone has no sidecar


def test_footage_faceflow_never_touched_has_no_labels(media_dir):
    result = verify(str(media_dir / CLIP))
    assert result.exit_code == 1 and set(statuses(result.output).values()) == {"missing"}, result.output


def test_unreadable_files_are_named(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    result = verify(str(broken))
    assert result.exit_code == 2 and "broken.mp4" in result.output
    result = verify(str(tmp_path / "absent.mp4"))
    assert result.exit_code == 2 and "absent.mp4: no such file" in result.output


@pytest.mark.usefixtures("prefect_api")
def test_the_merge_flow_labels_renders_and_warns_when_told_not_to(tmp_path, project_root, media_dir, monkeypatch, caplog):
    monkeypatch.setenv("FACEFLOW_PROGRESS", "0")
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, {**TINY_PARAMS, ("merge", "end_frame"): 9})
    (tmp_path / "data" / "raw" / "dst").mkdir(parents=True)
    shutil.copy(media_dir / CLIP, tmp_path / "data" / "raw" / "dst" / "clip.mp4")
    create_empty_table(tmp_path / faces_table("dst"), FACES_SCHEMA)
    params = load_params(tmp_path / "params.yaml")
    save_checkpoint(tmp_path / checkpoint_dir(params.train.final_stage), build_model(params.train.model), params.train.model,
                    {"iteration": 0, "stage": params.train.final_stage})
    render, sidecar = tmp_path / "renders" / "clip.mp4", tmp_path / "renders" / "clip.mp4.provenance.json"
    merge_flow(tmp_path)
    assert verify(str(render)).exit_code == 0 and sidecar.is_file()

    set_params(tmp_path, {("merge", "label_synthetic"): False})
    with caplog.at_level(logging.WARNING):
        merge_flow(tmp_path)
    assert any("label_synthetic is off" in record.getMessage() for record in caplog.records)
    assert not sidecar.exists(), "the earlier render's record no longer describes the file"
    result = verify(str(render))
    assert result.exit_code == 1 and set(statuses(result.output).values()) == {"missing"}, result.output


def test_the_pipeline_render_is_labelled_and_its_key_is_ignored_by_git(pipeline_project: Project):
    root = pipeline_project.root
    result = pipeline_project.run("faceflow", "verify", "renders/dst_pexels_7154235.mp4", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert pipeline_project.run("git", "check-ignore", "-q", ".faceflow/provenance/signer.key", check=False).returncode == 0
    assert (root / ".faceflow" / "provenance" / "signer.key").is_file()
