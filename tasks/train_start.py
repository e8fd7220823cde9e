"""Where a training stage starts: its own run's newest sound snapshot, an earlier stage's checkpoint, or a new model."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import NetworkState, load_checkpoint
from model.config import ModelConfig
from model.networks import SwapAutoencoder, build_model
from tasks.collapse import CollapseGuard, restore_rng
from tasks.distributed import wait_for_all
from tasks.faceset_reader import FacesetReader
from tasks.run_state import RunProgress, compute_lineage, resume_run
from tasks.train_options import Runtime, StageOptions
from tasks.train_step import TrainingParts, assemble_parts

logger = logging.getLogger(__name__)

LEGACY_OPTIMIZER = "adam"  # the optimizer of checkpoints that do not name theirs
SIDES = ("src", "dst")

Readers = Mapping[str, FacesetReader]  # side -> the faces to train on (or score on)


class ConfigMismatchError(ValueError):
    """The init checkpoint was trained with another model config than the stage asks for."""


@dataclass
class StartPoint:
    """Where a stage that does not resume its own run starts: a new model or an earlier stage's checkpoint."""

    model: SwapAutoencoder
    optimizer_state: dict | None
    networks: dict[str, NetworkState]
    iteration: int
    history: list[str]


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's global and torch's RNGs (network initialisation uses torch's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_start(config: ModelConfig, options: StageOptions, init_checkpoint: Path | None,
               device: torch.device) -> StartPoint:
    """The model (new, or the init checkpoint's) and what of its training state carries over.

    The optimizer state carries over unless ``reset_inter`` or the checkpoint used another optimizer;
    the checkpoint's discriminators are offered to the stage (see ``assemble_parts``).

    Raises:
        ConfigMismatchError: The init checkpoint's config differs from ``config``.
        CheckpointError: The init checkpoint is missing or damaged.
    """
    if init_checkpoint is None:
        if options.reset_inter:
            logger.info("reset_inter has no effect on a new model: its inter is freshly initialised anyway")
        return StartPoint(build_model(config), None, {}, 0, [])
    checkpoint = load_checkpoint(init_checkpoint, device=str(device))
    if checkpoint.config != config:
        raise ConfigMismatchError(
            f"init checkpoint {init_checkpoint} was trained with {checkpoint.config}, but this stage asks for "
            f"{config}; make the stage's model params match the checkpoint or train without init_checkpoint")
    optimizer_state = checkpoint.optimizer_state
    saved_optimizer = checkpoint.state.get("optimizer", LEGACY_OPTIMIZER)
    if options.reset_inter:
        logger.info("re-initialising the inter layers of %s; the optimizers start fresh", init_checkpoint)
        checkpoint.model.reset_inter()
        optimizer_state = None
    elif optimizer_state is not None and saved_optimizer != options.optimizer:
        logger.info("%s was trained with %s, this stage uses %s: its optimizers start fresh", init_checkpoint,
                    saved_optimizer, options.optimizer)
        optimizer_state = None
    return StartPoint(checkpoint.model, optimizer_state, checkpoint.networks, int(checkpoint.state.get("iteration", 0)),
                      list(checkpoint.state.get("history", [])))


def start_run(readers: Readers, config: ModelConfig, options: StageOptions, stage_name: str,
              init_checkpoint: Path | None, work_dir: Path | None, runtime: Runtime) -> tuple[TrainingParts, RunProgress]:
    """Resume the newest sound work-dir checkpoint of this run's lineage, or start the stage afresh."""
    lineage = compute_lineage(stage_name, config, options, init_checkpoint, [readers[side].fingerprint() for side in SIDES])
    if work_dir is not None:
        if not runtime.group.is_main:
            wait_for_all(runtime.group)  # rank 0 tidies the work dir first
        resumed = resume_run(work_dir, lineage, options.iterations, runtime.device)
        if runtime.group.is_main:
            wait_for_all(runtime.group)
        if resumed is not None:
            checkpoint, run = resumed
            parts = assemble_parts(checkpoint.model, config, options, runtime, run.learning_rate,
                                   checkpoint.optimizer_state, checkpoint.networks, resuming=True)
            restore_rng(checkpoint.training_tensors)  # after building the networks, which draw from it
            return parts, run
    start = load_start(config, options, init_checkpoint, runtime.device)
    parts = assemble_parts(start.model, config, options, runtime, options.learning_rate, start.optimizer_state,
                           start.networks, resuming=False)
    run = RunProgress(lineage=lineage, start_iteration=start.iteration, stage_iteration=0,
                      learning_rate=options.learning_rate, history=start.history,
                      guard=CollapseGuard(options.collapse_factor))
    return parts, run
