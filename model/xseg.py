"""XSeg: the trainable face segmentation of DeepFaceLab, as a small U-Net, and its checkpoint.

The network paints, for an aligned face crop, the probability that each pixel is face (skin, eyes,
mouth) and not an obstruction (hands, hair, glasses, a microphone) or background. It is trained on
a few dozen to hundreds of hand-labelled faces and generalises to the rest of the faceset.

Shape of the network (R the resolution, D ``dims``, depth 5 as in DeepFaceLab's XSeg):
    stem     stride-2 convolution: (B, 3, R, R) -> (B, D, R/2, R/2)
    encoder  level 0 (B, D, R/2, R/2) -> ... halved at each level ... -> (B, 8D, R/32, R/32)
    decoder  each level: bilinear x2, concatenated with the encoder's map of that size, two convolutions
    head     1x1 convolution at R/2, bilinear to (B, 1, R, R) logits; ``forward`` returns their sigmoid.
The stem's halving keeps the network affordable on a CPU (full-resolution maps would cost more than
all the others together) at the price of edges placed within a pixel or two at R, well inside the
feathering a merge puts on a mask.
Every convolution is 3x3 + group norm + leaky ReLU; group norm (not batch norm) keeps the network's
output independent of the batch it is run in, so training and inference agree on small batches.

A checkpoint directory is written with model.checkpoint's helpers (safetensors + checkpoint.json with
sha256 checksums, atomic writes) and holds the ``XsegConfig``, so it rebuilds its own network. A
directory that holds no trained network holds ``untrained.json`` instead, saying why.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
from pydantic import ConfigDict, with_config
from torch import Tensor, nn
from torch.nn import functional

from model.checkpoint import (MANIFEST_FILE, MODEL_FILE, CheckpointError, load_network_weights, read_manifest,
                              save_checkpoint_state, sync_directory, write_atomically)
from model.config import FaceType, config_from_dict

logger = logging.getLogger(__name__)

UNTRAINED_FILE = "untrained.json"
LEAKY_SLOPE = 0.1
NORM_GROUPS = 4  # channels per level are multiples of dims, which must divide by this
MAX_CHANNEL_FACTOR = 8  # channels double per level up to 8 * dims, as in DeepFaceLab's XSeg


class XsegUntrainedError(CheckpointError):
    """An XSeg checkpoint directory holds the "untrained" marker (no labels were given) instead of a network."""


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class XsegConfig:
    """Shape of the XSeg network, saved in its checkpoint.

    Attributes:
        resolution: Side of the square crops it segments; a multiple of 2 ** depth.
        dims: Channels of the first level, at half the resolution (later levels double them, up to
            8 * dims); a multiple of 4. DeepFaceLab's XSeg uses 32.
        depth: How many times the network halves the image (the stem once, then each level).
        face_type: The framing of the crops it was trained on (extract.faces.face_type); crops of
            another framing work less well.
    """

    resolution: int = 256
    dims: int = 32
    depth: int = 5
    face_type: FaceType = "whole_face"

    def __post_init__(self) -> None:
        for name in ("resolution", "dims", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"xseg {name} must be a positive integer, got {value!r}")
        multiple = 2 ** self.depth
        if self.resolution % multiple:
            lower = self.resolution - self.resolution % multiple
            raise ValueError(f"xseg resolution {self.resolution} is not a multiple of {multiple} (the network halves it "
                             f"{self.depth} times); use e.g. {max(lower, multiple)} or {lower + multiple}")
        if self.dims % NORM_GROUPS:
            raise ValueError(f"xseg dims must be a multiple of {NORM_GROUPS} (group norm), got {self.dims}")
        if self.face_type not in get_args(FaceType):
            raise ValueError(f"xseg face_type {self.face_type!r} is not valid; choose one of {list(get_args(FaceType))}")

    @property
    def channels(self) -> list[int]:
        """Channels of each level, from the stem's R/2 down to R / 2 ** depth: depth entries."""
        return [self.dims * min(2 ** level, MAX_CHANNEL_FACTOR) for level in range(self.depth)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> XsegConfig:
        """Build a config from a checkpoint's JSON.

        Raises:
            ValueError: ``data`` is not a mapping, names an unknown key or holds an invalid value.
        """
        return config_from_dict(cls, data, "xseg config")


class ConvBlock(nn.Module):
    """Two (3x3 convolution + group norm + leaky ReLU): (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            layers += [nn.Conv2d(channels, out_channels, kernel_size=3, padding=1),
                       nn.GroupNorm(NORM_GROUPS, out_channels), nn.LeakyReLU(LEAKY_SLOPE)]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)


class XsegNetwork(nn.Module):
    """The U-Net: (B, 3, R, R) BGR in [0, 1] -> (B, 1, R, R) face probability in [0, 1]."""

    def __init__(self, config: XsegConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.channels
        # the stem halves the image at once: full-resolution feature maps would cost more than the rest
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0], kernel_size=3, stride=2, padding=1),
                                  nn.GroupNorm(NORM_GROUPS, channels[0]), nn.LeakyReLU(LEAKY_SLOPE))
        self.encoders = nn.ModuleList([ConvBlock(channels[0], channels[0])] + [
            ConvBlock(channels[level - 1], channels[level]) for level in range(1, config.depth)])
        # decoder level k (k = depth - 2 .. 0) takes level k + 1 upsampled beside the encoder's level k
        self.decoders = nn.ModuleList([
            ConvBlock(channels[level + 1] + channels[level], channels[level]) for level in reversed(range(config.depth - 1))])
        self.head = nn.Conv2d(channels[0], 1, kernel_size=1)

    def logits(self, images: Tensor) -> Tensor:
        """(B, 3, R, R) in [0, 1] -> (B, 1, R, R) logits (what the loss reads: stable BCE)."""
        features = self.encoders[0](self.stem(images * 2.0 - 1.0))  # centred input -> (B, D, R/2, R/2)
        skips = [features]
        for encoder in self.encoders[1:]:
            features = encoder(functional.max_pool2d(features, 2))  # (B, C, H, W) -> (B, C', H/2, W/2)
            skips.append(features)
        skips.pop()  # the deepest map is ``features`` itself
        for decoder in self.decoders:
            skip = skips.pop()
            upsampled = functional.interpolate(features, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            features = decoder(torch.cat([upsampled, skip], dim=1))
        # (B, 1, R/2, R/2) -> (B, 1, R, R): a mask's edge is smooth, bilinear logits place it within a pixel or two
        return functional.interpolate(self.head(features), size=images.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, images: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(images))


def build_xseg(config: XsegConfig) -> XsegNetwork:
    """A fresh network for ``config`` (seed torch first for reproducible weights)."""
    return XsegNetwork(config)


@dataclass
class XsegCheckpoint:
    """A loaded XSeg checkpoint: the network (eval mode), its config and the saved state (labels, metrics...)."""

    model: XsegNetwork
    config: XsegConfig
    state: dict[str, Any]


def save_xseg(directory: Path, model: XsegNetwork, state: dict[str, Any]) -> Path:
    """Save a trained network as a checkpoint directory (replacing an "untrained" marker there).

    Args:
        directory: Where to write; created if missing.
        model: The network; its config is saved with it.
        state: JSON-able facts about the training (iterations, label counts, scores).

    Returns:
        The path of checkpoint.json.

    Raises:
        CheckpointError: ``state`` is not JSON-able.
    """
    directory = Path(directory)
    (directory / UNTRAINED_FILE).unlink(missing_ok=True)
    # save_checkpoint_state reads only ``config.to_dict()``: the XSeg config is saved in the same place
    config: Any = model.config
    return save_checkpoint_state(directory, model.state_dict(), config, {"network": "xseg", **state})


def write_untrained_marker(directory: Path, reason: str, details: dict[str, Any] | None = None) -> Path:
    """Mark ``directory`` as holding no trained XSeg (e.g. no labels yet), removing any network files there.

    Args:
        directory: The checkpoint directory; created if missing.
        reason: One sentence for the user: why nothing was trained and what to do.
        details: JSON-able extras, e.g. the label folders that were read.

    Returns:
        The marker's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in [directory / MANIFEST_FILE, *directory.glob("*.safetensors")]:
        stale.unlink(missing_ok=True)
    path = directory / UNTRAINED_FILE
    payload = {"trained": False, "reason": reason, **(details or {})}
    write_atomically(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
    sync_directory(directory)
    return path


def read_untrained_reason(directory: Path) -> str | None:
    """Why ``directory`` holds no trained XSeg, or None when it holds no "untrained" marker."""
    path = Path(directory) / UNTRAINED_FILE
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text()).get("reason", "no reason recorded"))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return f"{path} is not readable JSON"


