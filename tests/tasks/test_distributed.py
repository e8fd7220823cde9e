"""Data-parallel training with the gloo backend: a stage in 2 processes on the CPU equals the stage in one."""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import replace

import pytest

from model.checkpoint import load_checkpoint
from model.networks import build_model
from tasks.distributed import ProcessGroup, average_across_processes, launch_command, read_process_group
from tasks.run_state import list_checkpoints
from tasks.train import process_shard
from tasks.train_options import TrainOptionsError
from tasks.train_start import seed_everything
from tests.tasks.distributed_worker import STAGE_OPTIONS, train
from tests.tasks.test_train_resume import TINY


def test_process_group_comes_from_the_torchrun_environment():
    assert read_process_group({}) == ProcessGroup(0, 1, 0) and not read_process_group({}).distributed
    group = read_process_group({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert group.distributed and not group.is_main
    with pytest.raises(ValueError, match="RANK 2 is not within WORLD_SIZE 2"):
        read_process_group({"RANK": "2", "WORLD_SIZE": "2"})
    assert average_across_processes({"loss": 2.0}, ProcessGroup()) == {"loss": 2.0}


def test_two_gloo_processes_train_the_stage_one_process_trains(tmp_path, project_root, media_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(project_root)}
    command = launch_command(2, "tests.tasks.distributed_worker", [str(media_dir), str(tmp_path / "ddp")])
    assert "127.0.0.1" in command
    result = subprocess.run(command, cwd=project_root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single = train(media_dir, tmp_path / "one")  # here, alone: a batch of 4 in one process

    ranks = [json.loads((tmp_path / "ddp" / f"metrics-rank{rank}.json").read_text()) for rank in (0, 1)]
    shared = set(ranks[1]) - {"ms_per_iteration"}
    assert {name: ranks[0][name] for name in shared} == {name: ranks[1][name] for name in shared}, \
        "the ranks judged different losses"
    assert "score" in ranks[0] and "score" not in ranks[1], "only rank 0 scores the held-out faces"
    for name in ("src_total", "dst_total", "code_discriminator", "patch_discriminator"):
        assert math.isclose(ranks[0][name], single[name], rel_tol=1e-3), (name, ranks[0][name], single[name])

    # Adam-type updates are lr * m / sqrt(v): where a gradient is near 0 its rounding flips the step, so the
    # weights are compared by how far apart they are against how far training moved them (a rank that
    # trained on its own half alone would be ~50 % off)
    seed_everything(STAGE_OPTIONS.seed)
    start = build_model(TINY).state_dict()
    distributed_weights, single_weights = (load_checkpoint(tmp_path / run / "model").model.state_dict()
                                           for run in ("ddp", "one"))
    for name, value in single_weights.items():
        moved = float((value - start[name]).norm())
        assert moved > 0, f"{name} did not train"
        assert float((distributed_weights[name] - value).norm()) < 0.01 * moved, f"{name} differs from the one-process stage"
    assert len(list_checkpoints(tmp_path / "ddp" / "work")) >= 1, "rank 0 keeps the work-dir snapshots"
    assert sorted(path.name for path in (tmp_path / "ddp" / "logs").iterdir() if path.name.startswith("events")), \
        "rank 0 writes the TensorBoard log"
    assert len(list((tmp_path / "ddp" / "logs").glob("events*"))) == 1, "only rank 0 writes TensorBoard events"


def test_a_batch_that_does_not_split_across_the_processes_names_the_keys(media_dir):
    options = replace(STAGE_OPTIONS, batch_size=3)
    with pytest.raises(TrainOptionsError, match=r"train\.stages\.warp\.batch_size 3 .* train\.runtime\.processes"):
        process_shard(ProcessGroup(1, 2, 1), options, "warp")
