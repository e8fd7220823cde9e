"""One training stage of the face-swap autoencoder.

A stage trains for a fixed number of iterations with fixed options, optionally continuing from the
checkpoint of an earlier stage, and writes a checkpoint, a preview image and TensorBoard logs. Each
iteration samples a batch per side, augments it (random transform on input and target, random warp
on the input only), reconstructs each side through its own decoder and steps Adam on the sum of
both sides' losses.

Crash safety: iteration ``i`` of the model draws its batches from ``np.random.default_rng([seed, i])``,
a pure function of the seed and the iteration (a data loader with workers can draw them the same way).
Every ``save_every`` iterations a copy of the model, optimizer, RNG and run state is taken; once the
next iteration's loss shows it healthy it becomes the collapse guard's rollback target and, with a
work dir, is saved there (see ``tasks.run_state``). A stage killed at any moment and started again
resumes from the newest sound checkpoint of its lineage and ends with the weights an uninterrupted
run would have had, bit for bit on the same device and thread count.

Collapse guard (see ``tasks.collapse``): a non-finite loss, or one above ``collapse_factor`` times its
running average, rolls the model and optimizer back to the last good copy, halves the learning rate
and goes on with the next iteration (the iterations since that copy are not replayed, so a poisoned
batch is not met again). Rollbacks are logged (warning, TensorBoard "collapse/rollbacks" and
"collapse" text, checkpoint state "collapse_events", metric "collapse_rollbacks").
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from pydantic import ConfigDict, with_config
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.tensorboard import SummaryWriter

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.losses import reconstruction_loss
from model.networks import SwapAutoencoder, build_model
from tasks.augment import resize_faceset, sample_batch
from tasks.collapse import CollapseGuard, capture_snapshot, roll_back, set_learning_rate
from tasks.preview import images_to_tensor, log_preview, log_scalars, select_preview_faces
from tasks.run_state import RunProgress, checkpoint_state, compute_lineage, resume_run, save_snapshot

logger = logging.getLogger(__name__)

SIDES = ("src", "dst")
LOG_EVERY = 10  # iterations between TensorBoard scalar logs
SMOOTHING = 0.9  # weight of the past in the exponential moving average of the losses
EMPTY_HINT = "add videos/photos with faces to data/raw/{side} or loosen the curate params"

Batches = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # side -> (inputs, targets, target masks)
BatchHook = Callable[[int, Batches], Batches]


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class StageOptions:
    """Options of one training stage (params.yaml train.stages.<name>).

    Attributes:
        iterations: Optimizer steps in this stage.
        batch_size: Faces per side per step.
        learning_rate: Adam learning rate (overrides the init checkpoint's; a run resumed from its
            work dir keeps its own, which collapse rollbacks may have lowered).
        random_warp: Warp the network input so the model must learn faces, not copy pixels.
        random_flip: Allow horizontal flips in the random transform.
        masked_training: Compute the face loss only inside the (softened) face mask.
        seed: Seeds python, numpy and torch; with the model's iteration count it fixes each batch.
        preview_every: Iterations between TensorBoard preview grids.
        reset_inter: Re-initialise the inter layers (and start a fresh optimizer) when continuing
            from an init checkpoint; no effect on a new model.
        save_every: Iterations between the copies the collapse guard rolls back to, which are also
            the periodic checkpoints of the work dir (a crash loses at most this many iterations).
        collapse_factor: A loss above this many times its running average is a collapse, rolled
            back (after a 20-iteration warm-up); 0 turns the spike test off. A non-finite loss is
            always rolled back.
    """

    iterations: int = 1000
    batch_size: int = 8
    learning_rate: float = 5e-5
    random_warp: bool = True
    random_flip: bool = True
    masked_training: bool = True
    seed: int = 0
    preview_every: int = 100
    reset_inter: bool = False
    save_every: int = 500
    collapse_factor: float = 4.0

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "preview_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train stage option {name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"train stage option learning_rate must be positive, got {self.learning_rate}")
        if self.seed < 0:
            raise ValueError(f"train stage option seed must be 0 or more, got {self.seed}")
        if not (self.collapse_factor == 0 or self.collapse_factor > 1):
            raise ValueError(f"train stage option collapse_factor must be 0 (off) or above 1, got {self.collapse_factor}")


@dataclass
class TrainingData:
    """Aligned face crops and their masks for both sides (S may differ from the model resolution).

    Attributes:
        src_faces: (N, S, S, 3) uint8 BGR.
        src_masks: (N, S, S) uint8 0..255.
        dst_faces: (M, S', S', 3) uint8 BGR.
        dst_masks: (M, S', S') uint8 0..255.
    """

    src_faces: np.ndarray
    src_masks: np.ndarray
    dst_faces: np.ndarray
    dst_masks: np.ndarray


class EmptyFacesetError(ValueError):
    """One side has no faces to train on."""

    def __init__(self, side: str, hint: str) -> None:
        self.side = side
        self.hint = hint
        super().__init__(f"no {side} faces to train on: {hint}")


class ConfigMismatchError(ValueError):
    """The init checkpoint was trained with another model config than the stage asks for."""


@dataclass
class StageResult:
    """What a stage produced.

    Attributes:
        iterations: Total iterations of the model after this stage (resumed count + this stage's).
        metrics: Smoothed final losses per side and term ("src_total", "dst_dssim", ...), "total",
            "ms_per_iteration" (mean wall time of a training iteration in this stage) and
            "collapse_rollbacks" (how many times the collapse guard rolled back).
        preview_path: The final preview grid, a BGR PNG.
    """

    iterations: int
    metrics: dict[str, float]
    preview_path: Path


def check_training_data(data: TrainingData) -> None:
    """Raise EmptyFacesetError for a side with no faces, ValueError for malformed arrays."""
    for side in SIDES:
        faces, masks = getattr(data, f"{side}_faces"), getattr(data, f"{side}_masks")
        if len(faces) == 0:
            raise EmptyFacesetError(side, EMPTY_HINT.format(side=side))
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[3] != 3:
            raise ValueError(f"{side}_faces must be (N, S, S, 3) uint8 BGR, got {faces.shape} {faces.dtype}")
        if masks.dtype != np.uint8 or masks.shape != faces.shape[:3]:
            raise ValueError(f"{side}_masks must be {faces.shape[:3]} uint8 to match the faces, "
                             f"got {masks.shape} {masks.dtype}")


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's global and torch's RNGs (model initialisation uses torch's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sample_batch_tensors(
    faces: np.ndarray, masks: np.ndarray, rng: np.random.Generator, options: StageOptions, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample and augment one side's batch (see ``sample_batch``) as model tensors on ``device``.

    Returns:
        inputs (B, 3, R, R), targets (B, 3, R, R) and target masks (B, 1, R, R), float32 in [0, 1].
    """
    inputs, targets, target_masks = sample_batch(faces, masks, rng, options.batch_size, options.random_flip,
                                                 options.random_warp)
    return (images_to_tensor(inputs, device), images_to_tensor(targets, device),
            images_to_tensor(target_masks, device))


def train_step(
    model: SwapAutoencoder,
    optimizer: torch.optim.Optimizer,
    batches: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    masked: bool,
) -> dict[str, float]:
    """Run one optimizer step on both sides.

    Args:
        model: The autoencoder, in training mode.
        optimizer: Optimizes all of ``model``'s parameters.
        batches: side -> (inputs (B, 3, R, R), targets (B, 3, R, R), target masks (B, 1, R, R)) in [0, 1].
        masked: Masked training (see ``reconstruction_loss``).

    Returns:
        The losses before the step: "<side>_<term>" for each side and term, and "total".
    """
    optimizer.zero_grad(set_to_none=True)
    values: dict[str, float] = {}
    total = torch.zeros((), device=next(model.parameters()).device)
    for side, (inputs, targets, target_masks) in batches.items():
        face, mask = model(inputs, side)
        losses = reconstruction_loss(face, targets, mask, target_masks, masked=masked)
        total = total + losses["total"]
        values.update({f"{side}_{name}": float(loss.detach()) for name, loss in losses.items()})
    total.backward()
    optimizer.step()
    values["total"] = float(total.detach())
    return values


def sample_batches(facesets: dict[str, tuple[np.ndarray, np.ndarray]], options: StageOptions, iteration: int,
                   device: torch.device) -> Batches:
    """Both sides' batches (see ``sample_batch_tensors``) for the model's iteration ``iteration`` (1 for its
    first step), a pure function of (seed, iteration); ``facesets`` maps side -> (faces, masks) at the model
    resolution."""
    rng = np.random.default_rng([options.seed, iteration])
    return {side: sample_batch_tensors(*facesets[side], rng, options, device) for side in SIDES}


def build_optimizer(model: SwapAutoencoder, options: StageOptions) -> torch.optim.Optimizer:
    """The stage's optimizer over all of ``model``'s parameters."""
    return torch.optim.Adam(model.parameters(), lr=options.learning_rate)


def prepare_model(
    config: ModelConfig, options: StageOptions, init_checkpoint: Path | None, device: torch.device
) -> tuple[SwapAutoencoder, torch.optim.Optimizer, int, list[str]]:
    """Build the model and its optimizer, new or from the checkpoint of an earlier stage.

    Returns:
        The model (training mode, on ``device``), its optimizer, the iteration count it starts
        from and the names of the stages it already went through.

    Raises:
        ConfigMismatchError: The init checkpoint's config differs from ``config``.
        CheckpointError: The init checkpoint is missing or damaged.
    """
    optimizer_state = None
    if init_checkpoint is None:
        model, start_iteration, history = build_model(config), 0, []
        if options.reset_inter:
            logger.info("reset_inter has no effect on a new model: its inter is freshly initialised anyway")
    else:
        checkpoint = load_checkpoint(init_checkpoint, device=str(device))
        if checkpoint.config != config:
            raise ConfigMismatchError(
                f"init checkpoint {init_checkpoint} was trained with {checkpoint.config}, but this stage asks for "
                f"{config}; make the stage's model params match the checkpoint or train without init_checkpoint")
        model = checkpoint.model
        start_iteration = int(checkpoint.state.get("iteration", 0))
        history = list(checkpoint.state.get("history", []))
        if options.reset_inter:
            logger.info("re-initialising the inter layers of %s; the optimizer starts fresh", init_checkpoint)
            model.reset_inter()
        else:
            optimizer_state = checkpoint.optimizer_state
    model = model.to(device).train()
    optimizer = build_optimizer(model, options)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        set_learning_rate(optimizer, options.learning_rate)  # the stage's options win over the saved ones
    return model, optimizer, start_iteration, history


def start_run(
    data: TrainingData,
    config: ModelConfig,
    options: StageOptions,
    stage_name: str,
    init_checkpoint: Path | None,
    work_dir: Path | None,
    device: torch.device,
) -> tuple[SwapAutoencoder, torch.optim.Optimizer, RunProgress]:
    """Resume the newest sound work-dir checkpoint of this run's lineage, or start the stage afresh."""
    arrays = [data.src_faces, data.src_masks, data.dst_faces, data.dst_masks]
    lineage = compute_lineage(stage_name, config, options, init_checkpoint, arrays)
    if work_dir is not None:
        resumed = resume_run(work_dir, lineage, options.iterations, device, lambda model: build_optimizer(model, options))
        if resumed is not None:
            return resumed
    model, optimizer, start_iteration, history = prepare_model(config, options, init_checkpoint, device)
    progress = RunProgress(lineage=lineage, start_iteration=start_iteration, stage_iteration=0,
                           learning_rate=options.learning_rate, history=history,
                           guard=CollapseGuard(options.collapse_factor))
    return model, optimizer, progress


def train_stage(
    data: TrainingData,
    config: ModelConfig,
    options: StageOptions,
    stage_name: str,
    output_dir: Path,
    log_dir: Path,
    init_checkpoint: Path | None = None,
    progress: bool = True,
    work_dir: Path | None = None,
    batch_hook: BatchHook | None = None,
) -> StageResult:
    """Train one stage and save its checkpoint, preview.png and TensorBoard logs.

    Args:
        data: Faces and masks of both sides.
        config: The model's hyperparameters; must equal the init checkpoint's when one is given.
        options: This stage's options.
        stage_name: Recorded in the checkpoint's state and history.
        output_dir: Receives the checkpoint files and preview.png.
        log_dir: Receives the TensorBoard event files.
        init_checkpoint: A checkpoint directory to continue from (iteration count, weights and,
            unless ``options.reset_inter``, optimizer state).
        progress: Show a rich progress bar.
        work_dir: Where the run keeps its periodic checkpoints (see ``tasks.run_state``); when it
            holds one of this run's lineage the stage resumes from it, so a crashed run, or one
            whose only change is more iterations, continues where it stopped. The final state is
            saved there too. None: no periodic checkpoints, always start from ``init_checkpoint``.
        batch_hook: Called as ``batch_hook(iteration, batches)`` before each step; returns the
            batches to train on. For fault injection in tests and for inspecting the batches.

    Returns:
        The total iteration count, the smoothed final metrics and the preview path.

    Raises:
        EmptyFacesetError: A side has no faces.
        ValueError: Malformed face or mask arrays.
        ConfigMismatchError: ``config`` differs from the init checkpoint's.
        CheckpointError: The init checkpoint is missing or damaged.
        TrainingCollapseError: The loss kept collapsing after repeated rollbacks.
    """
    check_training_data(data)
    output_dir, log_dir = Path(output_dir), Path(log_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seed_everything(options.seed)
    model, optimizer, run = start_run(data, config, options, stage_name, init_checkpoint, work_dir, device)
    facesets = {side: resize_faceset(getattr(data, f"{side}_faces"), getattr(data, f"{side}_masks"),
                                     config.resolution) for side in SIDES}
    preview_faces = {side: select_preview_faces(facesets[side][0], config.resolution) for side in SIDES}
    resumed_at = run.stage_iteration
    logger.info("training stage %s on %s: iterations %d to %d of the model, %d src / %d dst faces", stage_name, device,
                run.iteration + 1, run.start_iteration + options.iterations, len(data.src_faces), len(data.dst_faces))

    # good: what a collapse rolls back to; pending: the latest periodic copy, good once the next loss is healthy.
    good, pending = capture_snapshot(model, optimizer, run.to_state()), None
    window_seconds, window_iterations = 0.0, 0
    # Events a killed run logged past the resume point are superseded by the ones logged again.
    writer = SummaryWriter(log_dir=str(log_dir), purge_step=run.iteration + 1 if resumed_at else None)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task(f"train {stage_name}", total=options.iterations, completed=resumed_at)
            for local_iteration in range(resumed_at + 1, options.iterations + 1):
                step = run.start_iteration + local_iteration
                started = time.perf_counter()
                batches = sample_batches(facesets, options, step, device)
                if batch_hook is not None:
                    batches = batch_hook(step, batches)
                values = train_step(model, optimizer, batches, masked=options.masked_training)
                elapsed = time.perf_counter() - started
                run.stage_iteration = local_iteration
                run.stage_seconds += elapsed
                window_seconds, window_iterations = window_seconds + elapsed, window_iterations + 1
                reason = run.guard.judge(values["total"])
                if reason is not None:
                    roll_back(model, optimizer, run, good, reason, values["total"], stage_name, writer)
                    pending = None
                else:
                    run.guard.accept(values["total"])
                    run.smoothed = {name: SMOOTHING * run.smoothed.get(name, value) + (1 - SMOOTHING) * value
                                    for name, value in values.items()}  # the first value starts the average
                    if pending is not None:  # this loss shows the weights copied one step ago healthy
                        good, pending = pending, None
                        if work_dir is not None:
                            save_snapshot(work_dir, good, config, stage_name, options.seed)
                    if local_iteration % options.save_every == 0 and local_iteration < options.iterations:
                        pending = capture_snapshot(model, optimizer, run.to_state())
                if local_iteration % LOG_EVERY == 0 or local_iteration == options.iterations:
                    log_scalars(writer, values, run.learning_rate, 1000 * window_seconds / window_iterations, step)
                    window_seconds, window_iterations = 0.0, 0
                if local_iteration % options.preview_every == 0 and local_iteration != options.iterations:
                    log_preview(writer, model, preview_faces["src"], preview_faces["dst"], step)
                bar.update(task, advance=1,
                           description=f"train {stage_name} loss {run.smoothed.get('total', math.nan):.4f}")
        grid = log_preview(writer, model, preview_faces["src"], preview_faces["dst"], run.iteration)
    finally:
        writer.close()

    preview_path = output_dir / "preview.png"
    if not cv2.imwrite(str(preview_path), grid):
        raise OSError(f"could not write the preview image {preview_path}; check that the directory is writable")
    final = run.to_state()
    save_checkpoint(output_dir, model, config, checkpoint_state(final, stage_name, options.seed), optimizer)
    if work_dir is not None and resumed_at < options.iterations:  # where a run with more iterations goes on
        save_snapshot(work_dir, capture_snapshot(model, optimizer, final), config, stage_name, options.seed)
    metrics = dict(run.smoothed)
    metrics["ms_per_iteration"] = 1000 * run.stage_seconds / options.iterations
    metrics["collapse_rollbacks"] = len(run.collapse_events)
    logger.info("stage %s done at iteration %d: total loss %.4f, %.1f ms/iteration, %d rollbacks", stage_name,
                run.iteration, metrics.get("total", math.nan), metrics["ms_per_iteration"], len(run.collapse_events))
    return StageResult(iterations=run.iteration, metrics=metrics, preview_path=preview_path)
