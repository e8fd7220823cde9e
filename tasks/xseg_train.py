"""Train the XSeg network on hand-labelled faces, seeded, and score it on labelled faces it never saw.

Each step draws a batch of labelled faces (with replacement) and augments each face and its label
alike: a random similarity transform with flips (tasks.augment), then, on the face only, a random
hue/saturation/value shift (tasks.appearance) and sometimes a Gaussian blur, so the network learns
what a face is rather than one video's colours and sharpness. The loss is binary cross-entropy plus
the dice loss (1 - the soft overlap), the optimizer Adam. A fixed share of the labelled faces (the
project's hold-out rule, tasks.holdout) is held out; the intersection over union of the thresholded
masks with their labels on those faces is the score.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pydantic import ConfigDict, with_config
from torch import Tensor
from torch.nn import functional

from model.config import FaceType
from model.xseg import XsegConfig, XsegNetwork, build_xseg
from tasks.appearance import random_hsv
from tasks.augment import apply_transform, random_transform_params
from tasks.holdout import split_holdout

logger = logging.getLogger(__name__)

HSV_POWER = 0.1  # random hue/saturation/value shift of the inputs (DeepFaceLab's XSeg jitters colours too)
BLUR_CHANCE = 0.25  # share of inputs blurred, so soft and out-of-focus faces segment as well as sharp ones
MAX_BLUR_SIGMA = 2.0  # px at a 256-px crop
EVALUATION_BATCH = 16
DICE_SMOOTHING = 1.0
LOSS_AVERAGE_SHARE = 0.1  # the final loss is the mean over this last share of the iterations


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class XsegOptions:
    """params.yaml ``xseg``: the XSeg network's size and training."""

    resolution: int = 256  # side of the crops it segments (a multiple of 32); DeepFaceLab's XSeg is 256
    dims: int = 32  # channels of its first level (a multiple of 4); DeepFaceLab's XSeg uses 32
    iterations: int = 3000
    batch_size: int = 8
    learning_rate: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"xseg.{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"xseg.learning_rate must be positive, got {self.learning_rate}")
        self.network_config("whole_face")  # the resolution and dims are checked where the network is defined

    def network_config(self, face_type: FaceType) -> XsegConfig:
        return XsegConfig(resolution=self.resolution, dims=self.dims, face_type=face_type)


@dataclass
class LabelledFaces:
    """Labelled faces of both sides at the network's resolution, in one order."""

    face_ids: list[str]
    faces: np.ndarray  # (N, R, R, 3) uint8 BGR
    masks: np.ndarray  # (N, R, R) uint8, 255 = face

    def subset(self, face_ids: list[str]) -> LabelledFaces:
        position = {face_id: index for index, face_id in enumerate(self.face_ids)}
        indices = [position[face_id] for face_id in face_ids]
        return LabelledFaces(list(face_ids), self.faces[indices], self.masks[indices])


@dataclass
class XsegResult:
    """What training made and measured."""

    model: XsegNetwork
    iterations: int
    final_loss: float  # mean BCE + dice over the last 10 % of the iterations
    train_faces: int
    holdout_faces: int
    iou: float | None  # mean intersection over union on the held-out faces; None when none is held out
    iou_all_ones: float | None  # the same for a mask that calls every pixel face (the trivial baseline)
    ms_per_iteration: float

    def metrics(self) -> dict:
        rounded = {name: (None if value is None else round(value, 4))
                   for name, value in (("iou", self.iou), ("iou_all_ones", self.iou_all_ones))}
        return {"trained": True, "iterations": self.iterations, "final_loss": round(self.final_loss, 5),
                "train_faces": self.train_faces, "holdout_faces": self.holdout_faces,
                "ms_per_iteration": round(self.ms_per_iteration, 1), **rounded}