def is_trained(directory: Path) -> bool:
    """Whether ``directory`` holds a trained XSeg checkpoint (checkpoint.json and no "untrained" marker)."""
    return read_untrained_reason(directory) is None and (Path(directory) / MANIFEST_FILE).is_file()


def load_xseg(directory: Path, device: str | torch.device = "cpu") -> XsegCheckpoint:
    """Load an XSeg checkpoint directory, rebuilding the network from the config saved in it.

    Args:
        directory: A directory written by ``save_xseg``.
        device: Where to put the network.

    Returns:
        The checkpoint, its network in eval mode on ``device``.

    Raises:
        XsegUntrainedError: the directory holds the "untrained" marker instead (the message says why).
        CheckpointError: a file is missing, fails its checksum, or is not an XSeg checkpoint.
    """
    directory = Path(directory)
    reason = read_untrained_reason(directory)
    if reason is not None:
        raise XsegUntrainedError(f"{directory} holds no trained XSeg model: {reason}")
    manifest = read_manifest(directory)
    try:
        config = XsegConfig.from_dict(manifest["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / MANIFEST_FILE} is not an XSeg checkpoint ({error}); point to the "
                              "folder the xseg stage writes (checkpoints/xseg)") from error
    files = manifest["files"]
    if MODEL_FILE not in files:
        raise CheckpointError(f"{directory / MANIFEST_FILE} lists no {MODEL_FILE}; re-run the xseg stage")
    model = load_network_weights(directory, files, build_xseg(config).to(device), str(device), "re-run the xseg stage")
    logger.info("loaded XSeg %s (%dpx, %s)", directory, config.resolution, config.face_type)
    return XsegCheckpoint(model, config, manifest["state"])
