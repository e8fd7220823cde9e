"""The model side of the merge: what a predictor gives, the torch swapper, its precision and its threads.

The model is most of a merge's cost on a CPU (a SAEHD-sized 128 px model is about 18 GFLOP per
face; pasting, decoding and encoding a 720p frame cost a fraction of that), so it runs:
- in bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX on x86, BF16 on ARM): about
  twice as fast as float32, with rendered faces within 3 of 255 levels of float32's (0.2 on
  average, measured with a trained model); ``merge.precision: fp32`` keeps float32;
- on PREDICTION_WORKERS threads that predict the next frames while the render thread decodes,
  pastes and hands frames to the encoder thread (torch, OpenCV and PyAV release the GIL), each
  worker with an equal share of the cores so that no thread pool spin-waits against another;
- on a few consecutive frames per call (predict_ahead), so each layer's weights are read once for
  all of their faces.
"""

from __future__ import annotations

import copy
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar, get_args

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.networks import SwapAutoencoder
from tasks.align import FaceType
from tasks.train_options import PrecisionChoice

logger = logging.getLogger(__name__)

PRECISION_CHOICES: tuple[str, ...] = get_args(PrecisionChoice)
PREDICTION_WORKERS = 2  # model calls running at once, each on its own thread
# CPU capability flags (torch.cpu.get_capabilities) of native bfloat16 arithmetic.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


@dataclass
class Prediction:
    faces: np.ndarray  # (N, R, R, 3) float32 BGR in [0, 1], painted as the src identity
    masks: np.ndarray  # (N, R, R) float32 in [0, 1], the src decoder's mask
    dst_masks: np.ndarray | None  # (N, R, R) float32 in [0, 1], the dst path's mask, when asked for
    # "xseg_predicted" / "xseg_dst" -> (N, R, R) float32 in [0, 1]: XSeg's masks, for the modes that use them
    xseg_masks: dict[str, np.ndarray] = field(default_factory=dict)


class FacePredictor(Protocol):
    """What the merger needs from a model: its input framing and a batch prediction (safe to call from two threads)."""

    resolution: int
    face_type: FaceType

    def predict(self, crops: list[np.ndarray], with_dst_mask: bool) -> Prediction:
        """(R, R, 3) uint8 BGR crops of the model's face type -> the swapped faces and their masks."""
        ...


def has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (else bfloat16 is emulated, slower than float32)."""
    capabilities = torch.cpu.get_capabilities()
    return any(bool(capabilities.get(flag, False)) for flag in NATIVE_BF16_FLAGS)


def resolve_precision(precision: str) -> torch.dtype:
    """The dtype ``merge.precision`` stands for here: "auto" is bfloat16 on a CPU with native bfloat16.

    Raises:
        ValueError: an unknown precision (the message lists the choices).
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"merge.precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    if precision == "bf16" and not has_native_bf16():
        logger.warning("merge.precision is bf16 but this CPU has no native bfloat16: it is emulated and slower than "
                       "fp32; set merge.precision to auto or fp32")
    use_bf16 = precision == "bf16" or (precision == "auto" and has_native_bf16())
    return torch.bfloat16 if use_bf16 else torch.float32


class FaceSwapper:
    """Runs a trained model on dst crops (a FacePredictor), in float32 or bfloat16.

    Args:
        model: the trained network; it is left as given (a bfloat16 swapper works on a copy).
        precision: "fp32", "bf16", or "auto" (bf16 where the CPU has it natively).
    """

    def __init__(self, model: SwapAutoencoder, precision: PrecisionChoice = "fp32") -> None:
        self.source_model = model.eval()
        self.dtype = resolve_precision(precision)
        weights_dtype = next(model.parameters()).dtype
        working = model if self.dtype == weights_dtype else copy.deepcopy(model)
        # channels-last layout: about 15 % faster convolutions on the CPU, same results
        self.model = working.to(dtype=self.dtype, memory_format=torch.channels_last)
        self.resolution = model.config.resolution
        self.face_type: FaceType = model.config.face_type
        self.variants: dict[torch.dtype, FaceSwapper] = {self.dtype: self}

    @classmethod
    def from_checkpoint(cls, directory: Path, precision: PrecisionChoice = "fp32") -> FaceSwapper:
        return cls(load_checkpoint(directory).model, precision)

    def with_precision(self, precision: PrecisionChoice) -> FaceSwapper:
        """This model at another precision (made once, then reused: a flow renders many videos)."""
        dtype = resolve_precision(precision)
        if dtype not in self.variants:
            variant = FaceSwapper(self.source_model, "bf16" if dtype == torch.bfloat16 else "fp32")
            variant.variants = self.variants
            self.variants[dtype] = variant
            logger.info("running the merge model in %s", "bfloat16" if dtype == torch.bfloat16 else "float32")
        return self.variants[dtype]

    @torch.inference_mode()
    def predict(self, crops: list[np.ndarray], with_dst_mask: bool) -> Prediction:
        """Without the dst mask only the src path runs (about half the model's cost)."""
        # (N, R, R, 3) uint8 -> (N, 3, R, R) in [0, 1]; the permuted view is already channels-last
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255).to(self.dtype)
        if with_dst_mask:
            dst_mask, face, mask = self.model.swap(batch)
        else:
            (face, mask), dst_mask = self.model(batch, "src"), None
        return Prediction(face.float().permute(0, 2, 3, 1).numpy(), mask[:, 0].float().numpy(),
                          None if dst_mask is None else dst_mask[:, 0].float().numpy())


