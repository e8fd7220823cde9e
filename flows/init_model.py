"""init: the model the first training stage starts from -> checkpoints/init.

By default a seeded, untrained model. With ``train.init_from`` the weights of an already trained
model instead (another project's checkpoint directory, or a stage's checkpoint at a git revision of
this or another project, fetched from the DVC cache): DeepFaceLab users' "reuse my trained model"
workflow, versioned. The iteration count and stage history carry over; the optimizer starts fresh,
since its moments belong to the old faceset. Add ``reset_inter: true`` to the first stage to keep
the encoder and decoders but retrain the inter layers for the new face pair.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from prefect import flow, get_run_logger

from flows.params import InitFrom, ParamsError, load_params
from flows.stages import checkpoint_dir
from model.checkpoint import MANIFEST_FILE, CheckpointError, load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.networks import build_model

INIT_SEED = 0


class InitFromError(ValueError):
    """train.init_from points at a model that cannot be used; the message says why and what to do."""


def fetch_revision_checkpoint(root: Path, source: InitFrom, into: Path) -> Path:
    """Copy ``checkpoints/<stage>`` at ``source.revision`` of ``source.repo`` out of the DVC cache."""
    repo = (root / source.repo).resolve()
    target = into / "checkpoint"
    command = [sys.executable, "-m", "dvc", "get", str(repo), f"checkpoints/{source.stage}", "--rev", str(source.revision),
               "-o", str(target)]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise InitFromError(
            f"train.init_from: cannot fetch checkpoints/{source.stage} at revision {source.revision} of {repo} "
            f"({message[-1] if message else 'dvc get failed'}). Check the revision and stage with `faceflow history` there, "
            "and that its DVC cache (or remote: `dvc pull`) holds that checkpoint")
    return target


def load_init_source(root: Path, source: InitFrom, config: ModelConfig, scratch: Path):
    """The checkpoint ``source`` names, checked against the model params; returns (checkpoint, description)."""
    if source.path is not None:
        directory = (root / source.path).resolve()
        description = {"path": source.path}
    else:
        directory = fetch_revision_checkpoint(root, source, scratch)
        description = {"repo": source.repo, "revision": source.revision, "stage": source.stage}
    try:
        checkpoint = load_checkpoint(directory)
    except CheckpointError as error:
        raise InitFromError(f"train.init_from: {error}") from None
    if checkpoint.config != config:
        raise InitFromError(
            f"train.init_from: {directory} holds a model built as {checkpoint.config.to_dict()}, but train.model asks for "
            f"{config.to_dict()}. Set train.model to the checkpoint's values to reuse it, or remove init_from")
    description["checkpoint_sha256"] = hashlib.sha256((directory / MANIFEST_FILE).read_bytes()).hexdigest()
    return checkpoint, description


@flow(name="init-model", log_prints=True)
def init_flow(root: Path | None = None) -> dict:
    """Write the model the first training stage starts from: fresh and seeded, or reused from train.init_from."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    train = load_params(root / "params.yaml").train
    config, output = train.model, root / checkpoint_dir("init")
    if train.init_from is None:
        torch.manual_seed(INIT_SEED)
        model = build_model(config)
        save_checkpoint(output, model, config, {"iteration": 0, "stage": "init", "seed": INIT_SEED, "history": []})
        logger.info("wrote %s: new %s model at %d px", output, config.archi, config.resolution)
        return {"checkpoint": str(output), "iteration": 0}
    with tempfile.TemporaryDirectory(prefix="faceflow-init-") as scratch:
        try:
            checkpoint, source = load_init_source(root, train.init_from, config, Path(scratch))
        except InitFromError as error:
            raise ParamsError(str(error)) from None
        iteration = int(checkpoint.state.get("iteration", 0))
        state = {"iteration": iteration, "stage": "init", "history": list(checkpoint.state.get("history", [])),
                 "init_from": source}
        save_checkpoint(output, checkpoint.model, config, state)
    logger.info("wrote %s: the %s model from %s, at iteration %d", output, config.archi, source, iteration)
    return {"checkpoint": str(output), "iteration": iteration}
