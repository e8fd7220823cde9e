"""Training batches from faceset readers: a pure function of (seed, step), optionally made in worker processes.

``make_batch`` draws step ``step``'s batches from ``np.random.default_rng([seed, step])``, the sides in
the fixed order of ``SIDES`` on one generator, each face augmented by ``tasks.augment.augment_sample``
with the draws ``tasks.augment.sample_batch`` makes: uniform sampling gives, face for face, the batches
``sample_batch`` gives on the whole faceset, but only the sampled faces are read and decoded.
``iterate_batches`` yields those batches in step order, computed in this process or by spawned
DataLoader workers; either way the batches are identical, so the worker count never changes a run.

A data-parallel process computes only its ``Shard`` of each batch: every face has its own spawned
generator, so shard k of N is exactly faces [k B/N, (k+1) B/N) of the whole batch, and N processes
together train on the batch one process would: the process count never changes a run either.

Batches are uint8 NHWC (a quarter of float32's bytes through the worker queues and pinned memory);
``batch_to_device`` turns them into the model's float32 NCHW tensors in [0, 1] on the device.

Each side has its own ``BatchOptions`` (DeepFaceLab flips, colour-transfers and HSV-shifts the src
faces only); a single ``BatchOptions`` applies to every side.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import get_args

import cv2
import numpy as np
import torch
from pydantic import ConfigDict, with_config
from torch.utils.data import DataLoader, Dataset

from tasks.augment import augment_sample, check_probabilities, yaw_balanced_weights
from tasks.color import ColorTransfer
from tasks.eyes_mouth import eyes_mouth_mask
from tasks.faceset_reader import FacesetReader

logger = logging.getLogger(__name__)

SIDES = ("src", "dst")  # the order in which one step's generator draws the sides

# side -> (inputs, targets, target masks[, eyes/mouth masks]), uint8 (see make_batch)
Batch = dict[str, tuple[np.ndarray, ...]]
TensorBatch = dict[str, tuple[torch.Tensor, ...]]


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class BatchOptions:
    """How one side's batches are drawn and augmented.

    Attributes:
        batch_size: Faces per step.
        random_flip: Allow horizontal flips in the random transform.
        random_warp: Warp the inputs (the targets stay unwarped).
        uniform_yaw: Draw faces so every occupied yaw bin is equally likely
            (``tasks.augment.yaw_balanced_weights``), so the few profile faces of a mostly frontal
            faceset are seen as often as frontal ones.
        hsv_power: ``tasks.augment.random_hsv`` power for the inputs, in [0, 1]; 0 for none.
        color_transfer: Recolour each face (input and target) to the colours of a random face of
            the other side with this tasks.color method; "none" for no transfer.
        blur_out_mask: Blur the targets' background (``tasks.augment.blur_out_mask``).
        eyes_mouth: Add a fourth array to the side's batch: the eyes/mouth priority masks drawn from
            the reader's landmarks (``tasks.eyes_mouth``), transformed like the target masks.
    """

    batch_size: int = 8
    random_flip: bool = True
    random_warp: bool = True
    uniform_yaw: bool = False
    hsv_power: float = 0.0
    color_transfer: ColorTransfer = "none"
    blur_out_mask: bool = False
    eyes_mouth: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0.0 <= self.hsv_power <= 1.0:
            raise ValueError(f"hsv_power must be in [0, 1], got {self.hsv_power}")
        if self.color_transfer not in get_args(ColorTransfer):
            raise ValueError(f"color_transfer must be one of {list(get_args(ColorTransfer))}, got {self.color_transfer!r}")


BatchSettings = BatchOptions | Mapping[str, BatchOptions]


@dataclass(frozen=True)
class Shard:
    """The part of every batch one of ``count`` data-parallel processes computes: its ``index``-th equal slice."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count} does not exist; index must be in [0, count)")

    def positions(self, batch_size: int) -> range:
        """The batch positions of this shard.

        Raises:
            ValueError: The batch does not split evenly into ``count`` shards.
        """
        if batch_size % self.count:
            raise ValueError(f"a batch of {batch_size} faces does not split evenly across {self.count} processes; "
                             "make the batch size a multiple of the process count")
        size = batch_size // self.count
        return range(self.index * size, (self.index + 1) * size)