def count_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def count_prediction_workers() -> int:
    """Prediction threads for a render: PREDICTION_WORKERS, or one on a single core."""
    return max(1, min(PREDICTION_WORKERS, count_cores()))


@contextmanager
def prediction_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """Threads that predict frames during a render, each running torch on its share of the cores.

    The share is the cores less one (for decoding, pasting and encoding) divided among the
    workers, at least one thread: on two cores, two workers of one thread each. It is set in each
    worker itself: OpenMP (oneDNN's convolutions, MKL's matrix products) keeps a thread count per
    thread, so a count set on the render thread alone would leave every worker on all the cores,
    and thread pools contending for them spin-wait.

    Args:
        workers: prediction threads (see count_prediction_workers).
    """
    threads = max(1, (count_cores() - 1) // workers)
    previous = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="merge-predict", initializer=torch.set_num_threads,
                                initargs=(threads,)) as pool:
            yield pool
    finally:
        torch.set_num_threads(previous)  # the worker's setting is also torch's process-wide count


Prepared = TypeVar("Prepared")


@dataclass
class PredictionBatch(Generic[Prepared]):
    """Consecutive prepared frames whose faces one worker predicts in one model call."""

    frames: list[Prepared] = field(default_factory=list)
    future: Future[list[Prediction]] | None = None  # set once submitted


def predict_ahead(
    frames: Iterable[tuple[int, np.ndarray]],
    prepare: Callable[[int, np.ndarray], Prepared | None],
    predict_frames: Callable[[list[Prepared]], list[Prediction]],
    paste: Callable[[Prepared, Prediction], np.ndarray],
    workers: int,
    frames_per_batch: int,
    batches_ahead: int,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Run a stream of frames through prepare -> predict (worker threads, in batches) -> paste (in order).

    The calling thread decodes (pulls ``frames``), prepares and pastes; up to ``batches_ahead``
    batches per worker are queued or predicted meanwhile. Frames without faces (prepare gives
    None) pass through in their place.

    Args:
        frames: (frame index, (H, W, 3) uint8 frame), in order.
        prepare: cuts a frame's faces out for the model; None when it has none.
        predict_frames: the model on several prepared frames at once, one Prediction per frame.
        paste: puts a frame's predicted faces back, returning the rendered frame; called in frame order.
        workers, frames_per_batch, batches_ahead: threads, frames per model call, batches queued per thread.

    Returns:
        Iterator of (frame index, frame, rendered frame), in the order of ``frames``; closing it
        cancels the queued predictions.
    """
    ahead = batches_ahead * workers * frames_per_batch  # frames held between decoding and pasting
    with prediction_pool(workers) as pool:
        pending: deque[tuple[int, np.ndarray, Prepared | None, PredictionBatch | None, int]] = deque()
        batch: PredictionBatch | None = None  # the batch still being filled

        def paste_oldest() -> tuple[int, np.ndarray, np.ndarray]:
            frame_index, frame, prepared, its_batch, position = pending.popleft()
            if prepared is None:
                return frame_index, frame, frame
            if its_batch.future is None:  # still being filled: predict the frames it has
                its_batch.future = pool.submit(predict_frames, its_batch.frames)
            return frame_index, frame, paste(prepared, its_batch.future.result()[position])

        try:
            for frame_index, frame in frames:
                prepared = prepare(frame_index, frame)
                if prepared is None:
                    pending.append((frame_index, frame, None, None, 0))
                else:
                    batch = batch or PredictionBatch()
                    pending.append((frame_index, frame, prepared, batch, len(batch.frames)))
                    batch.frames.append(prepared)
                    if len(batch.frames) == frames_per_batch:
                        batch.future = pool.submit(predict_frames, batch.frames)
                        batch = None
                if len(pending) > ahead:
                    yield paste_oldest()
            while pending:
                yield paste_oldest()
        finally:
            for _, _, _, waiting, _ in pending:
                if waiting is not None and waiting.future is not None:
                    waiting.future.cancel()
