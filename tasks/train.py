"""One training stage of the face-swap autoencoder.

A stage trains for a fixed number of iterations with fixed options, optionally continuing from the
checkpoint of an earlier stage, and writes a checkpoint, a preview image and TensorBoard logs. Each
iteration samples a batch per side, augments it (random transform on input and target, random warp
on the input only), reconstructs each side through its own decoder and steps Adam on the sum of
both sides' losses.
"""

from __future__ import annotations

import logging
import random
import time
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
from tasks.preview import images_to_tensor, log_preview, log_scalars, select_preview_faces

logger = logging.getLogger(__name__)

SIDES = ("src", "dst")
LOG_EVERY = 10  # iterations between TensorBoard scalar logs
SMOOTHING = 0.9  # weight of the past in the exponential moving average of the losses
EMPTY_HINT = "add videos/photos with faces to data/raw/{side} or loosen the curate params"


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class StageOptions:
    """Options of one training stage (params.yaml train.stages.<name>).

    Attributes:
        iterations: Optimizer steps in this stage.
        batch_size: Faces per side per step.
        learning_rate: Adam learning rate (overrides the one in a resumed optimizer state).
        random_warp: Warp the network input so the model must learn faces, not copy pixels.
        random_flip: Allow horizontal flips in the random transform.
        masked_training: Compute the face loss only inside the (softened) face mask.
        seed: Seeds python, numpy and torch; with the resumed iteration it fixes the batches.
        preview_every: Iterations between TensorBoard preview grids.
        reset_inter: Re-initialise the inter layers (and start a fresh optimizer) when continuing
            from an init checkpoint; no effect on a new model.
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

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "preview_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train stage option {name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"train stage option learning_rate must be positive, got {self.learning_rate}")


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
            and "ms_per_iteration" (mean wall time of a training iteration in this stage).
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


def prepare_model(
    config: ModelConfig, options: StageOptions, init_checkpoint: Path | None, device: torch.device
) -> tuple[SwapAutoencoder, torch.optim.Optimizer, int, list[str]]:
    """Build or resume the model and its optimizer.

    Returns:
        The model (training mode, on ``device``), its Adam optimizer, the iteration count it starts
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
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:
            group["lr"] = options.learning_rate  # the stage's options win over the saved ones
    return model, optimizer, start_iteration, history


def train_stage(
    data: TrainingData,
    config: ModelConfig,
    options: StageOptions,
    stage_name: str,
    output_dir: Path,
    log_dir: Path,
    init_checkpoint: Path | None = None,
    progress: bool = True,
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

    Returns:
        The total iteration count, the smoothed final metrics and the preview path.

    Raises:
        EmptyFacesetError: A side has no faces.
        ValueError: Malformed face or mask arrays.
        ConfigMismatchError: ``config`` differs from the init checkpoint's.
        CheckpointError: The init checkpoint is missing or damaged.
    """
    check_training_data(data)
    output_dir, log_dir = Path(output_dir), Path(log_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seed_everything(options.seed)
    model, optimizer, start_iteration, history = prepare_model(config, options, init_checkpoint, device)
    # Mixing in the start iteration makes a resumed stage draw fresh batches, still reproducibly.
    rng = np.random.default_rng([options.seed, start_iteration])
    facesets = {side: resize_faceset(getattr(data, f"{side}_faces"), getattr(data, f"{side}_masks"),
                                     config.resolution) for side in SIDES}
    preview_faces = {side: select_preview_faces(facesets[side][0], config.resolution) for side in SIDES}
    logger.info("training stage %s on %s: %d iterations from iteration %d, %d src / %d dst faces", stage_name,
                device, options.iterations, start_iteration, len(data.src_faces), len(data.dst_faces))

    smoothed: dict[str, float] = {}
    stage_seconds = window_seconds = 0.0
    writer = SummaryWriter(log_dir=str(log_dir))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task(f"train {stage_name}", total=options.iterations)
            for local_iteration in range(1, options.iterations + 1):
                step = start_iteration + local_iteration
                started = time.perf_counter()
                batches = {side: sample_batch_tensors(*facesets[side], rng, options, device) for side in SIDES}
                values = train_step(model, optimizer, batches, masked=options.masked_training)
                elapsed = time.perf_counter() - started
                stage_seconds += elapsed
                window_seconds += elapsed
                smoothed = {name: SMOOTHING * smoothed.get(name, value) + (1 - SMOOTHING) * value
                            for name, value in values.items()}  # the first value starts the average
                if local_iteration % LOG_EVERY == 0 or local_iteration == options.iterations:
                    window = (local_iteration - 1) % LOG_EVERY + 1
                    log_scalars(writer, values, optimizer.param_groups[0]["lr"], 1000 * window_seconds / window, step)
                    window_seconds = 0.0
                if local_iteration % options.preview_every == 0 and local_iteration != options.iterations:
                    log_preview(writer, model, preview_faces["src"], preview_faces["dst"], step)
                bar.update(task, advance=1, description=f"train {stage_name} loss {smoothed['total']:.4f}")
        total_iterations = start_iteration + options.iterations
        grid = log_preview(writer, model, preview_faces["src"], preview_faces["dst"], total_iterations)
    finally:
        writer.close()

    preview_path = output_dir / "preview.png"
    if not cv2.imwrite(str(preview_path), grid):
        raise OSError(f"could not write the preview image {preview_path}; check that the directory is writable")
    if not history or history[-1] != stage_name:  # a continued run of the same stage is not a new stage
        history.append(stage_name)
    state = {"iteration": total_iterations, "stage": stage_name, "seed": options.seed, "history": history}
    save_checkpoint(output_dir, model, config, state, optimizer)
    metrics = dict(smoothed)
    metrics["ms_per_iteration"] = 1000 * stage_seconds / options.iterations
    logger.info("stage %s done at iteration %d: total loss %.4f, %.1f ms/iteration", stage_name,
                total_iterations, metrics["total"], metrics["ms_per_iteration"])
    return StageResult(iterations=total_iterations, metrics=metrics, preview_path=preview_path)
