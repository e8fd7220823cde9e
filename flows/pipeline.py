"""The whole pipeline as one Prefect flow: every DVC stage a cached, retryable task.

DVC stays the only judge of staleness. A stage's cache key is a hash of what DVC says it depends
on (the command, each dependency's content hash, each params value), and a stage DVC reports as
changed is forced to run. So an up-to-date stage is reported as Cached and does nothing, and a
stale one runs ``dvc repro --single-item <stage>``: exactly what ``dvc repro`` would run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.context import TaskRunContext
from prefect.settings import get_current_settings

from flows.params import ParamsError, load_params
from flows.stages import stage_order, sync_dvc_yaml


class StageFailed(RuntimeError):
    """A stage's command exited with an error; its log tail is in the message."""


@dataclass(frozen=True)
class StageStatus:
    name: str
    changed: bool
    fingerprint: str


def inspect_stage(root: Path, name: str) -> StageStatus:
    """Ask DVC whether a stage is stale and hash what its result depends on."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo, repo.lock:
        stage = next((stage for stage in repo.index.stages if stage.name == name), None)
        if stage is None:
            raise ParamsError(f"{root / 'dvc.yaml'} has no stage {name!r}; run `faceflow sync`")
        changed = bool(stage.changed())
        dependencies = {}
        for dependency in stage.deps:
            if isinstance(dependency, ParamsDependency):
                dependencies[f"params:{dependency.def_path}"] = dependency.read_params()
            elif dependency.exists:
                dependencies[dependency.def_path] = dependency.get_hash().value
            else:
                dependencies[dependency.def_path] = None
                changed = True
        payload = json.dumps({"stage": name, "cmd": stage.cmd, "deps": dependencies, "root": str(root)}, sort_keys=True, default=str)
    return StageStatus(name, changed, hashlib.sha256(payload.encode()).hexdigest())


def stage_cache_key(context: TaskRunContext, parameters: dict) -> str:
    return f"faceflow-stage-{parameters['status'].fingerprint}"


def child_environment() -> dict[str, str]:
    """Stage commands report to the same Prefect API as this flow (no second temporary server)."""
    environment = dict(os.environ)
    api_url = get_current_settings().api.url
    if not api_url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        api_url = server.api_url if server.running else None
    if api_url:
        environment["PREFECT_API_URL"] = api_url
    bin_dir = str(Path(sys.executable).parent)
    environment["PATH"] = bin_dir + os.pathsep + environment.get("PATH", "")
    return environment


@task(retries=1, retry_delay_seconds=2, cache_key_fn=stage_cache_key, persist_result=True, task_run_name="{status.name}")
def run_stage(status: StageStatus, root: Path) -> dict:
    """Run one stale stage through DVC (which records it in dvc.lock)."""
    logger = get_run_logger()
    if not status.changed:
        logger.info("%s is up to date (DVC); nothing to do", status.name)
        return {"stage": status.name, "ran": False}
    dvc = str(Path(sys.executable).with_name("dvc"))
    command = [dvc, "repro", "--single-item", status.name]
    logger.info("running %s", " ".join(command[1:]))
    process = subprocess.Popen(command, cwd=root, env=child_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        sys.stderr.write(line)
        tail = (tail + [line.rstrip()])[-40:]
    if process.wait() != 0:
        raise StageFailed(f"stage {status.name} failed (exit {process.returncode}):\n" + "\n".join(tail))
    return {"stage": status.name, "ran": True}


@flow(name="faceflow-pipeline", log_prints=True)
def pipeline_flow(root: Path | None = None) -> dict[str, str]:
    """Run every stage in dependency order; up-to-date stages come back Cached."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    params = load_params(root / "params.yaml")
    if sync_dvc_yaml(params, root):
        logger.info("dvc.yaml re-rendered from params.yaml")
    outcome: dict[str, str] = {}
    for name in stage_order(params):
        status = inspect_stage(root, name)
        state = run_stage.with_options(refresh_cache=status.changed)(status, root, return_state=True)
        if state.is_failed():
            state.result()  # raises the stage's error
        outcome[name] = "cached" if state.name == "Cached" else ("ran" if state.result()["ran"] else "up to date")
        logger.info("%s: %s", name, outcome[name])
    return outcome
