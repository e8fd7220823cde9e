"""`faceflow merge-preview`: one dst frame beside its swap, with --set overrides checked like params.yaml."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from flows.merge_preview import merge_command, preview_command
from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.networks import build_model
from tasks.extract import FaceOptions, SideOptions, extract_folder
from tasks.video import iter_frames

DST = "demo/dst_pexels_7154235.mp4"  # 640x576, 35 frames, one face
TINY_MODEL = {"resolution": 32, "ae_dims": 32, "e_dims": 8, "d_dims": 8, "d_mask_dims": 4}

app = typer.Typer()
app.command("merge-preview")(preview_command)  # as flows/cli.py registers them
app.command("merge")(merge_command)


@app.callback()
def faceflow() -> None:
    """Stands in for the faceflow command group."""


def write_params(root: Path, face_type: str = "whole_face") -> None:
    params = {"train": {"model": {**TINY_MODEL, "face_type": face_type}, "stages": {"warp": {"iterations": 1}}},
              "merge": {"mask_blur": 12}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def project(tmp_path_factory, media_dir) -> Path:
    """A project with a dst video, its faces table and a (tiny, untrained) final checkpoint."""
    root = tmp_path_factory.mktemp("preview")
    raw = root / "data" / "raw" / "dst"
    raw.mkdir(parents=True)
    (raw / "dst.mp4").symlink_to(media_dir / DST)
    extract_folder(raw, root / "data" / "dst" / "faces.lance", FaceOptions(size=128),
                   SideOptions(upsample=0, embeddings=False), root)
    torch.manual_seed(0)
    config = ModelConfig(**TINY_MODEL)
    save_checkpoint(root / "checkpoints" / "warp", build_model(config), config, {"iteration": 1})
    write_params(root)
    return root


def preview(project: Path, *arguments: str):
    return CliRunner().invoke(app, ["merge-preview", "--root", str(project), *arguments])


def test_preview_writes_dst_beside_its_swap(project, media_dir):
    result = preview(project, "--frame", "12")

    assert result.exit_code == 0, result.output
    assert "review/merge-preview-12.png" in result.output
    image = cv2.imread(str(project / "review" / "merge-preview-12.png"))
    frame = next(frame for index, _, frame in iter_frames(media_dir / DST) if index == 12)
    height, width = frame.shape[:2]
    assert image.shape == (height, 2 * width, 3)
    below_labels = np.s_[height // 8:]
    dst_half, swap_half = image[:, :width][below_labels], image[:, width:][below_labels]
    np.testing.assert_array_equal(dst_half, frame[below_labels])
    changed = np.any(swap_half != frame[below_labels], axis=2)
    assert changed.sum() > 1000, "the face is swapped"
    ys, xs = np.nonzero(changed)
    assert xs.min() > 50 and xs.max() < width - 50, "and nothing else"


def test_merge_with_preview_is_the_same_preview(project):
    assert preview(project, "--frame", "12").exit_code == 0
    expected = cv2.imread(str(project / "review" / "merge-preview-12.png"))
    (project / "review" / "merge-preview-12.png").unlink()
    result = CliRunner().invoke(app, ["merge", "--preview", "12", "--root", str(project)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(cv2.imread(str(project / "review" / "merge-preview-12.png")), expected)
    result = CliRunner().invoke(app, ["merge", "--set", "crf=20", "--root", str(project)])
    assert result.exit_code == 2 and "go with --preview" in result.output


def test_set_overrides_the_merge_options(project):
    assert preview(project, "--frame", "12").exit_code == 0
    default = cv2.imread(str(project / "review" / "merge-preview-12.png"))
    result = preview(project, "--frame", "12", "--set", "blend_mode=raw_rgb", "--set", "merge.color_transfer=none")

    assert result.exit_code == 0, result.output
    raw = cv2.imread(str(project / "review" / "merge-preview-12.png"))
    assert np.abs(raw.astype(np.int16) - default).mean() > 1.0


@pytest.mark.parametrize("setting, message", [
    ("blend=seamless", "'blend' is not a merge option"),
    ("blend_mode=poisson", "blend_mode=poisson: Input should be 'overlay'"),
    ("face_scale=90", "merge.face_scale must be in -50..50, got 90"),
    ("seamless", "'seamless' is not key=value"),
])
def test_bad_set_is_rejected_naming_the_key(project, setting, message):
    result = preview(project, "--frame", "12", "--set", setting)

    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())


def test_model_params_face_type_mismatch_and_missing_frame_are_clear_errors(project):
    write_params(project, face_type="full")
    try:
        result = preview(project, "--frame", "12")
    finally:
        write_params(project)
    assert result.exit_code == 1
    assert "trained on whole_face crops but params.yaml train.model.face_type is full" in result.output

    result = preview(project, "--frame", "35")
    assert result.exit_code == 1
    assert "--frame 35 is past the end of dst.mp4: it has 35 frames (0..34)" in result.output