def augment_labelled(face: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (face, label) pair: (R, R, 3) uint8 and (R, R) uint8, transformed alike."""
    size = face.shape[0]
    params = random_transform_params(rng, size, allow_flip=True)
    face, mask = apply_transform(face, params, size), apply_transform(mask, params, size)
    face = random_hsv(face, rng, HSV_POWER)
    if rng.random() < BLUR_CHANCE:
        sigma = float(rng.uniform(0.3, 1.0)) * MAX_BLUR_SIGMA * size / 256
        face = cv2.GaussianBlur(face, (0, 0), sigma)
    return face, mask


def sample_xseg_batch(data: LabelledFaces, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A training batch drawn with replacement: inputs (B, R, R, 3) uint8, labels (B, R, R) uint8."""
    indices = rng.integers(0, len(data.face_ids), size=batch_size)
    pairs = [augment_labelled(data.faces[index], data.masks[index], sample_rng)
             for index, sample_rng in zip(indices, rng.spawn(batch_size), strict=True)]
    return np.stack([face for face, _ in pairs]), np.stack([mask for _, mask in pairs])


def to_images(faces: np.ndarray, device: torch.device) -> Tensor:
    """uint8 (B, R, R, 3) BGR -> float (B, 3, R, R) in [0, 1] on ``device``."""
    return torch.from_numpy(faces).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def to_tensors(faces: np.ndarray, masks: np.ndarray, device: torch.device) -> tuple[Tensor, Tensor]:
    """uint8 (B, R, R, 3), (B, R, R) -> float (B, 3, R, R) and (B, 1, R, R) in [0, 1] on ``device``."""
    return to_images(faces, device), torch.from_numpy(masks).to(device)[:, None].float().div_(255.0)


def xseg_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy + dice loss, (B, 1, R, R) logits and targets in [0, 1] -> scalar."""
    bce = functional.binary_cross_entropy_with_logits(logits, targets)
    probabilities = torch.sigmoid(logits).flatten(1)
    targets = targets.flatten(1)
    overlap = (probabilities * targets).sum(dim=1)
    dice = (2 * overlap + DICE_SMOOTHING) / (probabilities.sum(dim=1) + targets.sum(dim=1) + DICE_SMOOTHING)
    return bce + (1 - dice).mean()


def intersection_over_union(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-face IoU of (N, R, R) masks in [0, 1] against (N, R, R) uint8 labels, both thresholded at one half."""
    predicted, labels = predicted >= 0.5, labels >= 128
    intersection = (predicted & labels).sum(axis=(1, 2))
    union = (predicted | labels).sum(axis=(1, 2))
    return float(np.mean(np.where(union > 0, intersection / np.maximum(union, 1), 1.0)))


@torch.inference_mode()
def predict_masks(model: XsegNetwork, faces: np.ndarray, device: torch.device) -> np.ndarray:
    """(N, R, R, 3) uint8 -> (N, R, R) float32 probabilities."""
    model.eval()
    masks = []
    for start in range(0, len(faces), EVALUATION_BATCH):
        masks.append(model(to_images(faces[start:start + EVALUATION_BATCH], device))[:, 0].float().cpu().numpy())
    return np.concatenate(masks)


def train_xseg(data: LabelledFaces, options: XsegOptions, face_type: FaceType, device: str | torch.device = "cpu",
               on_iteration: Callable[[int], None] | None = None) -> XsegResult:
    """Train a fresh XSeg network on labelled faces and score it on the held-out ones.

    The same data, options and seed give the same network (on the CPU; CUDA kernels may differ in
    the last bits).

    Args:
        data: The labelled faces at ``options.resolution``.
        options: The xseg params.
        face_type: The framing of the crops (recorded in the network's config).
        device: Where to train.
        on_iteration: Called with the iteration number after each step (progress).

    Returns:
        The trained network (eval mode) and its figures.

    Raises:
        ValueError: no labelled faces, or faces at another resolution than ``options.resolution``.
    """
    if not data.face_ids:
        raise ValueError("XSeg training needs at least one labelled face")
    if data.faces.shape[1] != options.resolution:
        raise ValueError(f"labelled faces are {data.faces.shape[1]} px, xseg.resolution is {options.resolution}")
    device = torch.device(device)
    train_ids, holdout_ids = split_holdout(data.face_ids)
    training, holdout = data.subset(train_ids), data.subset(holdout_ids)
    torch.manual_seed(options.seed)
    model = build_xseg(options.network_config(face_type)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    losses: list[float] = []
    started = time.perf_counter()
    for iteration in range(1, options.iterations + 1):
        rng = np.random.default_rng([options.seed, iteration])  # each step's batch depends only on seed and step
        images, targets = to_tensors(*sample_xseg_batch(training, rng, options.batch_size), device)
        loss = xseg_loss(model.logits(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if iteration % max(1, options.iterations // 10) == 0:
            logger.info("xseg iteration %d/%d: loss %.4f", iteration, options.iterations, losses[-1])
        if on_iteration is not None:
            on_iteration(iteration)
    elapsed = time.perf_counter() - started
    model.eval()
    iou = baseline = None
    if holdout.face_ids:
        iou = intersection_over_union(predict_masks(model, holdout.faces, device), holdout.masks)
        baseline = intersection_over_union(np.ones(holdout.masks.shape, np.float32), holdout.masks)
    tail = losses[-max(1, round(len(losses) * LOSS_AVERAGE_SHARE)):]
    logger.info("xseg trained on %d faces (%d held out): held-out IoU %s (all-ones mask %s)", len(train_ids),
                len(holdout_ids), "n/a" if iou is None else f"{iou:.3f}", "n/a" if baseline is None else f"{baseline:.3f}")
    return XsegResult(model, options.iterations, float(np.mean(tail)), len(train_ids), len(holdout_ids), iou, baseline,
                      1000 * elapsed / options.iterations)
