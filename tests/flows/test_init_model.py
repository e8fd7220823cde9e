"""The init stage: a seeded fresh model, or a trained one reused through train.init_from (a path or a git revision)."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from flows.init_model import init_flow
from flows.params import ParamsError
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.networks import build_model
from tests.flows.project import environment, run

pytestmark = pytest.mark.usefixtures("prefect_api")

TINY = {"resolution": 32, "ae_dims": 16, "e_dims": 4, "d_dims": 4, "d_mask_dims": 2}


def write_params(root, project_root, init_from=None, model=TINY):
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    params["train"]["model"] = {**params["train"]["model"], **model}
    if init_from is not None:
        params["train"]["init_from"] = init_from
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def trained_checkpoint(directory, seed=7, iteration=1200):
    torch.manual_seed(seed)
    config = ModelConfig(archi="df", **TINY)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(directory, model, config, {"iteration": iteration, "stage": "sharpen", "history": ["warp", "sharpen"]},
                    optimizer)
    return model


def assert_same_weights(first, second):
    for (name, left), right in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(left, right), name


def test_fresh_init_is_seeded(tmp_path, project_root):
    write_params(tmp_path, project_root)
    init_flow(root=tmp_path)
    first = load_checkpoint(tmp_path / "checkpoints" / "init")
    init_flow(root=tmp_path)
    second = load_checkpoint(tmp_path / "checkpoints" / "init")
    assert_same_weights(first.model, second.model)
    assert first.state["iteration"] == 0 and first.optimizer_state is None


def test_init_from_a_path_reuses_the_weights_and_iterations(tmp_path, project_root):
    other = tmp_path / "other" / "checkpoints" / "sharpen"
    model = trained_checkpoint(other)
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, project_root, {"path": "../other/checkpoints/sharpen"})
    result = init_flow(root=project)
    init = load_checkpoint(project / "checkpoints" / "init")
    assert_same_weights(model, init.model)
    assert result["iteration"] == init.state["iteration"] == 1200 and init.state["history"] == ["warp", "sharpen"]
    assert init.state["init_from"]["path"] == "../other/checkpoints/sharpen" and init.optimizer_state is None

    write_params(project, project_root, {"path": "../other/checkpoints/sharpen"}, model={**TINY, "ae_dims": 32})
    with pytest.raises(ParamsError, match="ae_dims.: 16.*Set train.model to the checkpoint's values"):
        init_flow(root=project)
    write_params(project, project_root, {"path": "../nowhere"})
    with pytest.raises(ParamsError, match="nowhere.*not found"):
        init_flow(root=project)


def test_init_from_a_git_revision_fetches_that_checkpoint_from_the_dvc_cache(tmp_path, project_root):
    env = environment(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        run(command, other, env)
    old = trained_checkpoint(other / "checkpoints" / "sharpen", seed=1, iteration=500)
    run(["dvc", "add", "-q", "checkpoints/sharpen"], other, env)
    run(["git", "add", "-A"], other, env)
    run(["git", "commit", "-qm", "first model"], other, env)
    revision = run(["git", "rev-parse", "HEAD"], other, env).stdout.strip()
    shutil.rmtree(other / "checkpoints" / "sharpen")
    trained_checkpoint(other / "checkpoints" / "sharpen", seed=2, iteration=900)  # trained on since
    run(["dvc", "add", "-q", "checkpoints/sharpen"], other, env)
    run(["git", "commit", "-qam", "second model"], other, env)

    project = tmp_path / "project"
    project.mkdir()
    write_params(project, project_root, {"repo": "../other", "revision": revision, "stage": "sharpen"})
    init_flow(root=project)
    init = load_checkpoint(project / "checkpoints" / "init")
    assert_same_weights(old, init.model)
    assert init.state["iteration"] == 500 and init.state["init_from"]["revision"] == revision

    write_params(project, project_root, {"repo": "../other", "revision": revision, "stage": "warp"})
    with pytest.raises(ParamsError, match="cannot fetch checkpoints/warp at revision"):
        init_flow(root=project)


def test_init_from_needs_exactly_one_source(tmp_path, project_root):
    from flows.params import load_params

    for init_from, message in (({}, "either path"), ({"path": "a", "revision": "b"}, "either path"),
                               ({"revision": "v1"}, "needs the stage"), ({"path": "a", "stage": "warp"}, "go with revision")):
        write_params(tmp_path, project_root, init_from)
        with pytest.raises(ParamsError, match=message):
            load_params(tmp_path / "params.yaml")
