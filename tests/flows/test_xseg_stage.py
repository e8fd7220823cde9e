"""The xseg stage in dvc.yaml: its deps, params and outputs, and the mask stage's dependency on it."""

from __future__ import annotations

import copy

import pytest
import yaml

from flows.params import ParamsError, parse_params
from flows.stages import XSEG_CHECKPOINT, XSEG_METRICS, code_dependencies, render_stages, stage_order


@pytest.fixture()
def data(project_root) -> dict:
    return yaml.safe_load((project_root / "params.yaml").read_text())


def test_xseg_stage_reads_both_sides_labels_and_writes_checkpoint_and_metrics(data):
    params = parse_params(data)
    stage = render_stages(params)["stages"]["xseg"]
    assert stage["cmd"] == "faceflow stage xseg" and stage["params"] == ["xseg"]
    assert stage["deps"][:4] == ["data/src/faces.lance", "data/src/xseg_labels", "data/dst/faces.lance",
                                 "data/dst/xseg_labels"]
    assert stage["deps"][4:] == code_dependencies("flows/xseg.py")
    assert {"tasks/xseg_train.py", "tasks/xseg_labels.py", "model/xseg.py"} <= set(stage["deps"])
    assert stage["outs"] == [XSEG_CHECKPOINT] and stage["metrics"] == [{XSEG_METRICS: {"cache": False}}]
    order = stage_order(params)
    assert order.index("xseg") < order.index("mask@src") and order.index("xseg") < order.index("export")
    assert XSEG_CHECKPOINT in render_stages(params)["stages"]["export"]["deps"]


def test_mask_stage_depends_on_xseg_only_when_xseg_makes_the_masks(data):
    hull = render_stages(parse_params(data))["stages"]["mask"]["do"]["deps"]
    assert XSEG_CHECKPOINT not in hull
    xseg = copy.deepcopy(data)
    xseg["mask"]["kind"] = "xseg"
    deps = render_stages(parse_params(xseg))["stages"]["mask"]["do"]["deps"]
    assert deps == ["data/${item}/faces.lance", XSEG_CHECKPOINT, *hull[1:]]
    assert "tasks/xseg_masks.py" in deps and "model/xseg.py" in deps


def test_xseg_params_are_checked_and_xseg_is_no_training_stage_name(data):
    data["xseg"]["resolution"] = 100
    with pytest.raises(ParamsError, match="xseg resolution 100 is not a multiple of 32"):
        parse_params(data)
    data["xseg"] = {"resolution": 64, "iterations": 0}
    with pytest.raises(ParamsError, match="xseg.iterations must be at least 1"):
        parse_params(data)
    data["xseg"] = {"resoltion": 64}
    with pytest.raises(ParamsError, match="xseg.resoltion: unknown key"):
        parse_params(data)
    data["xseg"] = {}
    data["train"]["stages"] = {"xseg": {"iterations": 10}}
    with pytest.raises(ParamsError, match="not 'init' or 'xseg'"):
        parse_params(data)
