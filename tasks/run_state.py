"""What lets a training stage survive a crash: its lineage, its progress and its work dir.

A stage's work dir (outside DVC's outputs) holds its most recent checkpoints:

    <work_dir>/iteration-000001500/   model, optimizer, discriminators, RNG state and the run's JSON state
    <work_dir>/iteration-000002000/   the newest; at most ``KEEP_CHECKPOINTS`` are kept

Each checkpoint is written into a hidden temporary directory beside them and renamed into place once
complete, so a directory named for an iteration is always whole; a kill mid-save leaves only a hidden
directory, removed on the next start. A checkpoint damaged on disk later fails its checksums on load:
resuming then warns, names the file and falls back to the one before it. The checkpoints are written
from the collapse guard's snapshots (see ``tasks.collapse``), so they only ever hold weights whose
next loss was healthy (the final one of a stage excepted).

The lineage is a hash of everything that decides a run's weights: the stage name, the model config,
every stage option except those that only say how long to train or how often to log and save
(``RESUMABLE_CHANGES``), the start checkpoint, the training faces (the readers' fingerprints) and the
training code. The runtime options (device, precision, loader workers) are not part of it. A work-dir
checkpoint is resumed only when its lineage equals the current one, so a changed setting never
resumes a stale run, while a run that only gained iterations continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import (
    MANIFEST_FILE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_manifest,
    save_checkpoint_state,
    sync_directory,
)
from model.config import ModelConfig
from tasks.collapse import CollapseGuard, Snapshot
from tasks.train_options import StageOptions

logger = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2
CHECKPOINT_NAME = re.compile(r"^iteration-(\d+)$")
TEMPORARY_PREFIX = ".incomplete-"
RESUMABLE_CHANGES = frozenset({"iterations", "preview_every", "save_every"})  # options that leave the weights as they are
# The code that decides a run's weights ("model" is a package: all its files).
TRAINING_CODE = ("model", "tasks.align", "tasks.augment", "tasks.collapse", "tasks.color", "tasks.eyes_mouth",
                 "tasks.faceset_reader", "tasks.loader", "tasks.masks", "tasks.run_state", "tasks.train",
                 "tasks.train_options", "tasks.train_step")


@dataclass
class RunProgress:
    """Where a stage's run stands: saved as the "run" entry of its work-dir checkpoints.

    Attributes:
        lineage: The run's lineage hash (see ``compute_lineage``).
        start_iteration: The model's iteration count when the stage began.
        stage_iteration: Iterations of this stage done.
        learning_rate: The current learning rate: the stage's, times ``BACKOFF`` per rollback.
        history: The stages the model went through before this one.
        guard: The collapse guard and its running average.
        smoothed: Exponential moving averages of the accepted losses, by name.
        collapse_events: One dict per rollback: "iteration", "reason", "loss" (None when not
            finite), "restored_iteration" and "learning_rate" (after the back-off).
        stage_seconds: Wall time of this stage's iterations so far (those lost to a crash excluded).
        loss_history: One row per preview point and at the end of the stage: "iteration" (the
            model's), the smoothed losses, "learning_rate" and the held-out scores (see
            ``flows.stages.write_loss_history``), kept so a resumed run keeps its earlier rows.
    """

    lineage: str
    start_iteration: int
    stage_iteration: int
    learning_rate: float
    history: list[str]
    guard: CollapseGuard
    smoothed: dict[str, float] = dataclasses.field(default_factory=dict)
    collapse_events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stage_seconds: float = 0.0
    loss_history: list[dict[str, float]] = dataclasses.field(default_factory=list)

    @property
    def iteration(self) -> int:
        """The model's iteration count."""
        return self.start_iteration + self.stage_iteration

    def to_state(self) -> dict[str, Any]:
        """A JSON-able copy (see ``from_state``)."""
        return dataclasses.asdict(self)  # deep: later changes to self do not reach it

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunProgress:
        """Rebuild the progress saved by ``to_state``."""
        return cls(**{**state, "guard": CollapseGuard.from_state(state["guard"])})


