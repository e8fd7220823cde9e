"""The command line: user errors are one clear message and exit code 1, not a traceback."""

from __future__ import annotations

import shutil

import yaml
from typer.testing import CliRunner

from flows.cli import app


def test_a_misspelled_key_is_named_without_a_traceback(tmp_path, project_root):
    data = yaml.safe_load((project_root / "params.yaml").read_text())
    data["merge"]["colour_transfer"] = "rct"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["sync", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "merge.colour_transfer: unknown key" in result.output
    assert "Traceback" not in result.output


def test_sync_writes_dvc_yaml_once(tmp_path, project_root):
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")
    runner = CliRunner()
    assert "dvc.yaml updated" in runner.invoke(app, ["sync", "--root", str(tmp_path)]).output
    assert "already matches" in runner.invoke(app, ["sync", "--root", str(tmp_path)]).output
    assert (tmp_path / "dvc.yaml").read_text() == (project_root / "dvc.yaml").read_text()


def test_wrong_side_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["stage", "extract", "left", "--root", str(tmp_path)])
    assert result.exit_code != 0 and "side must be one of src, dst" in result.output
