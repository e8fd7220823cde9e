"""Near-duplicate faces: consecutive video frames that add nothing new to a faceset.

Faces are compared as small grayscale thumbnails of their aligned crops, each normalised to zero
mean and unit contrast so a change of exposure alone does not make two faces differ. The pixel
difference of two thumbnails is the root-mean-square of their normalised difference, which is
sqrt(2 * (1 - r)) for their correlation r: 0 for the same picture, about 1.4 for unrelated ones.
Computing it through correlations turns the all-pairs comparison into matrix products, so
thousands of faces take a second or two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import cv2
import numpy as np

logger = logging.getLogger(__name__)

# Measured on talking_head_a.mp4 (32 px whole_face thumbnails): faces 1 frame apart differ by
# 0.05-0.2, faces a second or more apart by 0.3 and more; different people by 0.6 and more.
DEFAULT_PIXEL_THRESHOLD = 0.25
# Descriptor distance under which two faces can only be the same person in nearly the same pose
# and expression (frames 1 apart: below 0.15; the same person across a clip: up to about 0.4).
DEFAULT_EMBEDDING_THRESHOLD = 0.35
BLOCK_SIZE = 512


def make_thumbnails(jpegs: list[bytes], size: int = 32) -> np.ndarray:
    """Decode aligned crops into small grayscale thumbnails.

    Args:
        jpegs: encoded crops (the faces table's `image` column).
        size: thumbnail side in pixels.

    Returns:
        (N, size, size) uint8 array.

    Raises:
        ValueError: size < 4, or a crop cannot be decoded (the message gives its position).
    """
    if size < 4:
        raise ValueError(f"thumbnail size must be >= 4, got {size}")
    thumbnails = np.empty((len(jpegs), size, size), dtype=np.uint8)
    for index, data in enumerate(jpegs):
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise ValueError(f"face crop {index} of {len(jpegs)} is not a decodable image; re-run extraction")
        interpolation = cv2.INTER_AREA if min(gray.shape) >= size else cv2.INTER_LINEAR
        thumbnails[index] = cv2.resize(gray, (size, size), interpolation=interpolation)
    return thumbnails


def normalise_thumbnails(thumbnails: np.ndarray) -> np.ndarray:
    """(N, t, t) uint8 -> (N, t*t) float32 rows of zero mean and unit root-mean-square."""
    rows = thumbnails.reshape(len(thumbnails), -1).astype(np.float32)
    rows -= rows.mean(axis=1, keepdims=True)
    spread = np.sqrt((rows**2).mean(axis=1, keepdims=True))
    return rows / np.maximum(spread, 1e-3)  # a flat thumbnail stays all zeros


def pixel_differences(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(A, D) x (B, D) normalised rows -> (A, B) root-mean-square differences."""
    correlation = first @ second.T / first.shape[1]
    return np.sqrt(np.clip(2.0 - 2.0 * correlation, 0.0, None))


def embedding_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(A, D) x (B, D) -> (A, B) Euclidean distances; NaN where either row is missing."""
    squared = (first**2).sum(axis=1)[:, None] + (second**2).sum(axis=1)[None, :] - 2.0 * first @ second.T
    return np.sqrt(np.clip(squared, 0.0, None))


def cover_greedily(
    order: np.ndarray,
    close_distances: Callable[[np.ndarray, np.ndarray], np.ndarray],
    block_size: int = BLOCK_SIZE,
) -> np.ndarray:
    """Walk items in `order`; each becomes a representative unless it is close to one already chosen.

    Args:
        order: (N,) permutation of range(N), preferred representatives first.
        close_distances: (block indices (B,), candidate indices (C,)) -> (B, C) distances, inf
            where the pair is not close enough to merge.
        block_size: items compared per call (memory ~ block_size x representatives).

    Returns:
        (N,) int64: the index of each item's representative (itself for a representative), the
        nearest close one among those chosen before it.
    """
    count = len(order)
    representative = np.arange(count, dtype=np.int64)
    chosen: list[int] = []  # item indices of the representatives so far, in the order chosen
    for start in range(0, count, block_size):
        block = order[start:start + block_size]
        earlier = len(chosen)
        # (B, earlier + B): against representatives of earlier blocks, then against the block itself
        candidates = np.concatenate([np.asarray(chosen, dtype=np.int64), block])
        distance = close_distances(block, candidates)
        chosen_in_block = np.zeros(len(block), dtype=bool)
        for offset, item in enumerate(block):
            row = np.concatenate([distance[offset, :earlier],
                                  np.where(chosen_in_block[:offset], distance[offset, earlier:earlier + offset], np.inf)])
            nearest = int(np.argmin(row)) if len(row) else -1
            if nearest >= 0 and np.isfinite(row[nearest]):
                representative[item] = candidates[nearest]
            else:
                chosen_in_block[offset] = True
        chosen.extend(block[chosen_in_block].tolist())
    return representative


def near_duplicates(
    thumbnails: np.ndarray,
    embeddings: np.ndarray | None,
    order: np.ndarray,
    pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD,
    embedding_threshold: float = DEFAULT_EMBEDDING_THRESHOLD,
    block_size: int = BLOCK_SIZE,
) -> tuple[np.ndarray, dict[int, int]]:
    """Keep one face of each group of near-identical faces, the best one first.

    Faces are visited in `order`; a face is dropped when its pixel difference to a face already
    kept is below `pixel_threshold` and, where both have descriptors, their descriptor distance is
    below `embedding_threshold` too (so two people are never merged by a look-alike thumbnail).

    Args:
        thumbnails: (N, t, t) uint8 grayscale thumbnails (make_thumbnails).
        embeddings: (N, D) descriptors, NaN rows where missing; None to compare pixels only.
        order: (N,) permutation of range(N), best face first (e.g. sharpest).
        pixel_threshold: root-mean-square difference of normalised thumbnails (0 .. 2).
        embedding_threshold: descriptor distance a duplicate must also be under.
        block_size: faces compared per matrix product (memory ~ block_size x kept faces).

    Returns:
        (keep mask (N,) bool, {dropped index: index of the kept face it duplicates}).

    Raises:
        ValueError: shapes disagree or `order` is not a permutation.
    """
    count = len(thumbnails)
    order = np.asarray(order, dtype=np.int64)
    if thumbnails.ndim != 3 or order.shape != (count,) or not np.array_equal(np.sort(order), np.arange(count)):
        raise ValueError(f"need (N, t, t) thumbnails and a permutation of range(N) as order; got thumbnails "
                         f"{thumbnails.shape} and order of shape {order.shape}")
    if embeddings is not None and (embeddings.ndim != 2 or len(embeddings) != count):
        raise ValueError(f"embeddings must be (N, D) with N = {count}, got {embeddings.shape}")
    rows = normalise_thumbnails(thumbnails)
    descriptors = None if embeddings is None else np.asarray(embeddings, dtype=np.float32)

    def close_differences(block: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        difference = pixel_differences(rows[block], rows[candidates])
        close = difference < pixel_threshold
        if descriptors is not None:
            distance = embedding_distances(descriptors[block], descriptors[candidates])
            close &= ~(distance >= embedding_threshold)  # a missing descriptor does not veto
        return np.where(close, difference, np.inf)

    representative = cover_greedily(order, close_differences, block_size)
    keep = representative == np.arange(count)
    duplicate_of = {int(index): int(representative[index]) for index in np.flatnonzero(~keep)}
    logger.info("near-duplicates: kept %d of %d faces", int(keep.sum()), count)
    return keep, duplicate_of
