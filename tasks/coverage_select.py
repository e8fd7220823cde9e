"""Best-N faces that keep the pose coverage of a faceset.

Faces are binned on a (yaw, pitch) grid. Picking is round-robin over the occupied cells: every
cell gives its best face before any cell gives its second, so rare poses (profiles, looking up)
survive a cut that a plain "top-N by quality" would fill with sharp frontal faces.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

# Grid extents in degrees (tasks.pose conventions); poses beyond them fall into the edge cells.
# Yaw spans profile to profile; pitch spans the range a face stays detectable in. With the default
# 16 x 8 bins both axes get 11.25-degree cells.
YAW_RANGE = (-90.0, 90.0)
PITCH_RANGE = (-45.0, 45.0)


def pose_cells(yaw: np.ndarray, pitch: np.ndarray, yaw_bins: int = 16, pitch_bins: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(yaw bin (N,), pitch bin (N,)) int64 of each face; NaN angles fall into the middle bin."""
    if yaw_bins < 1 or pitch_bins < 1:
        raise ValueError(f"yaw_bins and pitch_bins must be >= 1, got {yaw_bins} and {pitch_bins}")
    yaw, pitch = np.asarray(yaw, dtype=np.float64), np.asarray(pitch, dtype=np.float64)
    if yaw.shape != pitch.shape or yaw.ndim != 1:
        raise ValueError(f"yaw and pitch must be 1-D arrays of one length, got {yaw.shape} and {pitch.shape}")

    def to_bins(angles: np.ndarray, extent: tuple[float, float], bins: int) -> np.ndarray:
        low, high = extent
        position = np.nan_to_num((angles - low) / (high - low), nan=0.5)
        return np.clip((position * bins).astype(np.int64), 0, bins - 1)

    return to_bins(yaw, YAW_RANGE, yaw_bins), to_bins(pitch, PITCH_RANGE, pitch_bins)


def coverage(yaw: np.ndarray, pitch: np.ndarray, yaw_bins: int = 16, pitch_bins: int = 8) -> np.ndarray:
    """Occupancy histogram of the pose grid.

    Args:
        yaw, pitch: (N,) degrees.
        yaw_bins, pitch_bins: grid size over YAW_RANGE x PITCH_RANGE.

    Returns:
        (yaw_bins, pitch_bins) int64 counts of faces per cell.
    """
    yaw_cell, pitch_cell = pose_cells(yaw, pitch, yaw_bins, pitch_bins)
    counts = np.bincount(yaw_cell * pitch_bins + pitch_cell, minlength=yaw_bins * pitch_bins)
    return counts.reshape(yaw_bins, pitch_bins)


def select_best(yaw: np.ndarray, pitch: np.ndarray, quality: np.ndarray, count: int, yaw_bins: int = 16,
                pitch_bins: int = 8) -> np.ndarray:
    """Pick `count` faces, spreading them over the pose grid, best quality first within a cell.

    Round r takes the r-th best face of every cell that has one; the last, partial round takes
    the cells whose r-th face has the highest quality. Ties go to the lower index, so the same
    input always gives the same selection.

    Args:
        yaw, pitch: (N,) degrees.
        quality: (N,) higher is better (e.g. the blur score); NaN counts as worst.
        count: how many faces to keep; >= N keeps all.
        yaw_bins, pitch_bins: grid size over YAW_RANGE x PITCH_RANGE.

    Returns:
        (min(count, N),) int64 indices, in picking order (round by round).

    Raises:
        ValueError: count < 0, bad bins or mismatched shapes.
    """
    yaw_cell, pitch_cell = pose_cells(yaw, pitch, yaw_bins, pitch_bins)
    quality = np.nan_to_num(np.asarray(quality, dtype=np.float64), nan=-np.inf)
    if quality.shape != yaw_cell.shape:
        raise ValueError(f"quality must have one value per face ({len(yaw_cell)}), got shape {quality.shape}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    total = len(quality)
    cell = yaw_cell * pitch_bins + pitch_cell
    index = np.arange(total)
    # rank of each face within its cell: sort by cell, then quality (best first), then index
    by_cell = np.lexsort((index, -quality, cell))
    sorted_cells = cell[by_cell]
    cell_start = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    starts = np.repeat(cell_start, np.diff(np.r_[cell_start, total]))
    rank = np.empty(total, dtype=np.int64)
    rank[by_cell] = np.arange(total) - starts
    picking = np.lexsort((index, -quality, rank))
    selected = picking[:count]
    logger.debug("selected %d of %d faces over %d occupied pose cells", len(selected), total, len(np.unique(cell)))
    return selected.astype(np.int64)
