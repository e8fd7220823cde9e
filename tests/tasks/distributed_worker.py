"""A few data-parallel training steps of a tiny autoencoder, for tests/tasks/test_distributed.py.

Run under torchrun: ``python -m torch.distributed.run --nproc-per-node 2 -m tests.tasks.distributed_worker OUT STEPS``,
or with ``--reference`` in one process on every rank's batches together.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from model.config import ModelConfig
from model.losses import reconstruction_loss
from model.networks import build_model
from tasks.distributed import read_process_group, start_process_group, stop_process_group, wrap_module

CONFIG = ModelConfig(resolution=32, ae_dims=16, e_dims=4, d_dims=4, d_mask_dims=2)
BATCH = 3


class BothSides(nn.Module):
    """Both sides' reconstructions in one forward call, as DDP wants."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, dst: torch.Tensor):
        return self.model(src, "src"), self.model(dst, "dst")


def rank_batch(step: int, rank: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    shape = (BATCH, 3, CONFIG.resolution, CONFIG.resolution)
    return {name: torch.rand(shape if name != "masks" else (BATCH, 1, *shape[2:]), generator=generator)
            for name in ("src", "dst", "masks")}


def train(module: nn.Module, parameters, batches) -> None:
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    for batch in batches:
        optimizer.zero_grad()
        (src_face, src_mask), (dst_face, dst_mask) = module(batch["src"], batch["dst"])
        loss = (reconstruction_loss(src_face, batch["src"], src_mask, batch["masks"], masked=True)["total"]
                + reconstruction_loss(dst_face, batch["dst"], dst_mask, batch["masks"], masked=True)["total"])
        loss.backward()
        optimizer.step()


def main(output: Path, steps: int, reference: bool) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(CONFIG)
    if reference:  # one process, both ranks' batches in one
        batches = [{name: torch.cat([rank_batch(step, 0)[name], rank_batch(step, 1)[name]]) for name in ("src", "dst", "masks")}
                   for step in range(steps)]
        train(BothSides(model), model.parameters(), batches)
    else:
        group = read_process_group()
        start_process_group(group, torch.device("cpu"))
        module = wrap_module(BothSides(model), group, torch.device("cpu"))
        train(module, module.parameters(), [rank_batch(step, group.rank) for step in range(steps)])
        output = output.with_name(f"{output.stem}-rank{group.rank}{output.suffix}")
        stop_process_group()
    save_file({name: value.contiguous() for name, value in model.state_dict().items()}, str(output))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), "--reference" in sys.argv)