@functools.cache
def fingerprint_code() -> str:
    """sha256 over the source files of ``TRAINING_CODE`` (cached: the code does not change in a process)."""
    digest = hashlib.sha256()
    for name in TRAINING_CODE:
        path = Path(importlib.import_module(name).__file__)
        files = sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]
        for file in files:
            digest.update(f"{name}/{file.name}\n".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def compute_lineage(
    stage_name: str,
    config: ModelConfig,
    options: Any,
    init_checkpoint: Path | None,
    fingerprints: list[str],
) -> str:
    """Hash what decides a run's weights (see the module docstring).

    Args:
        stage_name: The stage's name.
        config: The model config.
        options: The stage's options dataclass.
        init_checkpoint: The checkpoint the stage starts from, or None for a new model.
        fingerprints: The training faces' fingerprints (``FacesetReader.fingerprint``), in side order.

    Returns:
        A hex sha256.

    Raises:
        CheckpointError: ``init_checkpoint`` has no readable checkpoint.json.
    """
    settings = {name: value for name, value in dataclasses.asdict(options).items() if name not in RESUMABLE_CHANGES}
    digest = hashlib.sha256(json.dumps({"stage": stage_name, "model": config.to_dict(), "options": settings,
                                        "code": fingerprint_code()}, sort_keys=True).encode())
    if init_checkpoint is not None:
        read_manifest(init_checkpoint)  # a missing or broken start checkpoint is named here
        digest.update((Path(init_checkpoint) / MANIFEST_FILE).read_bytes())  # it holds the weights' sha256
    for fingerprint in fingerprints:
        digest.update(fingerprint.encode())
    return digest.hexdigest()


def list_checkpoints(work_dir: Path) -> list[Path]:
    """The work dir's checkpoint directories, newest (highest iteration) first."""
    if not Path(work_dir).is_dir():
        return []
    found = [(int(match.group(1)), path) for path in Path(work_dir).iterdir()
             if path.is_dir() and (match := CHECKPOINT_NAME.match(path.name))]
    return [path for _, path in sorted(found, reverse=True)]


def checkpoint_iteration(directory: Path) -> int:
    """The model iteration a work-dir checkpoint directory is named for."""
    return int(CHECKPOINT_NAME.match(directory.name).group(1))


def read_lineage(directory: Path) -> str | None:
    """The lineage recorded in a work-dir checkpoint, or None when its checkpoint.json is unreadable."""
    try:
        return read_manifest(directory)["state"].get("run", {}).get("lineage")
    except CheckpointError:
        return None


def find_resume_checkpoint(work_dir: Path, lineage: str, iterations: int, device: str) -> tuple[Path, Checkpoint] | None:
    """Load the newest sound work-dir checkpoint of this lineage that is not past ``iterations``.

    A damaged checkpoint (unreadable, failing a checksum) is skipped with a warning naming the file;
    the one before it is tried next.

    Returns:
        The checkpoint's directory and the checkpoint, or None when none fits.
    """
    for directory in list_checkpoints(work_dir):
        try:
            run = read_manifest(directory)["state"].get("run", {})
            if run.get("lineage") != lineage:
                logger.info("not resuming from %s: it was trained with other settings, faces or code", directory)
                continue
            if run.get("stage_iteration", 0) > iterations:
                logger.info("not resuming from %s: it is past this stage's %d iterations", directory, iterations)
                continue
            return directory, load_checkpoint(directory, device=device)
        except CheckpointError as error:
            logger.warning("not resuming from the damaged checkpoint %s: %s; trying the one before it", directory, error)
    return None


def resume_run(work_dir: Path, lineage: str, iterations: int, device: torch.device) -> tuple[Checkpoint, RunProgress] | None:
    """Find the newest sound work-dir checkpoint of ``lineage`` to resume (see ``find_resume_checkpoint``).

    The work dir's other checkpoints that the run will not continue from (other lineages, newer than
    the one resumed, all of them when none is) are removed.

    Args:
        work_dir: The stage's work dir.
        lineage: The run's lineage.
        iterations: The stage's iterations; a checkpoint past them is not resumed.
        device: Where the weights go.

    Returns:
        The checkpoint (the caller builds the networks and optimizers from it, then restores its RNG
        state with ``tasks.collapse.restore_rng``) and the run's progress; None when no checkpoint
        fits and the stage starts from the beginning.
    """
    found = find_resume_checkpoint(work_dir, lineage, iterations, str(device))
    remove_leftovers(work_dir)
    for directory in list_checkpoints(work_dir):
        if found is None or checkpoint_iteration(directory) > checkpoint_iteration(found[0]) \
                or read_lineage(directory) != lineage:
            logger.info("removing %s: this run does not continue from it", directory)
            discard(directory)
    if found is None:
        return None
    directory, checkpoint = found
    progress = RunProgress.from_state(checkpoint.state["run"])
    logger.info("resuming from %s: %d of %d iterations done", directory, progress.stage_iteration, iterations)
    return checkpoint, progress


def discard(directory: Path) -> None:
    """Delete a directory, renaming it to a hidden name first so a kill never leaves half of a checkpoint."""
    hidden = directory.with_name(f"{TEMPORARY_PREFIX}{secrets.token_hex(4)}")
    os.rename(directory, hidden)
    shutil.rmtree(hidden)


def remove_leftovers(work_dir: Path) -> None:
    """Remove the hidden directories of saves and removals a kill interrupted."""
    if Path(work_dir).is_dir():
        for path in Path(work_dir).iterdir():
            if path.name.startswith(TEMPORARY_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


def save_to_work_dir(work_dir: Path, snapshot: Snapshot, config: ModelConfig, state: dict[str, Any]) -> Path:
    """Write ``snapshot`` as the work dir's newest checkpoint and drop the ones beyond ``KEEP_CHECKPOINTS``.

    Args:
        work_dir: The stage's work dir; created if missing.
        snapshot: What to save.
        config: The model config.
        state: The checkpoint's JSON state; must hold "iteration" (the model's iteration count).

    Returns:
        The checkpoint directory.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    temporary = work_dir / f"{TEMPORARY_PREFIX}{secrets.token_hex(4)}"
    save_checkpoint_state(temporary, snapshot.model_state, config, state, snapshot.optimizer_state, snapshot.rng_tensors,
                          snapshot.networks)
    directory = work_dir / f"iteration-{state['iteration']:09d}"
    if directory.exists():
        discard(directory)
    os.rename(temporary, directory)  # the commit point: before it the checkpoint does not exist, after it it is whole
    sync_directory(work_dir)
    for older in list_checkpoints(work_dir)[KEEP_CHECKPOINTS:]:
        discard(older)
    return directory


def checkpoint_state(run: dict, stage_name: str, options: StageOptions) -> dict:
    """The JSON state of a checkpoint of the run state ``run`` (see ``RunProgress.to_state``).

    Its "optimizer" names the optimizer whose state the checkpoint holds, so a later stage with
    another optimizer knows to start a fresh one.
    """
    history = list(run["history"])
    if not history or history[-1] != stage_name:  # a continued run of the same stage is not a new stage
        history.append(stage_name)
    return {"iteration": run["start_iteration"] + run["stage_iteration"], "stage": stage_name, "seed": options.seed,
            "optimizer": options.optimizer, "history": history, "collapse_events": run["collapse_events"]}


def save_snapshot(work_dir: Path, snapshot: Snapshot, config: ModelConfig, stage_name: str, options: StageOptions) -> None:
    """Save a snapshot as the work dir's newest checkpoint, with the run state a resumed run needs."""
    save_to_work_dir(work_dir, snapshot, config, {**checkpoint_state(snapshot.run, stage_name, options), "run": snapshot.run})
