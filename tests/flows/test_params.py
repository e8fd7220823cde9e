"""params.yaml parsing: typed, validated, and every unknown or misspelled key named."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import yaml
from pydantic import ValidationError

from flows.params import ParamsError, load_params, parse_params


@pytest.fixture()
def demo_data(project_root):
    return yaml.safe_load((project_root / "params.yaml").read_text())


def test_project_params_parse(project_root):
    params = load_params(project_root / "params.yaml")
    assert params.train.stage_names[:2] == ["warp", "sharpen"]
    assert params.train.stages["warp"].random_warp and not params.train.stages["sharpen"].random_warp
    assert params.train.previous_stage("warp") == "init"
    assert params.train.previous_stage("sharpen") == "warp"
    assert params.train.final_stage == "sharpen"


def test_presets_parse(project_root):
    for preset in sorted((project_root / "presets").glob("*.yaml")):
        load_params(preset)


@pytest.mark.parametrize(
    "path",
    [
        ("extract", "faces", "face_tpye"),
        ("extract", "src", "fsp"),
        ("train", "model", "ae_dim"),
        ("train", "stages", "warp", "itertions"),
        ("merge", "colour_transfer"),
        ("bogus",),
    ],
)
def test_unknown_key_is_named(demo_data, path):
    data = copy.deepcopy(demo_data)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = 1
    with pytest.raises(ParamsError) as error:
        parse_params(data)
    assert ".".join(path) in str(error.value)
    assert "unknown key" in str(error.value)


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (("extract", "faces", "face_type"), "wide", "extract.faces.face_type"),
        (("train", "model", "resolution"), 100, "multiple of 16"),
        (("train", "stages", "warp", "iterations"), 0, "iterations"),
        (("merge", "crf"), 80, "merge.crf"),
        (("extract", "dst", "fps"), 5, "every frame"),
        (("train", "model", "resolution"), 512, "larger than the whole_face region of the extracted crops"),
        (("train", "model", "face_type"), "head", "reaches beyond the extracted whole_face crops"),
    ],
)
def test_wrong_values_are_explained(demo_data, path, value, fragment):
    data = copy.deepcopy(demo_data)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ParamsError) as error:
        parse_params(data)
    assert fragment in str(error.value)


def test_stage_names_are_checked(demo_data):
    data = copy.deepcopy(demo_data)
    data["train"]["stages"] = {"Init Stage": {}}
    with pytest.raises(ParamsError, match="train stage name"):
        parse_params(data)
    data["train"]["stages"] = {}
    with pytest.raises(ParamsError, match="at least one stage"):
        parse_params(data)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_params_are_frozen(project_root):
    params = load_params(project_root / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.merge.crf = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        params.merge = None  # type: ignore[misc]


def test_a_narrower_model_face_type_is_cut_from_the_extracted_crops(demo_data):
    data = copy.deepcopy(demo_data)
    data["train"]["model"].update(face_type="full", resolution=192)
    assert parse_params(data).train.model.face_type == "full"
    data["train"]["model"]["resolution"] = 208  # full is 2.5/3.2 of a whole_face crop: 200 of 256 px
    with pytest.raises(ParamsError, match="200 px of extract.faces.size = 256"):
        parse_params(data)
