"""Checkpoints as safetensors + JSON: no pickles, checksummed, written atomically.

A checkpoint directory holds:
    model.safetensors      the model's state_dict
    optimizer.safetensors  the optimizer's per-parameter tensors, as "state.<index>.<name>" (optional)
    training.safetensors   other tensors a resumed run needs, e.g. the torch RNG state (optional)
    <name>.safetensors     the state_dict of a network trained beside the model, e.g. a GAN
                           discriminator (optional, one per network)
    <name>.optimizer.safetensors   that network's optimizer tensors (optional)
    checkpoint.json        format version, model config, training state, optimizer param groups and
                           non-tensor per-parameter values (the model's and each network's), and the
                           sha256 and size of each safetensors file

Every file is written to a temporary name in the same directory, fsynced and renamed over the old one;
checkpoint.json goes last, so a checkpoint interrupted while saving fails its checksum on load instead
of silently mixing old and new weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from model.config import ModelConfig
from model.networks import SwapAutoencoder, build_model

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINING_FILE = "training.safetensors"
MANIFEST_FILE = "checkpoint.json"
NETWORK_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED_NETWORK_NAMES = frozenset({"model", "optimizer", "training"})  # the names of the fixed files


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt or incompatible; the message names the file and the remedy."""


@dataclass
class NetworkState:
    """A network trained beside the model (e.g. a discriminator), as saved in a checkpoint.

    Attributes:
        weights: Its state_dict.
        optimizer_state: Its optimizer's ``state_dict()``, or None when it has none.
    """

    weights: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None = None


def network_files(name: str) -> tuple[str, str]:
    """The weights file and the optimizer file of the network ``name``."""
    return f"{name}.safetensors", f"{name}.optimizer.safetensors"


def check_network_name(name: str) -> None:
    """Raise CheckpointError unless ``name`` can name a network's files."""
    if not NETWORK_NAME.match(name) or name in RESERVED_NETWORK_NAMES:
        raise CheckpointError(f"network name {name!r} must be lowercase letters, digits and _ (starting with a "
                              f"letter) and not one of {sorted(RESERVED_NETWORK_NAMES)}")


@dataclass
class Checkpoint:
    """Everything a checkpoint directory holds, rebuilt.

    Attributes:
        model: The model, rebuilt from ``config`` and loaded with the saved weights (eval mode).
        config: The model's hyperparameters as saved.
        state: The training state, e.g. {"iteration": int, "stage": str, ...}.
        optimizer_state: An ``optimizer.state_dict()``-shaped dict, or None when none was saved.
        training_tensors: Name -> CPU tensor saved beside the training state (empty when none was saved).
        networks: Name -> the networks trained beside the model (empty when none was saved); their
            weights on the load device, their optimizer tensors on the CPU.
    """

    model: SwapAutoencoder
    config: ModelConfig
    state: dict[str, Any]
    optimizer_state: dict[str, Any] | None
    training_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    networks: dict[str, NetworkState] = field(default_factory=dict)


