"""`faceflow dfm check`: the report for a good export, exit 1 naming the file and fault for broken ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flows.dfm_commands import DEFAULT_FACE_SOURCE, dfm_app
from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.networks import build_model
from tasks.export import export_dfm
from tests.tasks.test_dfm_check import write_fake_dfm

CONFIG = ModelConfig(archi="liae-ud", resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=8, face_type="full")
PHOTO = "photos/identities/barack_obama/obama.jpg"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a .dfm, the checkpoint folder it was exported from) for a tiny LIAE-UD model."""
    folder = tmp_path_factory.mktemp("dfm")
    torch.manual_seed(0)
    model = build_model(CONFIG)
    save_checkpoint(folder / "checkpoint", model, CONFIG, {"iteration": 0})
    export_dfm(model, folder / "tiny.dfm", threads=1)
    return folder / "tiny.dfm", folder / "checkpoint"


def invoke(*arguments: object):
    # A wide terminal, so usage errors are not wrapped inside their box.
    return CliRunner(env={"COLUMNS": "200"}).invoke(dfm_app, ["check", *map(str, arguments), "--threads", "1"])


def test_a_good_export_gets_a_report(export: tuple[Path, Path], media_dir: Path) -> None:
    dfm, checkpoint = export
    result = invoke(dfm, "--checkpoint", checkpoint, "--face", media_dir / PHOTO)

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{dfm}: a valid DeepFaceLive .dfm"
    assert "in_face:0 float32 [batch, 32, 32, 3]" in lines[1]
    output_names = [next(word for word in line.split() if word.endswith(":0")) for line in lines[2:5]]
    assert output_names == ["out_face_mask:0", "out_celeb_face:0", "out_celeb_face_mask:0"]
    assert all(" values 0." in line for line in lines[2:5])
    assert "32 px, fp32 weights" in result.output and "archi liae-ud" in result.output
    assert "1 real full face from obama.jpg" in result.output, "the checkpoint's face type frames the crops"
    assert "ms/face" in result.output
    assert "max |onnx - torch| = " in result.output and f"against {checkpoint}" in result.output


@pytest.mark.skipif(not DEFAULT_FACE_SOURCE.is_file(), reason="the bundled demo clip is not in this checkout")
def test_the_demo_clip_gives_the_faces_by_default(export: tuple[Path, Path]) -> None:
    result = invoke(export[0], "--face-type", "whole_face")
    assert result.exit_code == 0, result.output
    assert f"4 real whole_face faces from {DEFAULT_FACE_SOURCE.name}" in result.output
    assert "vs torch" not in result.output


def test_a_truncated_file_exits_1_naming_it(export: tuple[Path, Path], tmp_path: Path) -> None:
    data = export[0].read_bytes()
    (tmp_path / "cut.dfm").write_bytes(data[: len(data) // 3])
    result = invoke(tmp_path / "cut.dfm")
    assert result.exit_code == 1
    assert f"error: {tmp_path / 'cut.dfm'} is not a readable ONNX file: it is truncated" in result.output


def test_broken_contracts_exit_1_naming_the_fault(tmp_path: Path, media_dir: Path) -> None:
    cases = {
        "nchw.dfm": (write_fake_dfm(tmp_path / "nchw.dfm", channels_first=True), "channels first (NCHW)"),
        "renamed.dfm": (write_fake_dfm(tmp_path / "renamed.dfm", input_name="face"), "inputs are ['face']"),
        "bright.dfm": (write_fake_dfm(tmp_path / "bright.dfm", face_gain=4.0), "output 'out_celeb_face:0' spans"),
    }
    (tmp_path / "photo.dfm").write_bytes((media_dir / PHOTO).read_bytes())
    cases["photo.dfm"] = (tmp_path / "photo.dfm", "it is not an ONNX model")
    for name, (path, fault) in cases.items():
        result = invoke(path, "--face", media_dir / PHOTO)
        assert result.exit_code == 1, (name, result.output)
        assert result.output.startswith(f"error: {path}") and fault in result.output, (name, result.output)


def test_a_file_from_another_model_exits_1(export: tuple[Path, Path], tmp_path: Path, media_dir: Path) -> None:
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "other", build_model(CONFIG), CONFIG, {"iteration": 0})
    result = invoke(export[0], "--checkpoint", tmp_path / "other", "--face", media_dir / PHOTO)
    assert result.exit_code == 1
    assert "differs from the torch model" in result.output and str(export[0]) in result.output


def test_bad_options_are_refused(export: tuple[Path, Path], tmp_path: Path) -> None:
    result = invoke(export[0], "--face-type", "fullface")
    assert result.exit_code == 2 and "face type must be one of half, mid_full, full, whole_face, head" in result.output
    result = invoke(export[0], "--checkpoint", tmp_path / "nowhere")
    assert result.exit_code == 1 and "is not a checkpoint directory" in result.output
