"""One rank of a data-parallel training stage, for tests/tasks/test_distributed.py.

Run under torchrun: ``python -m torch.distributed.run --nproc-per-node 2 -m tests.tasks.distributed_worker MEDIA OUT``.
Trains the stage of ``STAGE_OPTIONS`` (true face, GAN, AdaBelief with LR dropout, a batch of 4 split 2 + 2) on real
crops; rank 0 writes the checkpoint to OUT/model, every rank writes its final metrics to OUT/metrics-rank<R>.json.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from tasks.distributed import read_process_group
from tasks.train import train_stage
from tasks.train_options import RuntimeOptions
from tests.tasks.test_train_resume import GAN_OPTIONS, TINY, load_faces

STAGE_OPTIONS = replace(GAN_OPTIONS, iterations=6, save_every=4, preview_every=3)


def train(media: Path, output: Path) -> dict[str, float]:
    """The stage in this process (one of several under torchrun, or alone); returns its metrics."""
    faces = load_faces(media)
    result = train_stage(faces, TINY, STAGE_OPTIONS, "warp", output / "model", output / "logs", progress=False,
                         work_dir=output / "work", holdout=faces, runtime=RuntimeOptions(workers=0, processes=2))
    return result.metrics


if __name__ == "__main__":
    torch.set_num_threads(1)
    media_dir, output_dir = Path(sys.argv[1]), Path(sys.argv[2])
    metrics = train(media_dir, output_dir)
    rank = read_process_group().rank
    (output_dir / f"metrics-rank{rank}.json").write_text(json.dumps(metrics))
