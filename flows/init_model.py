"""init: the seeded, untrained model the first training stage starts from -> checkpoints/init."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import flow, get_run_logger

from flows.params import load_params
from flows.stages import checkpoint_dir
from model.checkpoint import save_checkpoint
from model.networks import build_model

INIT_SEED = 0


@flow(name="init-model", log_prints=True)
def init_flow(root: Path | None = None) -> dict:
    """Write the seeded, untrained model the first training stage starts from."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    config = load_params(root / "params.yaml").train.model
    torch.manual_seed(INIT_SEED)
    model = build_model(config)
    output = root / checkpoint_dir("init")
    save_checkpoint(output, model, config, {"iteration": 0, "stage": "init", "seed": INIT_SEED, "history": []})
    logger.info("wrote %s: new %s model at %d px", output, config.archi, config.resolution)
    return {"checkpoint": str(output)}
