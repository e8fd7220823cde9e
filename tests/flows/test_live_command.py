"""`faceflow live`: a video read as a camera into a labelled file with a stats report; clear errors exit 1 or 2."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from model.config import ModelConfig
from model.networks import build_model
from tasks.export import export_dfm
from tasks.provenance import verify_file
from tasks.video import probe_video

CLIP = "videos/talking_head_a.mp4"  # 512x388, 30 fps, one face
CONFIG = ModelConfig(archi="df", resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=8, face_type="full")


@pytest.fixture(scope="module")
def tiny_dfm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("live-command") / "tiny.dfm"
    export_dfm(build_model(CONFIG), path, threads=1)
    return path


def invoke(*arguments: object):
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, ["live", *map(str, arguments), "--threads", "1"])


def test_live_on_a_video_writes_a_labelled_file_and_stats(tiny_dfm: Path, media_dir: Path, tmp_path: Path) -> None:
    output, stats = tmp_path / "live.mp4", tmp_path / "stats.json"
    result = invoke("--model", tiny_dfm, "--source", media_dir / CLIP, "--sink", "file", "--output", output,
                    "--frames", 12, "--no-realtime", "--capture-size", "native", "--stats", stats, "--root", tmp_path)

    assert result.exit_code == 0, result.output
    assert "live: 12 frames in" in result.output and "fps end to end (12 with a face" in result.output
    assert "32 px full model" in result.output, "the face type recorded in the .dfm frames the crops"
    for stage in ("read", "detect", "align", "swap", "merge", "label", "sink", "latency"):
        assert f"\n  {stage} " in result.output
    info = probe_video(output)
    assert (info.frame_count, info.width, info.height) == (12, 512, 388)
    report = json.loads(stats.read_text())
    assert report["frames"] == 12 and report["fps"] > 0 and report["stages"]["swap"]["count"] == 12
    assert set(report["stages"]["merge"]) == {"count", "mean", "p50", "p95"}
    record = json.loads((tmp_path / "live.mp4.provenance.json").read_text())
    assert record["synthetic"] and record["revision"]["params"]["model"]["path"] == str(tiny_dfm)
    assert record["revision"]["params"]["live"]["sink"] == "file" and record["live"]["frames"] == 12
    assert record["revision"]["params"]["live"]["label_synthetic"] is True
    labels = verify_file(output, root=tmp_path)
    assert [(check.name, check.status) for check in labels.checks] == [
        ("C2PA manifest", "found"), ("watermark", "found"), ("sidecar", "found")]


def test_a_dfm_with_a_renamed_input_exits_1_naming_it(tiny_dfm: Path, media_dir: Path, tmp_path: Path) -> None:
    model_proto = onnx.load(str(tiny_dfm))
    old_name = model_proto.graph.input[0].name
    model_proto.graph.input[0].name = "input"
    for node in model_proto.graph.node:
        node.input[:] = ["input" if name == old_name else name for name in node.input]
    onnx.save(model_proto, str(tmp_path / "renamed.dfm"))
    result = invoke("--model", tmp_path / "renamed.dfm", "--source", media_dir / CLIP, "--sink", "udp")
    assert result.exit_code == 1
    assert f"error: {tmp_path / 'renamed.dfm'}: inputs are ['input'], expected ['in_face:0']" in result.output
    assert "Traceback" not in result.output


def test_a_missing_camera_and_a_missing_display_exit_1(tiny_dfm: Path, media_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke("--model", tiny_dfm, "--source", 63, "--sink", "udp")
    assert result.exit_code == 1 and "error: no camera at index 63" in result.output
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = invoke("--model", tiny_dfm, "--source", media_dir / CLIP, "--frames", 1)
    assert result.exit_code == 1 and "the window sink needs a display" in result.output


def test_bad_options_exit_2_naming_them(tiny_dfm: Path) -> None:
    result = invoke("--model", tiny_dfm, "--sink", "screen")
    assert result.exit_code == 2 and "--sink: Input should be 'window', 'file' or 'udp'" in result.output
    result = invoke("--model", tiny_dfm, "--sink", "file")
    assert result.exit_code == 2 and "the file sink needs an output path" in result.output
    result = invoke("--model", tiny_dfm, "--capture-size", "640by480")
    assert result.exit_code == 2 and "is not WIDTHxHEIGHT" in result.output
