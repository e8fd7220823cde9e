"""Data-parallel training with the gloo backend: 2 processes on the CPU equal one process on both batches."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tasks.distributed import ProcessGroup, average_across_processes, launch_command, read_process_group


def test_process_group_comes_from_the_torchrun_environment():
    assert read_process_group({}) == ProcessGroup(0, 1, 0) and not read_process_group({}).distributed
    group = read_process_group({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert group.distributed and not group.is_main
    with pytest.raises(ValueError, match="RANK 2 is not within WORLD_SIZE 2"):
        read_process_group({"RANK": "2", "WORLD_SIZE": "2"})
    assert average_across_processes({"loss": 2.0}, ProcessGroup()) == {"loss": 2.0}


def test_two_gloo_processes_train_like_one_process_on_both_batches(tmp_path, project_root):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(project_root)}
    command = launch_command(2, "tests.tasks.distributed_worker", [str(tmp_path / "ddp.safetensors"), "3"])
    assert "127.0.0.1" in command
    result = subprocess.run(command, cwd=project_root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "tests.tasks.distributed_worker", str(tmp_path / "one.safetensors"), "3",
                    "--reference"], cwd=project_root, env=env, check=True, timeout=300)
    ranks = [load_file(str(tmp_path / f"ddp-rank{rank}.safetensors")) for rank in (0, 1)]
    reference = load_file(str(tmp_path / "one.safetensors"))
    assert set(reference) == set(ranks[0]) == set(ranks[1])
    for name, value in reference.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name}: the replicas drifted apart"
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-5, msg=f"{name} differs from one process")
