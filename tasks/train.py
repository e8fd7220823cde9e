"""One training stage of the face-swap autoencoder.

A stage trains for a fixed number of iterations with fixed options (``tasks.train_options``),
optionally continuing from the checkpoint of an earlier stage, and writes a checkpoint, a preview
image, a preview history and TensorBoard logs. Each iteration draws a batch per side from the
faceset readers (``tasks.loader``: sampled, augmented, optionally in worker processes) and runs one
step (``tasks.train_step``): the SAEHD losses the options turn on, the autoencoder's update and
those of its discriminators.

Crash safety: iteration ``i`` of the model draws its batches from ``np.random.default_rng([seed, i])``,
a pure function of the seed and the iteration, whatever the number of loader workers. Every
``save_every`` iterations a copy of the model, discriminators, optimizers, RNG and run state is
taken; once the next iteration's loss shows it healthy it becomes the collapse guard's rollback
target and, with a work dir, is saved there (see ``tasks.run_state``). A stage killed at any moment
and started again resumes from the newest sound checkpoint of its lineage and ends with the weights
an uninterrupted run would have had, bit for bit on the same device and thread count.

Collapse guard (see ``tasks.collapse``): a non-finite loss, or one above ``collapse_factor`` times its
running average, rolls everything back to the last good copy, halves the learning rate and goes on
with the next iteration (the iterations since that copy are not replayed, so a poisoned batch is not
met again). Rollbacks are logged (warning, TensorBoard "collapse/rollbacks" and "collapse" text,
checkpoint state "collapse_events", metric "collapse_rollbacks").

Every ``preview_every`` iterations and at the end, the stage renders a preview grid, scores the
model on the held-out faces (``tasks.evaluate``) and adds a row to its loss history.

Data parallel (``tasks.distributed``): started by torchrun in several processes, each process takes
its shard of every batch, the losses the guard judges are averaged over the processes (so all of
them roll back together), and only rank 0 writes logs, previews, snapshots and the checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.tensorboard import SummaryWriter

from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from tasks.collapse import capture_snapshot, roll_back
from tasks.distributed import (
    ProcessGroup,
    average_across_processes,
    read_process_group,
    start_process_group,
    stop_process_group,
)
from tasks.evaluate import evaluate_reconstruction
from tasks.loader import Shard, batch_to_device, iterate_batches
from tasks.preview import PREVIEW_FACES, log_preview, log_scalars, save_preview_history, select_preview_faces
from tasks.run_state import RunProgress, checkpoint_state, save_snapshot
from tasks.train_options import Runtime, RuntimeOptions, StageOptions, TrainOptionsError, resolve_runtime
from tasks.train_start import Readers, seed_everything, start_run
from tasks.train_step import Batches, TrainingParts, train_step

logger = logging.getLogger(__name__)

SIDES = ("src", "dst")
LOG_EVERY = 10  # iterations between TensorBoard scalar logs
SMOOTHING = 0.9  # weight of the past in the exponential moving average of the losses
EMPTY_HINT = "add videos/photos with faces to data/raw/{side} or loosen the curate params"

BatchHook = Callable[[int, Batches], Batches]


class EmptyFacesetError(ValueError):
    """One side has no faces to train on."""

    def __init__(self, side: str, hint: str) -> None:
        self.side = side
        self.hint = hint
        super().__init__(f"no {side} faces to train on: {hint}")


@dataclass
class StageResult:
    """What a stage produced.

    Attributes:
        iterations: Total iterations of the model after this stage (resumed count + this stage's).
        metrics: Smoothed final losses per side and term ("src_total", "dst_dssim", ...), "total",
            "ms_per_iteration" (mean wall time of a training iteration in this stage, batch wait
            included), "collapse_rollbacks" and, with held-out faces, the final held-out scores
            ("src_ssim", ..., "score"; see ``tasks.evaluate``).
        preview_path: The final preview grid, a BGR PNG.
        loss_history: One row per preview point and the end, from the stage's first iteration on
            (see ``RunProgress.loss_history``).
    """

    iterations: int
    metrics: dict[str, float]
    preview_path: Path
    loss_history: list[dict[str, float]] = field(default_factory=list)


def check_readers(readers: Readers, resolution: int) -> None:
    """Raise EmptyFacesetError for a side with no faces, ValueError for a missing side or a reader at
    another resolution than the model's."""
    for side in SIDES:
        if side not in readers:
            raise ValueError(f"training needs a reader for each of {SIDES}, got {sorted(readers)}")
        if len(readers[side]) == 0:
            raise EmptyFacesetError(side, EMPTY_HINT.format(side=side))
        if readers[side].resolution != resolution:
            raise ValueError(f"the {side} reader serves {readers[side].resolution} px faces but the model's resolution "
                             f"is {resolution}; build the reader at the model resolution")


def process_shard(group: ProcessGroup, options: StageOptions, stage_name: str) -> Shard:
    """This process's share of every batch; TrainOptionsError when the batch does not split evenly."""
    shard = Shard(group.rank, group.world_size)
    try:
        shard.positions(options.batch_size)
    except ValueError:
        raise TrainOptionsError(f"train.stages.{stage_name}.batch_size {options.batch_size} does not split evenly across "
                                f"{group.world_size} training processes; make it a multiple of train.runtime.processes"
                                ) from None
    return shard


def read_all(readers: Readers | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """side -> every face and mask of the reader (the held-out faces are few)."""
    return {side: reader.read_many(range(len(reader))) for side, reader in (readers or {}).items() if len(reader)}


def move_batch(batch: Batches, runtime: Runtime) -> Batches:
    """uint8 loader batches -> float tensors on the training device, channels-last when asked."""
    tensors = batch_to_device(batch, runtime.device)
    if runtime.channels_last:
        tensors = {side: tuple(tensor.contiguous(memory_format=torch.channels_last) for tensor in arrays)
                   for side, arrays in tensors.items()}
    return tensors


def record_progress(parts: TrainingParts, run: RunProgress, writer: SummaryWriter, preview_faces: dict[str, np.ndarray],
                    held_out: dict[str, tuple[np.ndarray, np.ndarray]], preview_dir: Path) -> tuple[np.ndarray, dict]:
    """Preview grid (TensorBoard and history folder), held-out scores and a loss-history row for this iteration.

    Returns:
        The grid and the held-out scores (empty without held-out faces).
    """
    step = run.iteration
    grid = log_preview(writer, parts.model, preview_faces["src"], preview_faces["dst"], step)
    save_preview_history(preview_dir, grid, step)
    scores = evaluate_reconstruction(parts.model, held_out) if held_out else {}
    for name, value in scores.items():
        writer.add_scalar(f"holdout/{name}", value, step)
    if not run.loss_history or run.loss_history[-1]["iteration"] != step:
        row = {"iteration": step, **{name: value for name, value in run.smoothed.items() if math.isfinite(value)},
               "learning_rate": run.learning_rate, **{name: value for name, value in scores.items() if math.isfinite(value)}}
        run.loss_history.append(row)
    return grid, scores


def train_stage(
    readers: Readers,
    config: ModelConfig,
    options: StageOptions,
    stage_name: str,
    output_dir: Path,
    log_dir: Path,
    init_checkpoint: Path | None = None,
    progress: bool = True,
    work_dir: Path | None = None,
    batch_hook: BatchHook | None = None,
    holdout: Readers | None = None,
    runtime: RuntimeOptions = RuntimeOptions(),
) -> StageResult:
    """Train one stage and save its checkpoint, preview.png, preview history and TensorBoard logs.

    Args:
        readers: side -> the faces to train on, at the model resolution and face type
            (``tasks.faceset_reader``); a pretraining stage passes one generic faceset for both.
        config: The model's hyperparameters; must equal the init checkpoint's when one is given.
        options: This stage's options.
        stage_name: Recorded in the checkpoint's state and history.
        output_dir: Receives the checkpoint files (discriminators included) and preview.png.
        log_dir: Receives the TensorBoard event files and the preview history (previews/).
        init_checkpoint: A checkpoint directory to continue from (iteration count, weights,
            discriminators the stage uses and, unless ``options.reset_inter`` or another
            optimizer, optimizer states).
        progress: Show a rich progress bar.
        work_dir: Where the run keeps its periodic checkpoints (see ``tasks.run_state``); when it
            holds one of this run's lineage the stage resumes from it, so a crashed run, or one
            whose only change is more iterations, continues where it stopped. The final state is
            saved there too. None: no periodic checkpoints, always start from ``init_checkpoint``.
        batch_hook: Called as ``batch_hook(iteration, batches)`` before each step with the batches
            on the device; returns the batches to train on. For fault injection in tests.
        holdout: side -> faces the model never trains on, scored at each preview point; None for none.
        runtime: Device, precision, layout, compilation and loader workers.

    Returns:
        The total iteration count, the smoothed final metrics, the preview path and the loss history.

    Raises:
        EmptyFacesetError: A side has no faces.
        ValueError: A side is missing, or an option the readers cannot serve (e.g. uniform_yaw without yaw).
        TrainOptionsError: An option does not fit the model or the machine.
        ConfigMismatchError: ``config`` differs from the init checkpoint's.
        CheckpointError: The init checkpoint is missing or damaged.
        TrainingCollapseError: The loss kept collapsing after repeated rollbacks.
    """
    check_readers(readers, config.resolution)
    options.check_fits(config)
    group = read_process_group()
    resolved = resolve_runtime(runtime, group)
    shard = process_shard(group, options, stage_name)
    output_dir, log_dir = Path(output_dir), Path(log_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    joined = start_process_group(group, resolved.device)
    try:
        return run_stage(readers, config, options, stage_name, output_dir, log_dir, init_checkpoint,
                         progress and group.is_main, work_dir, batch_hook, holdout, resolved, shard)
    finally:
        if joined:
            stop_process_group()


def run_stage(readers: Readers, config: ModelConfig, options: StageOptions, stage_name: str, output_dir: Path,
              log_dir: Path, init_checkpoint: Path | None, progress: bool, work_dir: Path | None,
              batch_hook: BatchHook | None, holdout: Readers | None, resolved: Runtime, shard: Shard) -> StageResult:
    """``train_stage`` in this process, once the runtime and the process group are set up."""
    main = resolved.group.is_main
    seed_everything(options.seed)
    parts, run = start_run(readers, config, options, stage_name, init_checkpoint, work_dir, resolved)
    held_out = read_all(holdout) if main else {}
    preview_faces = {side: select_preview_faces(readers[side].read_many(range(min(PREVIEW_FACES, len(readers[side]))))[0],
                                                config.resolution) for side in SIDES}
    resumed_at = run.stage_iteration
    held_counts = [len(held_out[side][0]) if side in held_out else 0 for side in SIDES]
    logger.info("training stage %s: iterations %d to %d of the model, %d src / %d dst faces, %d / %d held out",
                stage_name, run.iteration + 1, run.start_iteration + options.iterations, len(readers["src"]),
                len(readers["dst"]), *held_counts)

    # good: what a collapse rolls back to; pending: the latest periodic copy, good once the next loss is healthy.
    good, pending = capture_snapshot(parts.model, parts.optimizer, run.to_state(), parts.networks), None
    window_seconds, window_iterations = 0.0, 0
    # Events a killed run logged past the resume point are superseded by the ones logged again.
    writer = SummaryWriter(log_dir=str(log_dir), purge_step=run.iteration + 1 if resumed_at else None) if main else None
    batches = iterate_batches(readers, options.batch_options(), options.seed, run.iteration + 1,
                              run.start_iteration + options.iterations + 1, resolved.workers, shard=shard)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    grid, scores = None, {}
    try:
        with Progress(*columns, disable=not progress) as bar, contextlib.closing(batches):
            task = bar.add_task(f"train {stage_name}", total=options.iterations, completed=resumed_at)
            for local_iteration in range(resumed_at + 1, options.iterations + 1):
                step = run.start_iteration + local_iteration
                started = time.perf_counter()
                _, batch = next(batches)  # the loader yields the steps in order, starting at this one
                batch = move_batch(batch, resolved)
                if batch_hook is not None:
                    batch = batch_hook(step, batch)
                # every process judges the same mean losses, so they all roll back together
                values = average_across_processes(train_step(parts, batch, options, resolved), resolved.group)
                elapsed = time.perf_counter() - started
                run.stage_iteration = local_iteration
                run.stage_seconds += elapsed
                window_seconds, window_iterations = window_seconds + elapsed, window_iterations + 1
                reason = run.guard.judge(values["total"])
                if reason is not None:
                    roll_back(parts.model, parts.optimizer, run, good, reason, values["total"], stage_name, writer,
                              parts.networks)
                    pending = None
                else:
                    run.guard.accept(values["total"])
                    run.smoothed = {name: SMOOTHING * run.smoothed.get(name, value) + (1 - SMOOTHING) * value
                                    for name, value in values.items()}  # the first value starts the average
                    if pending is not None:  # this loss shows the weights copied one step ago healthy
                        good, pending = pending, None
                        if work_dir is not None and main:
                            save_snapshot(work_dir, good, config, stage_name, options)
                if main and (local_iteration % LOG_EVERY == 0 or local_iteration == options.iterations):
                    log_scalars(writer, values, run.learning_rate, 1000 * window_seconds / window_iterations, step)
                    window_seconds, window_iterations = 0.0, 0
                if main and local_iteration % options.preview_every == 0 and local_iteration != options.iterations:
                    record_progress(parts, run, writer, preview_faces, held_out, log_dir / "previews")
                if reason is None and local_iteration % options.save_every == 0 and local_iteration < options.iterations:
                    pending = capture_snapshot(parts.model, parts.optimizer, run.to_state(), parts.networks)
                bar.update(task, advance=1,
                           description=f"train {stage_name} loss {run.smoothed.get('total', math.nan):.4f}")
        if main:
            grid, scores = record_progress(parts, run, writer, preview_faces, held_out, log_dir / "previews")
    finally:
        if writer is not None:
            writer.close()

    preview_path = output_dir / "preview.png"
    if main:
        write_stage_outputs(parts, run, grid, preview_path, config, stage_name, options,
                            work_dir if resumed_at < options.iterations else None)
    metrics = {**run.smoothed, **scores}
    metrics["ms_per_iteration"] = 1000 * run.stage_seconds / options.iterations
    metrics["collapse_rollbacks"] = len(run.collapse_events)
    logger.info("stage %s done at iteration %d: total loss %.4f, held-out score %s, %.1f ms/iteration, %d rollbacks",
                stage_name, run.iteration, metrics.get("total", math.nan), f"{scores['score']:.4f}" if scores else "-",
                metrics["ms_per_iteration"], len(run.collapse_events))
    return StageResult(iterations=run.iteration, metrics=metrics, preview_path=preview_path,
                       loss_history=list(run.loss_history))


def write_stage_outputs(parts: TrainingParts, run: RunProgress, grid: np.ndarray, preview_path: Path,
                        config: ModelConfig, stage_name: str, options: StageOptions, work_dir: Path | None) -> None:
    """The preview image, the stage's checkpoint and, with a work dir, the snapshot a run with more iterations goes on from."""
    if not cv2.imwrite(str(preview_path), grid):
        raise OSError(f"could not write the preview image {preview_path}; check that the directory is writable")
    final = run.to_state()
    save_checkpoint(preview_path.parent, parts.model, config, checkpoint_state(final, stage_name, options),
                    parts.optimizer, networks=parts.network_states())
    if work_dir is not None:
        save_snapshot(work_dir, capture_snapshot(parts.model, parts.optimizer, final, parts.networks), config,
                      stage_name, options)
