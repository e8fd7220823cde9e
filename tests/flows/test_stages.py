"""dvc.yaml is rendered from params.yaml and lists each stage's exact params, code and data."""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import yaml

from flows.params import load_params, parse_params
from flows.stages import (
    LOSS_HISTORY_COLUMNS,
    loss_history_file,
    metrics_file,
    read_loss_history,
    render_dvc_yaml,
    render_stages,
    stage_order,
    write_loss_history,
)
from tests.flows.project import environment, ran_stages, run


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
    assert stages["init"]["params"] == ["train.model"], "no init_from in the demo params: DVC would refuse the missing key"
    data = yaml.safe_load((project_root / "params.yaml").read_text())
    data["train"]["init_from"] = {"path": "../other/checkpoints/sharpen"}
    assert render_stages(parse_params(data))["stages"]["init"]["params"] == ["train.model", "train.init_from"]


def chain_params(project_root, stages: dict[str, dict]) -> dict:
    data = yaml.safe_load((project_root / "params.yaml").read_text())
    data["train"]["stages"] = stages
    return data


THREE_STAGES = {"warp": {"iterations": 10, "learning_rate": 0.0003}, "sharpen": {"iterations": 10, "learning_rate": 0.0001},
                "gan": {"iterations": 10, "learning_rate": 0.00005}}


def test_training_stages_declare_metrics_and_plots(project_root):
    rendered = render_stages(parse_params(chain_params(project_root, THREE_STAGES)))
    train = rendered["stages"]["train"]["do"]
    assert train["metrics"] == [{metrics_file("${key}"): {"cache": False}}]
    assert train["plots"] == [{loss_history_file("${key}"): {"cache": False, "x": "iteration", "y": "total"}}]
    files = [loss_history_file(name) for name in THREE_STAGES]
    loss_plot, score_plot = (next(iter(plot.values())) for plot in rendered["plots"])
    assert list(loss_plot["y"]) == files and list(score_plot["y"]) == files
    assert all(plot["x"] == "iteration" for plot in (loss_plot, score_plot))
    assert all(field in LOSS_HISTORY_COLUMNS for fields in loss_plot["y"].values() for field in fields)


def test_loss_history_round_trip(tmp_path):
    rows = [{"iteration": 10, "total": 1.5, "src_total": 0.75, "dst_total": 0.75},
            {"iteration": np.int64(20), "total": np.float32(1.25), "score": 0.5, "lr": 1e-4}]
    path = tmp_path / "metrics/train/warp/losses.tsv"
    write_loss_history(path, rows)
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == [*LOSS_HISTORY_COLUMNS, "lr"], "the standard columns always, then the others"
    assert lines[1].split("\t") == ["10", "1.5", "0.75", "0.75", "", ""]
    assert read_loss_history(path) == [rows[0], {"iteration": 20, "total": 1.25, "score": 0.5, "lr": 1e-4}]
    with pytest.raises(ValueError, match="row 0 has no 'iteration'"):
        write_loss_history(path, [{"total": 1.0}])
    with pytest.raises(ValueError, match="must be numbers"):
        write_loss_history(path, [{"iteration": 1, "total": "low"}])


STUB = "import sys, uuid\nfrom pathlib import Path\nfor name in sys.argv[1:]:\n" \
       "    Path(name).parent.mkdir(parents=True, exist_ok=True)\n    Path(name).write_text(uuid.uuid4().hex)\n"


def stub_project(root, project_root, params_data: dict) -> dict:
    """A DVC repo with the rendered dvc.yaml whose commands are replaced by a stub that writes fresh outputs.

    Every dependency exists (code files as placeholders), so DVC's own staleness decisions are what is tested.
    """
    document = render_stages(parse_params(params_data))
    (root / "stub.py").write_text(STUB)
    for stage in document["stages"].values():
        body = stage.get("do", stage)
        outs = [next(iter(out)) if isinstance(out, dict) else out
                for key in ("outs", "metrics", "plots") for out in body.get(key, [])]
        body["cmd"] = f"{sys.executable} stub.py {' '.join(outs)}"
        for dependency in body["deps"]:
            if dependency.endswith(".py"):
                (root / dependency).parent.mkdir(parents=True, exist_ok=True)
                (root / dependency).write_text((project_root / dependency).read_text())
    for side in ("src", "dst"):
        (root / f"data/raw/{side}").mkdir(parents=True)
        (root / f"data/raw/{side}/clip.mp4").write_bytes(side.encode())
        (root / f"data/{side}/reference").mkdir(parents=True)
        (root / f"data/{side}/xseg_labels").mkdir(parents=True)
        (root / f"data/{side}/landmarks.yaml").write_text("{}\n")
        (root / f"data/{side}/rejects.yaml").write_text("{}\n")
    (root / "params.yaml").write_text(yaml.safe_dump(params_data, sort_keys=False))
    (root / "dvc.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return document


def test_changing_one_stage_reruns_only_it_and_what_follows(tmp_path, project_root):
    """Real `dvc status` and `dvc repro` on the rendered three-stage chain: sharpen's learning rate changes."""
    root = tmp_path / "project"
    root.mkdir()
    env = environment(tmp_path)
    params_data = chain_params(project_root, THREE_STAGES)
    stub_project(root, project_root, params_data)
    run(["dvc", "init", "--no-scm", "-q"], root, env)
    first = run(["dvc", "repro"], root, env)
    assert {"train@warp", "train@sharpen", "train@gan", "merge", "export"} <= ran_stages(first.stdout)
    assert json.loads(run(["dvc", "status", "--json"], root, env).stdout) == {}

    params_data["train"]["stages"]["sharpen"]["learning_rate"] = 0.00002
    (root / "params.yaml").write_text(yaml.safe_dump(params_data, sort_keys=False))
    status = json.loads(run(["dvc", "status", "--json"], root, env).stdout)
    assert list(status) == ["train@sharpen"], "DVC sees the one stage whose params changed"
    assert "train.stages.sharpen" in json.dumps(status["train@sharpen"])
    second = run(["dvc", "repro"], root, env)
    assert ran_stages(second.stdout) == {"train@sharpen", "train@gan", "merge", "export"}

    for name in THREE_STAGES:  # the plots DVC draws from the files the trainer writes
        write_loss_history(root / loss_history_file(name), [{"iteration": 10, "total": 1.0, "src_total": 0.6,
                                                             "dst_total": 0.4}, {"iteration": 20, "total": 0.8,
                                                             "src_total": 0.5, "dst_total": 0.3, "score": 0.4}])
    plots = json.loads(run(["dvc", "plots", "show", "--json"], root, env).stdout)
    assert not plots.get("errors"), plots.get("errors")
    values = plots["data"]["training loss"][0]["content"]["data"]["values"]
    assert {value["filename::field"] for value in values} >= {"warp/losses.tsv::src_total", "gan/losses.tsv::dst_total"}
    scores = plots["data"]["held-out score"][0]["content"]["data"]["values"]
    assert {value["score"] for value in scores} == {"", "0.4"}  # an empty cell: no point at that iteration
    assert {value["filename"] for value in scores} == {f"{name}/losses.tsv" for name in THREE_STAGES}
