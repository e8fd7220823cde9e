"""A throwaway copy of the project (its own git repo, DVC cache and Prefect home) for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent

TINY_PARAMS = {
    ("extract", "faces", "size"): 96,
    ("extract", "src", "fps"): 2.5,
    ("extract", "src", "embeddings"): False,
    ("extract", "dst", "embeddings"): False,
    ("train", "model", "resolution"): 32,
    ("train", "model", "ae_dims"): 32,
    ("train", "model", "e_dims"): 8,
    ("train", "model", "d_dims"): 8,
    ("train", "model", "d_mask_dims"): 4,
    ("train", "stages", "warp", "iterations"): 30,
    ("train", "stages", "warp", "batch_size"): 4,
    ("train", "stages", "warp", "preview_every"): 15,
    ("train", "stages", "sharpen", "iterations"): 20,
    ("train", "stages", "sharpen", "batch_size"): 4,
    ("train", "stages", "sharpen", "preview_every"): 10,
}


def environment(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_HOME=str(home / "prefect"),
        FACEFLOW_PROGRESS="0",
        GIT_AUTHOR_NAME="faceflow tests",
        GIT_AUTHOR_EMAIL="tests@faceflow.invalid",
        GIT_COMMITTER_NAME="faceflow tests",
        GIT_COMMITTER_EMAIL="tests@faceflow.invalid",
    )
    env.pop("PREFECT_API_URL", None)
    return env


def run(command: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def set_params(root: Path, changes: dict[tuple[str, ...], object]) -> None:
    path = root / "params.yaml"
    data = yaml.safe_load(path.read_text())
    for keys, value in changes.items():
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def copy_project(source: Path, target: Path) -> None:
    """The files git would give a fresh clone (tracked and not ignored), nothing built."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=source, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        if name == "dvc.lock" or name.startswith("metrics/"):
            continue  # results of a run in the source tree, not part of the project
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)


def ran_stages(output: str) -> set[str]:
    """Stage names DVC reports as run in a repro log."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def timed(callable_, *args):
    start = time.perf_counter()
    result = callable_(*args)
    return result, time.perf_counter() - start