WHOLE = Shard()


def options_by_side(readers: Mapping[str, FacesetReader], options: BatchSettings) -> dict[str, BatchOptions]:
    """side -> its BatchOptions; raises ValueError when a mapping lacks a side of ``readers``."""
    if isinstance(options, BatchOptions):
        return {side: options for side in readers}
    missing = sorted(set(readers) - set(options))
    if missing:
        raise ValueError(f"batch options are missing for the sides {missing}")
    return {side: options[side] for side in readers}


def order_sides(readers: Mapping[str, FacesetReader]) -> list[str]:
    """The sides of ``readers`` in SIDES order; raises ValueError for an unknown side or an empty faceset."""
    unknown = sorted(set(readers) - set(SIDES))
    if unknown:
        raise ValueError(f"unknown sides {unknown}; readers are keyed by {list(SIDES)}")
    for side, reader in readers.items():
        if len(reader) == 0:
            raise ValueError(f"the {side} faceset has no faces to draw a batch from; add faces or loosen curation")
    return [side for side in SIDES if side in readers]


def other_side(side: str) -> str:
    """The side whose faces a colour transfer takes colours from."""
    return SIDES[1 - SIDES.index(side)]


def check_requirements(readers: Mapping[str, FacesetReader], options: Mapping[str, BatchOptions]) -> None:
    """Raise ValueError for options a side's readers cannot serve (no yaw, no landmarks, no colour reference)."""
    for side, side_options in options.items():
        reader = readers[side]
        if side_options.uniform_yaw and reader.yaw is None:
            raise ValueError(f"uniform_yaw needs each face's yaw, but the {side} reader has none; "
                             "pass yaw to ArrayFaceset or read the faces with LanceFaceset")
        if side_options.eyes_mouth and reader.landmarks is None:
            raise ValueError(f"eyes_mouth_priority (eyes/mouth masks) needs each face's landmarks, but the {side} "
                             "reader has none; pass landmarks to ArrayFaceset or read the faces with LanceFaceset")
        if side_options.color_transfer != "none" and other_side(side) not in readers:
            raise ValueError(f"color_transfer on the {side} side takes colours from {other_side(side)} faces, "
                             f"but there is no {other_side(side)} reader")


def compute_sampling_weights(readers: Mapping[str, FacesetReader],
                             options: BatchSettings) -> dict[str, np.ndarray | None]:
    """side -> (N,) sampling probabilities, or None for uniform sampling (computed once per run).

    Raises:
        ValueError: ``uniform_yaw`` is on but a reader has no yaw.
    """
    by_side = options_by_side(readers, options)
    check_requirements(readers, by_side)
    return {side: check_probabilities(yaw_balanced_weights(readers[side].yaw), len(readers[side]))
            if by_side[side].uniform_yaw else None for side in readers}


def make_batch(
    readers: Mapping[str, FacesetReader],
    options: BatchSettings,
    seed: int,
    step: int,
    weights: Mapping[str, np.ndarray | None] | None = None,
    shard: Shard = WHOLE,
) -> Batch:
    """Draw and augment step ``step``'s batch of every side; a pure function of (seed, step, shard).

    Args:
        readers: side ("src", "dst") -> reader at the model resolution.
        options: The sides' BatchOptions (one for all, or side -> options).
        seed: The run's seed, >= 0.
        step: The model's iteration, >= 0 (``tasks.train`` counts from 1).
        weights: From ``compute_sampling_weights`` (pass them to skip recomputing); None computes them.
        shard: Which part of each side's batch to compute (the whole batch by default).

    Returns:
        side -> (inputs (B, S, S, 3) transformed and, with random_warp, warped; targets (B, S, S, 3)
        transformed only; target masks (B, S, S)) and, with ``eyes_mouth``, a fourth array: the
        eyes/mouth masks (B, S, S); all uint8. With a shard, B is the shard's share of the batch size.

    Raises:
        ValueError: An unknown side, an empty faceset, a negative seed or step, a batch size the
            shard count does not divide, or an option the readers cannot serve (uniform_yaw without
            yaw, eyes_mouth without landmarks, a colour transfer without the other side).
    """
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be 0 or more, got seed {seed} and step {step}")
    sides = order_sides(readers)
    by_side = options_by_side(readers, options)
    weights = compute_sampling_weights(readers, by_side) if weights is None else weights
    rng = np.random.default_rng([seed, step])
    return {side: draw_side(readers, side, by_side[side], weights.get(side), rng, shard) for side in sides}


