"""An invisible watermark in every rendered frame: "made by faceflow, synthetic", plus a revision tag.

Algorithm (spread-transform dither modulation on chip means of the luma, Chen & Wornell 2001):

- The frame is cut into a GRID of 32 x 32 "chips" whose borders are fractions of the frame size, so
  any resize keeps them in place. The reader only needs the mean luma of each chip.
- Each of the 32 payload bits owns 32 chips scattered over the frame by a fixed keyed permutation,
  each with a carrier sign (+1 or -1, half of each per bit, so a uniform brightness offset cancels).
  A bit's statistic is its projection p = mean(carrier * chip mean).
- Embedding moves p onto the nearest point of the bit's lattice: STEP * k + dither for 0,
  STEP * k + dither + STEP / 2 for 1 (quantisation-index modulation: the picture's own content
  does not interfere, unlike an additive spread-spectrum pattern). The move is overshot by BOOST
  because compression attenuates it (by 0.5-0.9 after libx264 CRF 23 at half size, measured).
- The move is painted as smooth sine bumps, one per chip, shaped by a texture mask (local standard
  deviation of the luma, eroded so edges next to flat areas stay clean, and faded near black and
  white), so the change hides in hair, skin and clutter and stays faint on flat walls. The same
  change goes to B, G and R: a pure luma change. The analysis and the change are computed at
  about WORK_LINES lines and the change is upscaled, so embedding costs a few ms per 720p frame.
- Reading (tasks.watermark_reader): soft bit = -cos(2 pi (p - dither) / STEP), in [-1, 1], > 0 for a 1. A video is read on
  frames spread over the file and the soft bits are summed (a vote, frames weighted by how clearly
  they read). Payload = 20-bit MAGIC, then an 8-bit revision tag as a 12-bit Hamming codeword,
  decoded by the nearest codeword to the soft bits (one wrong bit is corrected). A frame or video
  counts as watermarked when at least 19 of the 20 magic bits match and their mean agreement
  reaches MIN_CONFIDENCE: an unmarked picture passes by chance about once in 50,000.

Limits: the key is public (this file), so the mark labels honest output and is not proof against
someone who removes it on purpose; crops, rotations, mirroring and strong brightness or contrast
edits defeat it (the C2PA manifest and the provenance sidecar are the other two labels).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

logger = logging.getLogger(__name__)

GRID = (32, 32)  # chips (rows, columns), relative to the frame size
PAYLOAD_BITS = 32
MAGIC = 0xFACE5  # first 20 payload bits: faceflow synthetic media, version 1
MAGIC_BITS = 20
MAGIC_ERRORS_ALLOWED = 1  # a re-encode can flip a bit for good in a static scene: voting cannot fix that
TAG_BITS = 8  # revision tag, sent as a Hamming(12, 8) codeword in the last 12 payload bits
STEP = 4.0  # lattice step of a bit's projection, in 8-bit luma levels
BOOST = 1.2  # overshoot of each move: compression takes part of it back
WORK_LINES = 180  # analysis resolution: frames are reduced by an integer factor to about this height
MASK_REFERENCE_SD = 4.0  # local luma standard deviation that gets the plain amount of change
MASK_RANGE = (0.25, 3.0)  # least and most change, relative to the plain amount
MAX_CHANGE = 12.0  # luma levels, per pixel
KEY = b"faceflow-watermark-v1"


def _build_layout() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bit of each chip, carrier sign of each chip, dither per bit, chips per bit): fixed by KEY."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(KEY).digest()[:8], "little"))
    chips = GRID[0] * GRID[1]
    order = rng.permutation(chips)
    bit_of = np.empty(chips, np.int64)
    bit_of[order] = np.arange(chips) % PAYLOAD_BITS
    carrier = np.empty(chips, np.float32)
    carrier[order] = np.where((np.arange(chips) // PAYLOAD_BITS) % 2 == 0, 1.0, -1.0)  # half +1, half -1 per bit
    dither = (rng.uniform(0.0, 1.0, PAYLOAD_BITS) * STEP).astype(np.float32)
    return bit_of, carrier, dither, np.bincount(bit_of, minlength=PAYLOAD_BITS).astype(np.float32)


BIT_OF, CARRIER, DITHER, CHIPS_PER_BIT = _build_layout()


@dataclass(frozen=True)
class WorkGrid:
    """The chip grid on one work-resolution size."""

    row_starts: np.ndarray  # (GRID rows,) first work row of each chip row
    column_starts: np.ndarray
    row_chip: np.ndarray  # (work height,) chip row of every work row
    column_chip: np.ndarray
    window: np.ndarray  # (work height, work width) float32: a sine bump per chip, 0 at chip borders
    window_means: np.ndarray  # (GRID) mean of the window per chip
    rounding_dither: np.ndarray  # (work height, work width) uniform -0.5..0.5: unbiased rounding of the change


@lru_cache(maxsize=8)
def work_grid(height: int, width: int) -> WorkGrid:
    """The chip layout of a work image of this size (cached: every frame of a video shares it)."""
    axes = []
    for size, chips in ((height, GRID[0]), (width, GRID[1])):
        starts = np.round(np.arange(chips) * size / chips).astype(np.int64)
        ends = np.append(starts[1:], size)
        chip = np.repeat(np.arange(chips), ends - starts)
        phase = (np.arange(size) + 0.5 - starts[chip]) / (ends - starts)[chip]
        axes.append((starts, chip, np.sin(np.pi * phase).astype(np.float32)))
    (row_starts, row_chip, row_bump), (column_starts, column_chip, column_bump) = axes
    window = row_bump[:, None] * column_bump[None, :]
    grid = WorkGrid(row_starts, column_starts, row_chip, column_chip, window, np.empty(0, np.float32),
                    np.random.default_rng(0).uniform(-0.5, 0.5, (height, width)).astype(np.float32))
    return replace(grid, window_means=chip_means(window, grid))


def chip_means(image: np.ndarray, grid: WorkGrid) -> np.ndarray:
    """(work height, work width) float32 -> (GRID) mean of each chip."""
    sums = np.add.reduceat(np.add.reduceat(image, grid.row_starts, axis=0), grid.column_starts, axis=1)
    areas = np.outer(np.diff(np.append(grid.row_starts, image.shape[0])), np.diff(np.append(grid.column_starts, image.shape[1])))
    return (sums / areas).astype(np.float32)


def to_work_luma(frame_bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR or (H, W) gray -> float32 luma reduced by an integer factor to about WORK_LINES."""
    factor = max(1, round(min(frame_bgr.shape[:2]) / WORK_LINES))
    if factor > 1:  # reduce first: the luma of a mean is the mean of the luma, and the frame is large
        size = (frame_bgr.shape[1] // factor, frame_bgr.shape[0] // factor)
        frame_bgr = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if frame_bgr.ndim == 3 else frame_bgr
    return gray.astype(np.float32)


def project_bits(means: np.ndarray) -> np.ndarray:
    """(GRID) chip means -> (PAYLOAD_BITS,) projections p."""
    return np.bincount(BIT_OF, weights=means.ravel() * CARRIER, minlength=PAYLOAD_BITS) / CHIPS_PER_BIT


def texture_mask(luma: np.ndarray) -> np.ndarray:
    """(h, w) work luma -> (h, w) relative amount of change each pixel can hide."""
    mean = cv2.blur(luma, (3, 3))
    variance = cv2.subtract(cv2.blur(cv2.multiply(luma, luma), (3, 3)), cv2.multiply(mean, mean))
    deviation = cv2.sqrt(cv2.max(variance, 0.0))
    deviation = cv2.erode(deviation, np.ones((5, 5), np.uint8))  # an edge between flat areas is not texture
    mask = cv2.min(cv2.max(deviation * (1.0 / MASK_REFERENCE_SD), MASK_RANGE[0]), MASK_RANGE[1])
    # fade out near black and white, where the change would clip
    ends = cv2.min(cv2.max(cv2.min(mean - 6.0, 249.0 - mean) * (1.0 / 16.0), 0.05), 1.0)
    return cv2.multiply(mask, ends)


def hamming_codeword(tag: int) -> list[int]:
    """8 data bits -> 12-bit Hamming codeword (parity at positions 1, 2, 4, 8), position 1 first."""
    data = [(tag >> (TAG_BITS - 1 - index)) & 1 for index in range(TAG_BITS)]
    word, data_iter = [0] * 13, iter(data)
    for position in range(1, 13):
        if position & (position - 1):  # not a power of two: a data position
            word[position] = next(data_iter)
    for parity in (1, 2, 4, 8):
        word[parity] = sum(word[position] for position in range(1, 13) if position & parity) % 2
    return word[1:]


def encode_payload(revision_tag: int) -> np.ndarray:
    """MAGIC and an 8-bit revision tag -> (PAYLOAD_BITS,) uint8 bits.

    Raises:
        ValueError: the tag does not fit in TAG_BITS bits.
    """
    if not 0 <= revision_tag < 1 << TAG_BITS:
        raise ValueError(f"revision_tag must fit in {TAG_BITS} bits (0..{(1 << TAG_BITS) - 1}), got {revision_tag}")
    magic = [(MAGIC >> (MAGIC_BITS - 1 - index)) & 1 for index in range(MAGIC_BITS)]
    return np.array(magic + hamming_codeword(revision_tag), np.uint8)


MAGIC_SIGNS = encode_payload(0)[:MAGIC_BITS].astype(np.float32) * 2 - 1  # (MAGIC_BITS,) +-1
TAG_CODEBOOK = np.array([hamming_codeword(tag) for tag in range(1 << TAG_BITS)], np.float32) * 2 - 1  # (256, 12) +-1


def embed_watermark(frame_bgr: np.ndarray, payload: np.ndarray) -> np.ndarray:
    """Return a copy of the frame carrying the payload.

    Args:
        frame_bgr: (H, W, 3) uint8 BGR frame, any size from about 64 px up.
        payload: (PAYLOAD_BITS,) bits from encode_payload.

    Returns:
        (H, W, 3) uint8 BGR frame; only its luma changes, by at most MAX_CHANGE levels.

    Raises:
        ValueError: the frame is not uint8 (H, W, 3) or the payload has the wrong length.
    """
    if frame_bgr.dtype != np.uint8 or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or min(frame_bgr.shape[:2]) < GRID[0]:
        raise ValueError(f"expected a uint8 (H, W, 3) frame of at least {GRID[0]} px, got {frame_bgr.dtype} {frame_bgr.shape}")
    if len(payload) != PAYLOAD_BITS:
        raise ValueError(f"payload must have {PAYLOAD_BITS} bits, got {len(payload)}")
    luma = to_work_luma(frame_bgr)
    grid = work_grid(*luma.shape)
    projections = project_bits(chip_means(luma, grid))
    target = DITHER + np.asarray(payload, np.float32) * (STEP / 2)
    moves = (np.round((projections - target) / STEP) * STEP + target - projections) * BOOST
    shape = grid.window * texture_mask(luma)
    # a bit's move is split over its chips in proportion to how much change each can hide
    capacity = (chip_means(shape, grid) / grid.window_means).ravel()
    scale = moves * CHIPS_PER_BIT / np.maximum(np.bincount(BIT_OF, weights=capacity, minlength=PAYLOAD_BITS), 1e-3)
    per_chip = (scale[BIT_OF] * CARRIER).reshape(GRID) / grid.window_means
    change = np.clip(per_chip[grid.row_chip][:, grid.column_chip] * shape, -MAX_CHANGE, MAX_CHANGE) + grid.rounding_dither
    # rounded uint8 lighter and darker parts, the same on B, G and R, upscaled to the frame: saturating
    # integer add and subtract are the fastest full-size operations
    height, width = frame_bgr.shape[:2]
    lighter, darker = (cv2.cvtColor(cv2.convertScaleAbs(part), cv2.COLOR_GRAY2BGR)
                       for part in (cv2.max(change, 0.0), cv2.min(change, 0.0)))
    if lighter.shape[:2] != (height, width):
        lighter, darker = (cv2.resize(part, (width, height), interpolation=cv2.INTER_LINEAR) for part in (lighter, darker))
    marked = cv2.add(frame_bgr, lighter)
    return cv2.subtract(marked, darker, dst=marked)


class WatermarkingSink:
    """Wraps a frame sink (anything with ``write(frame)``): every frame gets the watermark before it is written."""

    def __init__(self, sink, payload: np.ndarray) -> None:
        self.sink, self.payload = sink, payload

    def write(self, frame_bgr: np.ndarray) -> None:
        self.sink.write(embed_watermark(frame_bgr, self.payload))


def watermarking_sink(sink, payload: np.ndarray | None):
    """``sink`` itself when ``payload`` is None (labelling off), else a WatermarkingSink around it."""
    return sink if payload is None else WatermarkingSink(sink, payload)
