"""Best-N faces that keep the pose coverage of a faceset.

Faces are binned on the pose grid of tasks.pose (10-degree yaw x pitch cells). Picking is round-robin over the occupied cells: every
cell gives its best face before any cell gives its second, so rare poses (profiles, looking up)
survive a cut that a plain "top-N by quality" would fill with sharp frontal faces.
"""

from __future__ import annotations

import logging

import numpy as np

from tasks.pose import PITCH_EDGES, YAW_EDGES, pose_bins

logger = logging.getLogger(__name__)

def pose_cells(yaw: np.ndarray, pitch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(yaw cell (N,), pitch cell (N,)) int64 of each face on the pose grid (tasks.pose.YAW_EDGES x PITCH_EDGES)."""
    yaw, pitch = np.asarray(yaw, dtype=np.float64), np.asarray(pitch, dtype=np.float64)
    if yaw.shape != pitch.shape or yaw.ndim != 1:
        raise ValueError(f"yaw and pitch must be 1-D arrays of one length, got {yaw.shape} and {pitch.shape}")
    return pose_bins(yaw, YAW_EDGES), pose_bins(pitch, PITCH_EDGES)


def coverage(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Occupancy histogram of the pose grid.

    Args:
        yaw, pitch: (N,) degrees.

    Returns:
        (yaw cells, pitch cells) = (18, 12) int64 counts of faces per cell.
    """
    yaw_cell, pitch_cell = pose_cells(yaw, pitch)
    pitch_cells = len(PITCH_EDGES) - 1
    counts = np.bincount(yaw_cell * pitch_cells + pitch_cell, minlength=(len(YAW_EDGES) - 1) * pitch_cells)
    return counts.reshape(len(YAW_EDGES) - 1, pitch_cells)


def select_best(yaw: np.ndarray, pitch: np.ndarray, quality: np.ndarray, count: int) -> np.ndarray:
    """Pick `count` faces, spreading them over the pose grid, best quality first within a cell.

    Round r takes the r-th best face of every cell that has one; the last, partial round takes
    the cells whose r-th face has the highest quality. Ties go to the lower index, so the same
    input always gives the same selection.

    Args:
        yaw, pitch: (N,) degrees.
        quality: (N,) higher is better (e.g. the blur score); NaN counts as worst.
        count: how many faces to keep; >= N keeps all.

    Returns:
        (min(count, N),) int64 indices, in picking order (round by round).

    Raises:
        ValueError: count < 0, bad bins or mismatched shapes.
    """
    yaw_cell, pitch_cell = pose_cells(yaw, pitch)
    quality = np.nan_to_num(np.asarray(quality, dtype=np.float64), nan=-np.inf)
    if quality.shape != yaw_cell.shape:
        raise ValueError(f"quality must have one value per face ({len(yaw_cell)}), got shape {quality.shape}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    total = len(quality)
    cell = yaw_cell * (len(PITCH_EDGES) - 1) + pitch_cell
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
