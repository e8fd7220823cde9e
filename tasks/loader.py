"""Training batches from faceset readers: a pure function of (seed, step), optionally made in worker processes.

``make_batch`` draws step ``step``'s batches from ``np.random.default_rng([seed, step])``, the sides in
the fixed order of ``SIDES`` on one generator, exactly as ``tasks.train`` draws them from arrays in
memory: uniform sampling gives, face for face, the batches ``tasks.augment.sample_batch`` gives on the
whole faceset, but only the sampled faces are read and decoded. ``iterate_batches`` yields those
batches in step order, computed in this process or by spawned DataLoader workers; either way the
batches are identical, so the worker count never changes a run.

Batches are uint8 NHWC (a quarter of float32's bytes through the worker queues and pinned memory);
``batch_to_device`` turns them into the model's float32 NCHW tensors in [0, 1] on the device.

Options: ``BatchOptions`` or any object with the same attributes (the trainer's StageOptions has
batch_size, random_flip and random_warp); ``uniform_yaw`` is optional (default off). Keywords that
``sample_batch`` accepts beyond its original ones (``AUGMENT_KEYWORDS``) are passed on from the
options when both have them.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from pydantic import ConfigDict, with_config
from torch.utils.data import DataLoader, Dataset

from tasks.augment import sample_batch
from tasks.faceset_reader import FacesetReader

logger = logging.getLogger(__name__)

SIDES = ("src", "dst")  # the order in which one step's generator draws the sides
YAW_BIN_DEGREES = 5.0  # uniform_yaw: width of the yaw bins that are drawn equally often
AUGMENT_KEYWORDS = ("hsv_power", "color_transfer")  # optional sample_batch keywords taken from the options

Batch = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # side -> (inputs, targets, target masks), uint8
TensorBatch = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class BatchSettings(Protocol):
    """What ``make_batch`` reads from its options (``BatchOptions`` or the trainer's StageOptions)."""

    batch_size: int
    random_flip: bool
    random_warp: bool


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class BatchOptions:
    """How a step's batches are drawn.

    Attributes:
        batch_size: Faces per side per step.
        random_flip: Allow horizontal flips in the random transform.
        random_warp: Warp the inputs (the targets stay unwarped).
        uniform_yaw: Draw every occupied YAW_BIN_DEGREES yaw bin equally often (then uniformly within
            it), so the few profile faces of a mostly frontal faceset are seen as often as frontal ones.
    """

    batch_size: int = 8
    random_flip: bool = True
    random_warp: bool = True
    uniform_yaw: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


def order_sides(readers: Mapping[str, FacesetReader]) -> list[str]:
    """The sides of ``readers`` in SIDES order; raises ValueError for an unknown side or an empty faceset."""
    unknown = sorted(set(readers) - set(SIDES))
    if unknown:
        raise ValueError(f"unknown sides {unknown}; readers are keyed by {list(SIDES)}")
    for side, reader in readers.items():
        if len(reader) == 0:
            raise ValueError(f"the {side} faceset has no faces to draw a batch from; add faces or loosen curation")
    return [side for side in SIDES if side in readers]


def compute_uniform_yaw_weights(yaw: np.ndarray, bin_degrees: float = YAW_BIN_DEGREES) -> np.ndarray:
    """(N,) sampling probabilities that draw each occupied yaw bin equally often (non-finite yaws share a bin)."""
    yaw = np.asarray(yaw, np.float64)
    bins = np.where(np.isfinite(yaw), np.floor(np.nan_to_num(yaw) / bin_degrees), np.iinfo(np.int32).min)
    _, inverse, counts = np.unique(bins.astype(np.int64), return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse]
    return weights / weights.sum()


def compute_sampling_weights(readers: Mapping[str, FacesetReader], options: BatchSettings) -> dict[str, np.ndarray | None]:
    """side -> (N,) sampling probabilities, or None for uniform sampling (computed once per run).

    Raises:
        ValueError: ``uniform_yaw`` is on but a reader has no yaw.
    """
    if not getattr(options, "uniform_yaw", False):
        return {side: None for side in readers}
    weights = {}
    for side, reader in readers.items():
        if reader.yaw is None:
            raise ValueError(f"uniform_yaw needs each face's yaw, but the {side} reader has none; "
                             "pass yaw to ArrayFaceset or read the faces with LanceFaceset")
        weights[side] = compute_uniform_yaw_weights(reader.yaw)
    return weights


def augment_keywords(options: Any) -> dict[str, Any]:
    """The AUGMENT_KEYWORDS that both ``sample_batch`` accepts and ``options`` has, with the options' values."""
    accepted = inspect.signature(sample_batch).parameters
    return {name: getattr(options, name) for name in AUGMENT_KEYWORDS if name in accepted and hasattr(options, name)}


def make_batch(
    readers: Mapping[str, FacesetReader],
    options: BatchSettings,
    seed: int,
    step: int,
    weights: Mapping[str, np.ndarray | None] | None = None,
) -> Batch:
    """Draw and augment step ``step``'s batch of every side; a pure function of (seed, step).

    Args:
        readers: side ("src", "dst") -> reader at the model resolution.
        options: batch_size, random_flip, random_warp and optionally uniform_yaw (see the module doc).
        seed: The run's seed, >= 0.
        step: The model's iteration, >= 0 (``tasks.train`` counts from 1).
        weights: From ``compute_sampling_weights`` (pass them to skip recomputing); None computes them.

    Returns:
        side -> (inputs (B, S, S, 3) transformed and, with random_warp, warped; targets (B, S, S, 3)
        transformed only; target masks (B, S, S)), all uint8.

    Raises:
        ValueError: An unknown side, an empty faceset, a negative seed or step, or uniform_yaw without yaw.
    """
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be 0 or more, got seed {seed} and step {step}")
    sides = order_sides(readers)
    weights = compute_sampling_weights(readers, options) if weights is None else weights
    keywords = augment_keywords(options)
    rng = np.random.default_rng([seed, step])
    batch: Batch = {}
    for side in sides:
        reader, side_weights = readers[side], weights.get(side)
        if side_weights is None:
            indices = rng.integers(0, len(reader), size=options.batch_size)  # as sample_batch draws them
        else:
            indices = rng.choice(len(reader), size=options.batch_size, p=side_weights)
        faces, masks = reader.read_many(indices)
        # One face at a time: sample_batch's index draw from a one-face set takes nothing from the
        # generator, so each face gets the transform and warp draws it would get in the whole set.
        samples = [sample_batch(faces[position:position + 1], masks[position:position + 1], rng, 1,
                                options.random_flip, options.random_warp, **keywords)
                   for position in range(options.batch_size)]
        inputs, targets, target_masks = (np.concatenate(parts) for parts in zip(*samples, strict=True))
        batch[side] = (inputs, targets, target_masks)
    return batch


def batch_to_tensors(batch: Batch) -> TensorBatch:
    """The same uint8 arrays as CPU tensors (no copy)."""
    return {side: tuple(torch.from_numpy(array) for array in arrays) for side, arrays in batch.items()}


def batch_to_device(batch: Batch | TensorBatch, device: torch.device | str) -> TensorBatch:
    """uint8 batches -> model tensors on ``device``: inputs and targets (B, 3, S, S), target masks
    (B, 1, S, S), float32 in [0, 1] (as ``tasks.preview.images_to_tensor``); pinned tensors copy asynchronously."""
    def to_model(images: np.ndarray | torch.Tensor) -> torch.Tensor:
        tensor = torch.as_tensor(images).to(device, non_blocking=True)
        if tensor.dim() == 3:
            tensor = tensor.unsqueeze(-1)  # (B, S, S) masks -> (B, S, S, 1)
        return tensor.permute(0, 3, 1, 2).float().div_(255.0)

    return {side: tuple(to_model(images) for images in arrays) for side, arrays in batch.items()}


class StepBatches(Dataset):
    """Map-style dataset: item ``step`` is that step's batch as uint8 CPU tensors."""

    def __init__(self, readers: Mapping[str, FacesetReader], options: BatchSettings, seed: int,
                 weights: Mapping[str, np.ndarray | None]) -> None:
        self.readers, self.options, self.seed, self.weights = dict(readers), options, seed, dict(weights)

    def __getitem__(self, step: int) -> TensorBatch:
        return batch_to_tensors(make_batch(self.readers, self.options, self.seed, step, self.weights))


def prepare_worker(worker_id: int) -> None:
    """Keep a loader worker on one CPU thread and off the GPU, which the trainer owns."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CUDA initialises lazily, so this hides it from the worker
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def iterate_batches(
    readers: Mapping[str, FacesetReader],
    options: BatchSettings,
    seed: int,
    start_step: int,
    stop_step: int,
    workers: int = 0,
    prefetch: int = 2,
) -> Iterator[tuple[int, TensorBatch]]:
    """Yield (step, ``make_batch`` of that step as uint8 CPU tensors) for start_step <= step < stop_step, in order.

    Args:
        readers, options, seed: As ``make_batch``.
        start_step, stop_step: The half-open range of steps.
        workers: 0 computes each batch here when it is asked for; more starts that many spawned
            worker processes (one CPU thread each, no CUDA) that compute batches ahead. The batches
            are identical either way. With workers, readers are pickled into each worker: use
            ``LanceFaceset`` (paths and ids) rather than a large ``ArrayFaceset``.
        prefetch: Batches each worker keeps ready ahead.

    Yields:
        (step, batch); with workers and CUDA available the tensors are in pinned memory.

    Raises:
        ValueError: A negative ``workers``, ``prefetch`` < 1, or an argument ``make_batch`` rejects.
    """
    if workers < 0 or prefetch < 1:
        raise ValueError(f"workers must be 0 or more and prefetch at least 1, got {workers} and {prefetch}")
    if start_step < 0 or seed < 0:
        raise ValueError(f"seed and start_step must be 0 or more, got seed {seed} and start_step {start_step}")
    order_sides(readers)
    dataset = StepBatches(readers, options, seed, compute_sampling_weights(readers, options))
    steps = range(start_step, stop_step)
    if workers == 0 or not steps:
        for step in steps:
            yield step, dataset[step]
        return
    loader = DataLoader(dataset, batch_size=None, sampler=steps, num_workers=workers, prefetch_factor=prefetch,
                        persistent_workers=True, pin_memory=torch.cuda.is_available(),
                        multiprocessing_context="spawn", worker_init_fn=prepare_worker)
    logger.debug("loading steps %d..%d with %d spawned workers", start_step, stop_step - 1, workers)
    yield from zip(steps, loader, strict=True)
