"""dvc.yaml is rendered from params.yaml and lists each stage's exact params, code and data."""

from __future__ import annotations

import copy

import yaml

from flows.params import load_params, parse_params
from flows.stages import render_dvc_yaml, render_stages, stage_order


def test_committed_dvc_yaml_matches_params(project_root):
    params = load_params(project_root / "params.yaml")
    assert (project_root / "dvc.yaml").read_text() == render_dvc_yaml(params), "run `faceflow sync` and commit dvc.yaml"


def test_code_dependencies_exist(project_root):
    params = load_params(project_root / "params.yaml")
    stages = render_stages(params)["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for dependency in body["deps"]:
            if dependency.endswith(".py"):
                assert (project_root / dependency).is_file(), f"{name} depends on missing {dependency}"


def project_imports(project_root, module_file: str) -> set[str]:
    """Every tasks/ and model/ file a module imports, directly or through other project modules."""
    import ast

    seen: set[str] = set()
    pending = [module_file]
    while pending:
        tree = ast.parse((project_root / pending.pop()).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in {"tasks", "model"}:
                path = node.module.replace(".", "/") + ".py"
                if path not in seen:
                    seen.add(path)
                    pending.append(path)
    return seen


def test_every_module_a_stage_runs_is_listed(project_root):
    """All code a stage's flow runs (transitively) is in its deps, so changing it re-runs the stage."""
    params = load_params(project_root / "params.yaml")
    stages = render_stages(params)["stages"]
    for name, flow_file in [("extract", "flows/extract.py"), ("curate", "flows/curate.py"), ("mask", "flows/mask.py"),
                            ("train", "flows/train.py"), ("merge", "flows/merge.py"), ("export", "flows/export.py")]:
        deps = set(stages[name].get("do", stages[name])["deps"])
        missing = project_imports(project_root, flow_file) - deps
        assert not missing, f"stage {name} runs {sorted(missing)} but does not depend on it"
        assert flow_file in deps
        unrelated = {dep for dep in deps if dep.endswith(".py")} - project_imports(project_root, flow_file) - {flow_file}
        assert not unrelated, f"stage {name} depends on code it never runs: {sorted(unrelated)}"


def test_training_chain_follows_params(project_root):
    data = yaml.safe_load((project_root / "params.yaml").read_text())
    data = copy.deepcopy(data)
    data["train"]["stages"]["gan"] = {"iterations": 10}
    params = parse_params(data)
    stages = render_stages(params)["stages"]
    chain = stages["train"]["foreach"]
    assert chain == {"warp": {"previous": "init"}, "sharpen": {"previous": "warp"}, "gan": {"previous": "sharpen"}}
    assert "checkpoints/gan" in stages["merge"]["deps"] and "checkpoints/gan" in stages["export"]["deps"]
    assert stage_order(params)[-5:] == ["train@warp", "train@sharpen", "train@gan", "merge", "export"]


def test_params_keys_are_narrow(project_root):
    stages = render_stages(load_params(project_root / "params.yaml"))["stages"]
    assert stages["merge"]["params"] == ["merge"]
    assert stages["export"]["params"] == ["export"]
    assert stages["train"]["do"]["params"] == ["train.model", "train.stages.${key}"]
    assert stages["extract"]["do"]["params"] == ["extract.faces", "extract.${item}"]