def write_atomically(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a temp file beside ``path``, fsync it, then rename it over ``path``."""
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # os.open with mode 0o666 lets the umask decide the permissions, as for any other file written.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def sync_directory(directory: Path) -> None:
    """fsync a directory so the renames in it survive a power cut (a no-op where unsupported)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an ``optimizer.state_dict()`` into safetensors tensors and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        scalars[str(index)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[str(index)][name] = value
    param_groups = []
    for group in state_dict["param_groups"]:
        param_groups.append({
            key: (float(value) if isinstance(value, torch.Tensor) else value) for key, value in group.items()
        })
    return tensors, {"param_groups": param_groups, "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an ``optimizer.state_dict()`` from its safetensors tensors and JSON remainder."""
    state: dict[int, dict[str, Any]] = {int(index): dict(values) for index, values in saved["scalars"].items()}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    param_groups = []
    for group in saved["param_groups"]:
        # JSON has no tuples; optimizers declare e.g. betas as tuples, "params" stays a list.
        param_groups.append({
            key: (tuple(value) if isinstance(value, list) and key != "params" else value)
            for key, value in group.items()
        })
    return {"state": state, "param_groups": param_groups}


def save_checkpoint(
    directory: Path,
    model: SwapAutoencoder,
    config: ModelConfig,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    training_tensors: dict[str, torch.Tensor] | None = None,
    networks: Mapping[str, NetworkState] | None = None,
) -> Path:
    """Save a model (and optionally its optimizer) as a checkpoint directory.

    Args:
        directory: Where to write; created if missing. Existing checkpoint files are replaced.
        model: The model whose state_dict is saved.
        config: The model's hyperparameters, saved so the checkpoint rebuilds its own model.
        state: JSON-able training state, e.g. {"iteration": 1000, "stage": "warmup"}.
        optimizer: Saved too when given, so training can resume with its moments.
        training_tensors: Other tensors a resumed run needs (e.g. the torch RNG state), saved when given.
        networks: Name -> networks trained beside the model (see ``NetworkState``), saved when given;
            a name is lowercase letters, digits and _.

    Returns:
        The path of checkpoint.json.

    Raises:
        CheckpointError: ``state`` or an optimizer's settings are not JSON-able, or a network name is invalid.
    """
    optimizer_state = optimizer.state_dict() if optimizer is not None else None
    return save_checkpoint_state(directory, model.state_dict(), config, state, optimizer_state, training_tensors,
                                 networks)


def save_checkpoint_state(
    directory: Path,
    model_state: dict[str, torch.Tensor],
    config: ModelConfig,
    state: dict[str, Any],
    optimizer_state: dict[str, Any] | None = None,
    training_tensors: dict[str, torch.Tensor] | None = None,
    networks: Mapping[str, NetworkState] | None = None,
) -> Path:
    """Save state dicts as a checkpoint directory (``save_checkpoint`` for copies taken earlier).

    Args:
        directory: Where to write; created if missing. Existing checkpoint files are replaced, and
            safetensors files of an earlier save that this one does not write are removed.
        model_state: A ``model.state_dict()`` of the model ``config`` describes.
        config: The model's hyperparameters.
        state: JSON-able training state.
        optimizer_state: An ``optimizer.state_dict()``, saved when given.
        training_tensors: Other tensors a resumed run needs, saved when given.
        networks: Name -> networks trained beside the model, saved when given.

    Returns:
        The path of checkpoint.json.

    Raises:
        CheckpointError: ``state`` or an optimizer's settings are not JSON-able, or a network name is invalid.
    """
    directory = Path(directory)
    manifest: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": config.to_dict(), "state": state,
                                "files": {}}
    tensor_files = {MODEL_FILE: detach_tensors(model_state)}
    if optimizer_state is not None:
        optimizer_tensors, manifest["optimizer"] = split_optimizer_state(optimizer_state)
        tensor_files[OPTIMIZER_FILE] = optimizer_tensors
    if training_tensors is not None:
        tensor_files[TRAINING_FILE] = detach_tensors(training_tensors)
    if networks:
        manifest["networks"] = {}
        for name, network in networks.items():
            check_network_name(name)
            weights_file, optimizer_file = network_files(name)
            tensor_files[weights_file] = detach_tensors(network.weights)
            optimizer_settings = None
            if network.optimizer_state is not None:
                tensor_files[optimizer_file], optimizer_settings = split_optimizer_state(network.optimizer_state)
            manifest["networks"][name] = {"optimizer": optimizer_settings}
    try:
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()  # fail before writing anything
    except TypeError as error:
        raise CheckpointError(f"cannot save checkpoint in {directory}: state is not JSON-able ({error}); "
                              "pass only numbers, strings, lists and dicts") from error
    directory.mkdir(parents=True, exist_ok=True)
    for name, tensors in tensor_files.items():
        payload = save_safetensors(tensors, metadata={"format_version": str(FORMAT_VERSION)})
        write_atomically(directory / name, payload)
        manifest["files"][name] = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    for stale in directory.glob("*.safetensors"):
        if stale.name not in tensor_files:
            # A file from an earlier save (e.g. a discriminator this stage no longer trains) must not
            # be mistaken for this checkpoint's.
            stale.unlink()
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    manifest_path = directory / MANIFEST_FILE
    write_atomically(manifest_path, manifest_bytes)
    sync_directory(directory)
    logger.info("saved checkpoint %s (iteration %s)", directory, state.get("iteration"))
    return manifest_path


def detach_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of ``tensors`` that safetensors can write."""
    return {name: value.detach().contiguous().cpu() for name, value in tensors.items()}


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and sanity-check checkpoint.json, raising CheckpointError naming it on any problem."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {directory} is not a checkpoint directory; "
                              "point to a directory written by training, or train the stage first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the checkpoint is corrupt: "
                              "delete it and re-run training") from error
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version!r}, this faceflow reads {FORMAT_VERSION}; "
                              "use the faceflow version that wrote it or retrain")
    for key in ("config", "state", "files"):
        if key not in manifest:
            raise CheckpointError(f"{path} lacks the {key!r} entry; the checkpoint is corrupt: re-run training")
    return manifest


def read_checkpoint_config(directory: Path) -> ModelConfig:
    """Read only the model config of a checkpoint (no weights are loaded).

    Raises:
        CheckpointError: checkpoint.json is missing, corrupt or holds an invalid config.
    """
    manifest = read_manifest(directory)
    try:
        return ModelConfig.from_dict(manifest["config"])
    except ValueError as error:
        raise CheckpointError(f"{Path(directory) / MANIFEST_FILE}: invalid model config ({error}); "
                              "the checkpoint was written by another faceflow version or edited") from error


def load_network_weights(directory: Path, files: dict, network: torch.nn.Module, device: str, remedy: str) -> torch.nn.Module:
    """Load a checkpoint's verified MODEL_FILE into ``network`` (built from its config), in eval mode.

    Raises:
        CheckpointError: the file fails its checksum or does not fit the network (the message ends with ``remedy``).
    """
    weights = read_verified_tensors(directory, MODEL_FILE, files[MODEL_FILE], str(device))
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{directory / MODEL_FILE} does not match the network its {MANIFEST_FILE} describes "
                              f"({error}); {remedy}") from error
    return network.eval()


def read_verified_tensors(directory: Path, name: str, expected: dict[str, Any], device: str) -> dict[str, torch.Tensor]:
    """Read one safetensors file, check its size and sha256 against the manifest, and load it."""
    path = Path(directory) / name
    remedy = "the checkpoint is damaged: restore it from a backup or re-run the training stage"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {remedy}")
    payload = path.read_bytes()
    if len(payload) != expected.get("bytes"):
        raise CheckpointError(f"{path} has {len(payload)} bytes, checkpoint.json expects {expected.get('bytes')} "
                              f"(truncated or overwritten); {remedy}")
    if hashlib.sha256(payload).hexdigest() != expected.get("sha256"):
        raise CheckpointError(f"{path} fails its sha256 check; {remedy}")
    try:
        tensors = load_safetensors(payload)
    except Exception as error:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}); {remedy}") from error
    return {key: tensor.to(device) for key, tensor in tensors.items()}


def load_checkpoint(directory: Path, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint directory, rebuilding the model from the config saved in it.

    Args:
        directory: A directory written by ``save_checkpoint``.
        device: Where to put the model and optimizer tensors, e.g. "cpu" or "cuda".

    Returns:
        The checkpoint with the model in eval mode on ``device``.

    Raises:
        CheckpointError: A file is missing, truncated, fails its checksum, or does not fit the model.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    config = read_checkpoint_config(directory)
    files = manifest["files"]
    if MODEL_FILE not in files:
        raise CheckpointError(f"{directory / MANIFEST_FILE} lists no {MODEL_FILE}; re-run training")
    model = load_network_weights(directory, files, build_model(config).to(device), device, "re-run training")
    optimizer_state = None
    if "optimizer" in manifest:
        if OPTIMIZER_FILE not in files:
            raise CheckpointError(f"{directory / MANIFEST_FILE} has optimizer settings but lists no "
                                  f"{OPTIMIZER_FILE}; re-run training")
        # Kept on the CPU: optimizer.load_state_dict moves each tensor to its parameter's device itself,
        # and Adam wants its "step" counters on the CPU unless it runs in capturable mode.
        tensors = read_verified_tensors(directory, OPTIMIZER_FILE, files[OPTIMIZER_FILE], "cpu")
        optimizer_state = join_optimizer_state(tensors, manifest["optimizer"])
    training_tensors = {}
    if TRAINING_FILE in files:
        training_tensors = read_verified_tensors(directory, TRAINING_FILE, files[TRAINING_FILE], "cpu")
    networks = {name: load_network(directory, manifest, name, device) for name in manifest.get("networks", {})}
    logger.info("loaded checkpoint %s (iteration %s)", directory, manifest["state"].get("iteration"))
    return Checkpoint(model=model, config=config, state=manifest["state"], optimizer_state=optimizer_state,
                      training_tensors=training_tensors, networks=networks)


def load_network(directory: Path, manifest: dict[str, Any], name: str, device: str) -> NetworkState:
    """Read one network listed in a checkpoint's manifest, its files checked against their checksums."""
    weights_file, optimizer_file = network_files(name)
    files = manifest["files"]
    for needed in [weights_file] + ([optimizer_file] if manifest["networks"][name].get("optimizer") else []):
        if needed not in files:
            raise CheckpointError(f"{Path(directory) / MANIFEST_FILE} lists the network {name!r} but no {needed}; "
                                  "the checkpoint is inconsistent: re-run training")
    weights = read_verified_tensors(directory, weights_file, files[weights_file], device)
    optimizer_state = None
    settings = manifest["networks"][name].get("optimizer")
    if settings is not None:
        tensors = read_verified_tensors(directory, optimizer_file, files[optimizer_file], "cpu")
        optimizer_state = join_optimizer_state(tensors, settings)
    return NetworkState(weights=weights, optimizer_state=optimizer_state)