def draw_side(readers: Mapping[str, FacesetReader], side: str, options: BatchOptions, weights: np.ndarray | None,
              rng: np.random.Generator, shard: Shard = WHOLE) -> tuple[np.ndarray, ...]:
    """One side's batch (see ``make_batch``), drawing from ``rng`` in ``sample_batch``'s order; only the
    shard's faces are read and augmented."""
    reader = readers[side]
    if weights is None:
        indices = rng.integers(0, len(reader), size=options.batch_size)  # as sample_batch draws them
    else:
        indices = rng.choice(len(reader), size=options.batch_size, p=weights)
    sample_rngs = rng.spawn(options.batch_size)  # all of them, so the next side's draws do not depend on the shard
    positions = shard.positions(options.batch_size)
    indices = indices[positions.start:positions.stop]
    faces, masks = reader.read_many(indices)
    samples = []
    for position, (index, sample_rng) in enumerate(zip(indices, sample_rngs[positions.start:positions.stop], strict=True)):
        reference = reference_mask = None
        if options.color_transfer != "none":
            colours = readers[other_side(side)]
            reference, reference_mask = colours.read(int(sample_rng.integers(0, len(colours))))
        extra = (eyes_mouth_mask(reader.landmarks[index], reader.resolution),) if options.eyes_mouth else ()
        samples.append(augment_sample(faces[position], masks[position], sample_rng, options.random_flip,
                                      options.random_warp, options.hsv_power, options.color_transfer, reference,
                                      reference_mask, options.blur_out_mask, extra))
    arrays = [np.stack([sample.input for sample in samples]), np.stack([sample.target for sample in samples]),
              np.stack([sample.target_mask for sample in samples])]
    if options.eyes_mouth:
        arrays.append(np.stack([sample.extra_masks[0] for sample in samples]))
    return tuple(arrays)


def batch_to_tensors(batch: Batch) -> TensorBatch:
    """The same uint8 arrays as CPU tensors (no copy)."""
    return {side: tuple(torch.from_numpy(array) for array in arrays) for side, arrays in batch.items()}


def batch_to_device(batch: Batch | TensorBatch, device: torch.device | str) -> TensorBatch:
    """uint8 batches -> model tensors on ``device``: inputs and targets (B, 3, S, S), target masks (and
    eyes/mouth masks) (B, 1, S, S), float32 in [0, 1] (as ``tasks.preview.images_to_tensor``); pinned
    tensors copy asynchronously."""
    def to_model(images: np.ndarray | torch.Tensor) -> torch.Tensor:
        tensor = torch.as_tensor(images).to(device, non_blocking=True)
        if tensor.dim() == 3:
            tensor = tensor.unsqueeze(-1)  # (B, S, S) masks -> (B, S, S, 1)
        return tensor.permute(0, 3, 1, 2).float().div_(255.0)

    return {side: tuple(to_model(images) for images in arrays) for side, arrays in batch.items()}


class StepBatches(Dataset):
    """Map-style dataset: item ``step`` is that step's batch as uint8 CPU tensors."""

    def __init__(self, readers: Mapping[str, FacesetReader], options: BatchSettings, seed: int,
                 weights: Mapping[str, np.ndarray | None], shard: Shard = WHOLE) -> None:
        self.readers, self.seed, self.weights, self.shard = dict(readers), seed, dict(weights), shard
        self.options = options_by_side(readers, options)

    def __getitem__(self, step: int) -> TensorBatch:
        return batch_to_tensors(make_batch(self.readers, self.options, self.seed, step, self.weights, self.shard))


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
    shard: Shard = WHOLE,
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
        shard: The part of each batch to yield (a data-parallel process's share).

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
    for side_options in options_by_side(readers, options).values():
        shard.positions(side_options.batch_size)  # fail here, not in a worker
    dataset = StepBatches(readers, options, seed, compute_sampling_weights(readers, options), shard)
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
