"""Scheduled continued training edits params.yaml safely: comments kept, invalid results refused."""

from __future__ import annotations

import shutil

import pytest

from flows.deployments import add_iterations
from flows.params import ParamsError, load_params


def test_add_iterations_raises_the_last_stage_and_keeps_comments(tmp_path, project_root):
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")
    before = load_params(tmp_path / "params.yaml").train
    stage, old, new = add_iterations(tmp_path / "params.yaml", 250)
    after = load_params(tmp_path / "params.yaml").train
    assert stage == before.final_stage and new == old + 250 == after.stages[stage].iterations
    assert after.stages["warp"] == before.stages["warp"]
    assert "# trained in this order" in (tmp_path / "params.yaml").read_text()


def test_add_iterations_never_writes_an_invalid_file(tmp_path, project_root):
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")
    original = (tmp_path / "params.yaml").read_text()
    with pytest.raises(ParamsError):
        add_iterations(tmp_path / "params.yaml", -10**9)
    assert (tmp_path / "params.yaml").read_text() == original
