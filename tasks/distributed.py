"""Data-parallel training across processes: one model replica per process, gradients averaged.

Each process is started by torchrun (``launch_command`` builds the command), which sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. The backend is NCCL for CUDA and gloo for the
CPU. Each rank computes its share of every batch (``tasks.loader.Shard``: the stage's batch size is
the batch of all processes together, as in DeepFaceLab), and DistributedDataParallel averages the
gradients in the backward pass, so one step over N processes equals the single-process step on the
whole batch: N GPUs take a step in about 1/N of the time. Only rank 0 writes checkpoints, logs and
previews.

DDP needs the whole step's computation in one forward call of the wrapped module (two forwards that
share parameters before one backward would mark them ready twice), which is why training runs its
model through a single training-pass module.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import distributed, nn
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands among the training processes (world_size 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs, previews and metrics."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def read_process_group(environment: Mapping[str, str] | None = None) -> ProcessGroup:
    """The process's place as torchrun describes it in the environment (a single process without it).

    Raises:
        ValueError: the variables are inconsistent (names them).
    """
    environment = os.environ if environment is None else environment
    try:
        group = ProcessGroup(rank=int(environment.get("RANK", 0)), world_size=int(environment.get("WORLD_SIZE", 1)),
                             local_rank=int(environment.get("LOCAL_RANK", 0)))
    except ValueError as error:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({error})") from None
    if group.world_size < 1 or not 0 <= group.rank < group.world_size:
        raise ValueError(f"RANK {group.rank} is not within WORLD_SIZE {group.world_size}")
    return group


def start_process_group(group: ProcessGroup, device: torch.device) -> bool:
    """Join the other training processes (no-op for a single process); True when this call joined."""
    if not group.distributed or distributed.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    distributed.init_process_group(backend=backend, rank=group.rank, world_size=group.world_size)
    logger.info("rank %d of %d joined the %s process group", group.rank, group.world_size, backend)
    return True


def stop_process_group() -> None:
    if distributed.is_initialized():
        distributed.destroy_process_group()


def process_device(group: ProcessGroup, requested: torch.device) -> torch.device:
    """Each CUDA process takes the GPU of its local rank; CPU processes share the CPU."""
    if requested.type == "cuda" and group.distributed:
        return torch.device("cuda", group.local_rank)
    return requested


def wrap_module(module: nn.Module, group: ProcessGroup, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` when there are several processes, the module itself otherwise."""
    if not group.distributed:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    # every parameter takes part in every step except switched-off branches (e.g. a discriminator not yet in use)
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=False)


def average_across_processes(values: Mapping[str, float], group: ProcessGroup) -> dict[str, float]:
    """The mean of each value over all processes (the values themselves for one process)."""
    if not group.distributed or not values:
        return dict(values)
    names = sorted(values)
    tensor = torch.tensor([float(values[name]) for name in names], dtype=torch.float64)
    distributed.all_reduce(tensor, op=distributed.ReduceOp.SUM)
    return {name: float(value) / group.world_size for name, value in zip(names, tensor.tolist(), strict=True)}


def average_gradients(module: nn.Module, group: ProcessGroup) -> None:
    """Replace each parameter's gradient by its mean over all processes, in one all-reduce (for networks
    stepped outside DistributedDataParallel, such as the discriminators)."""
    if not group.distributed:
        return
    gradients = [parameter.grad for parameter in module.parameters() if parameter.grad is not None]
    if not gradients:
        return
    flat = torch.cat([gradient.reshape(-1) for gradient in gradients])
    distributed.all_reduce(flat, op=distributed.ReduceOp.SUM)
    flat /= group.world_size
    offset = 0
    for gradient in gradients:
        gradient.copy_(flat[offset:offset + gradient.numel()].view_as(gradient))
        offset += gradient.numel()


def wait_for_all(group: ProcessGroup) -> None:
    """Block until every process reaches this point (no-op for one process)."""
    if group.distributed:
        distributed.barrier()


def broadcast_flag(flag: bool, group: ProcessGroup) -> bool:
    """Rank 0's decision, everywhere (e.g. whether to roll back after a collapse)."""
    if not group.distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64)
    distributed.broadcast(tensor, src=0)
    return bool(tensor.item())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for the rendezvous of a local launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch_command(processes: int, module: str, arguments: list[str], port: int | None = None) -> list[str]:
    """The torchrun command that runs ``python -m module arguments`` in ``processes`` local processes.

    The rendezvous listens on 127.0.0.1 only.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(processes),
            "--master-addr", "127.0.0.1", "--master-port", str(port or free_port()), "-m", module, *arguments]
