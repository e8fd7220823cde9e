"""The covariance and distribution colour transfers (lct, mkl, idt, sot), and the checks every transfer shares.

tasks.color holds the registry, Reinhard's transfer (the merge default) and the overview of the
methods; the transfers here cost more (3x3 matrix roots, or ten rounds of 1-D optimal transport)
and are used where a face's colours need more than a mean and a spread. Images are float32 HWC
BGR in [0, 1] (uint8 accepted); masks are (H, W) or (H, W, 1) float weights in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Below this total mask weight (in pixels) colour statistics are meaningless.
MINIMUM_MASK_WEIGHT = 1.0


class ColorTransferError(ValueError):
    """A colour transfer was asked for with an unknown kind or unusable images/masks."""


def as_float_image(image: np.ndarray, name: str) -> np.ndarray:
    """Return `image` as float32 (H, W, 3) in [0, 1]; uint8 input is scaled by 1/255.

    Raises:
        ColorTransferError: if the image is not 3-channel or has an unsupported dtype.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ColorTransferError(f"{name} must be an (H, W, 3) BGR image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise ColorTransferError(f"{name} must be uint8 or float in [0, 1], got dtype {image.dtype}")
    return image.astype(np.float32, copy=False)


def as_mask_weights(mask: np.ndarray | None, shape: tuple[int, int], name: str) -> np.ndarray | None:
    """Return `mask` as float32 (H, W) weights matching `shape`, or None when no mask is given.

    Raises:
        ColorTransferError: if the mask's height/width differ from `shape`.
    """
    if mask is None:
        return None
    weights = mask[..., 0] if mask.ndim == 3 and mask.shape[2] == 1 else mask
    if weights.shape != shape:
        raise ColorTransferError(
            f"{name} has shape {mask.shape}; expected {shape} or {shape + (1,)} to match its image"
        )
    if weights.dtype == np.uint8:
        return weights.astype(np.float32) / 255.0
    return weights.astype(np.float32, copy=False)


def masked_rows(image: np.ndarray, weights: np.ndarray | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the (H*W, 3) pixels with weight > 0, and their weights: two (M,) arrays.

    Raises:
        ColorTransferError: if the mask weights sum to (almost) nothing.
    """
    if weights is None:
        return np.arange(image.shape[0] * image.shape[1]), np.ones(image.shape[0] * image.shape[1])
    flat_weights = weights.reshape(-1).astype(np.float64)
    rows = np.flatnonzero(flat_weights > 0)
    if flat_weights[rows].sum() < MINIMUM_MASK_WEIGHT:
        raise ColorTransferError(
            f"{name} covers (almost) no pixels (total weight {flat_weights.sum():.3g}); pass a non-empty mask or none"
        )
    return rows, flat_weights[rows]



# Added to covariance eigenvalues so near-flat (single-colour) regions keep the maps finite.
COVARIANCE_FLOOR = 1e-5
# idt/sot: statistics from at most this many (randomly chosen) masked pixels of each image, and each
# 1-D map tabulated at this many points across the projected values, then interpolated per pixel.
MAX_STATISTIC_PIXELS = 4096
MAP_TABLE_POINTS = 256
IDT_ITERATIONS = 10
SOT_STEPS = 10
SOT_DIRECTIONS_PER_STEP = 5
TRANSFER_SEED = 0


def weighted_mean_covariance(columns: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean (3,) and covariance (3, 3) of pixels given as (3, M) columns, in float64."""
    columns = columns.astype(np.float64)
    mean = columns @ weights / weights.sum()
    centred = columns - mean[:, None]
    return mean, (centred * weights) @ centred.T / weights.sum()


def symmetric_power(matrix: np.ndarray, power: float, floor: float = COVARIANCE_FLOOR) -> np.ndarray:
    """matrix^power of a symmetric positive semi-definite (3, 3) matrix, eigenvalues floored at `floor`."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.maximum(eigenvalues, floor) ** power) @ eigenvectors.T


def prepare_images(
    source: np.ndarray, target: np.ndarray, source_mask: np.ndarray | None, target_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Both images' pixels as (3, H*W) float32 columns, and the masked (rows, weights) of each."""
    source_image = as_float_image(source, "source")
    target_image = as_float_image(target, "target")
    source_weights = as_mask_weights(source_mask, source_image.shape[:2], "source_mask")
    target_weights = as_mask_weights(target_mask, target_image.shape[:2], "target_mask")
    return (np.ascontiguousarray(source_image.reshape(-1, 3).T), np.ascontiguousarray(target_image.reshape(-1, 3).T),
            masked_rows(source_image, source_weights, "source_mask"),
            masked_rows(target_image, target_weights, "target_mask"))


def transfer_linear_map(
    source: np.ndarray, target: np.ndarray, source_mask: np.ndarray | None, target_mask: np.ndarray | None,
    solve: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """x -> M (x - mu_s) + mu_t for every source pixel, M = solve(Cs, Ct) from the masked statistics."""
    source_columns, target_columns, (source_rows, source_weights), (target_rows, target_weights) = prepare_images(
        source, target, source_mask, target_mask)
    source_mean, source_covariance = weighted_mean_covariance(source_columns[:, source_rows], source_weights)
    target_mean, target_covariance = weighted_mean_covariance(target_columns[:, target_rows], target_weights)
    matrix = solve(source_covariance, target_covariance).astype(np.float32)
    offset = (target_mean - matrix @ source_mean).astype(np.float32)
    return np.clip((matrix @ source_columns + offset[:, None]).T.reshape(source.shape), 0.0, 1.0)


def linear_color_transfer(
    source: np.ndarray, target: np.ndarray, source_mask: np.ndarray | None = None, target_mask: np.ndarray | None = None
) -> np.ndarray:
    """LCT: x -> Ct^1/2 Cs^-1/2 (x - mu_s) + mu_t in BGR, giving the target's mean and covariance.

    Args, Returns and Raises as ``tasks.color.reinhard_color_transfer``; masks weight the statistics.
    """
    return transfer_linear_map(source, target, source_mask, target_mask, lambda source_covariance, target_covariance:
                               symmetric_power(target_covariance, 0.5) @ symmetric_power(source_covariance, -0.5))


def monge_kantorovich_transfer(
    source: np.ndarray, target: np.ndarray, source_mask: np.ndarray | None = None, target_mask: np.ndarray | None = None
) -> np.ndarray:
    """MKL: the linear map T with T Cs T = Ct that moves colours the least (Pitie and Kokaram 2007).

    T = Cs^-1/2 (Cs^1/2 Ct Cs^1/2)^1/2 Cs^-1/2, applied as x -> T (x - mu_s) + mu_t in BGR.
    Args, Returns and Raises as ``tasks.color.reinhard_color_transfer``; masks weight the statistics.
    """
    def solve(source_covariance: np.ndarray, target_covariance: np.ndarray) -> np.ndarray:
        root, inverse_root = symmetric_power(source_covariance, 0.5), symmetric_power(source_covariance, -0.5)
        return inverse_root @ symmetric_power(root @ target_covariance @ root, 0.5, floor=0.0) @ inverse_root

    return transfer_linear_map(source, target, source_mask, target_mask, solve)


def weighted_quantiles(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values (M,) and their cumulative-weight positions in (0, 1) (M,): an empirical CDF."""
    if weights.min() == weights.max():  # no mask or a hard one: plain sorting is faster than argsort
        return np.sort(values), (np.arange(len(values)) + 0.5) / len(values)
    order = np.argsort(values)
    sorted_weights = weights[order]
    positions = (np.cumsum(sorted_weights) - 0.5 * sorted_weights) / sorted_weights.sum()
    return values[order], positions


def match_marginals(projected: np.ndarray, source_samples: np.ndarray, source_weights: np.ndarray,
                    target_samples: np.ndarray, target_weights: np.ndarray) -> np.ndarray:
    """Map each row of `projected` (K, N) so the source samples' distribution becomes the target's.

    Per row the 1-D optimal transport map F_t^-1(F_s(x)) is tabulated at MAP_TABLE_POINTS points
    across the source samples' range and linearly interpolated for every pixel; values beyond that
    range move by the shift at its nearer end, so pixels outside the mask never change the map.
    (K, N) -> (K, N).
    """
    rows = projected.shape[0]
    low = source_samples.min(axis=1, keepdims=True)
    span = np.maximum(source_samples.max(axis=1, keepdims=True) - low, 1e-6)
    grid = low + span * np.linspace(0.0, 1.0, MAP_TABLE_POINTS, dtype=np.float32)  # (K, P)
    tables = np.empty((rows, MAP_TABLE_POINTS), dtype=np.float32)
    for row in range(rows):
        source_sorted, source_positions = weighted_quantiles(source_samples[row], source_weights)
        target_sorted, target_positions = weighted_quantiles(target_samples[row], target_weights)
        tables[row] = np.interp(np.interp(grid[row], source_sorted, source_positions), target_positions, target_sorted)
    scale = (MAP_TABLE_POINTS - 1) / span
    position = np.clip((projected - low) * scale, 0.0, MAP_TABLE_POINTS - 1)  # (K, N) in table steps
    index = np.minimum(position.astype(np.int32), MAP_TABLE_POINTS - 2)
    fraction = position - index
    flat_index = index + (np.arange(rows, dtype=np.int32) * MAP_TABLE_POINTS)[:, None]
    flat_tables = tables.reshape(-1)
    below = flat_tables[flat_index]
    beyond = projected - (low + position / scale)  # 0 inside the tabulated range
    return below + (flat_tables[flat_index + 1] - below) * fraction + beyond


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation matrix (QR of a gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def transport_colors(
    source: np.ndarray, target: np.ndarray, source_mask: np.ndarray | None, target_mask: np.ndarray | None,
    draw_axes: Callable[[np.random.Generator], np.ndarray], steps: int, step_size: float, seed: int,
) -> np.ndarray:
    """The loop of idt and sot: match 1-D marginals along drawn axes and move every pixel.

    `draw_axes(rng)` gives (K, 3) unit rows; a step moves each pixel by step_size times the sum
    of its per-axis shifts (1 for a rotation's 3 orthogonal rows, 1/K to average K directions).
    """
    source_columns, target_columns, (source_rows, source_weights), (target_rows, target_weights) = prepare_images(
        source, target, source_mask, target_mask)
    rng = np.random.default_rng(seed)

    def choose(count: int) -> np.ndarray:  # at most MAX_STATISTIC_PIXELS of `count` masked pixels
        return np.arange(count) if count <= MAX_STATISTIC_PIXELS else np.sort(
            rng.choice(count, size=MAX_STATISTIC_PIXELS, replace=False))

    chosen = choose(len(source_rows))
    source_rows, source_weights = source_rows[chosen], source_weights[chosen]
    chosen = choose(len(target_rows))
    target_samples, target_weights = target_columns[:, target_rows[chosen]], target_weights[chosen]
    for _ in range(steps):
        axes = draw_axes(rng).astype(np.float32)
        projected = axes @ source_columns  # (K, 3) @ (3, N) -> (K, N)
        matched = match_marginals(projected, projected[:, source_rows], source_weights, axes @ target_samples,
                                  target_weights)
        source_columns += (step_size * axes.T) @ (matched - projected)  # (3, K) @ (K, N) -> (3, N)
    return np.clip(source_columns.T.reshape(source.shape), 0.0, 1.0)  # (3, H*W) -> (H, W, 3) float32


def iterative_distribution_transfer(
    source: np.ndarray, target: np.ndarray, source_mask: np.ndarray | None = None,
    target_mask: np.ndarray | None = None, iterations: int = IDT_ITERATIONS, seed: int = TRANSFER_SEED,
) -> np.ndarray:
    """IDT (Pitie, Kokaram and Dahyot 2005): per iteration, rotate the colour space at random and
    match the three 1-D marginals to the target's, until the whole 3-D distribution matches.

    Args, Returns and Raises as ``tasks.color.reinhard_color_transfer``, plus ``iterations`` (random rotations)
    and ``seed`` (equal seeds give equal results).
    """
    return transport_colors(source, target, source_mask, target_mask, lambda rng: random_rotation(rng).T,
                            iterations, 1.0, seed)


def sliced_optimal_transport(
    source: np.ndarray, target: np.ndarray, source_mask: np.ndarray | None = None,
    target_mask: np.ndarray | None = None, steps: int = SOT_STEPS, seed: int = TRANSFER_SEED,
) -> np.ndarray:
    """SOT (Bonneel et al. 2015): per step, match the 1-D projections onto a few random directions
    and move each pixel by the average of those displacements.

    DeepFaceLab pairs sorted pixels by rank and then smooths the noisy result with a bilateral
    filter; here each 1-D map is a function of colour (quantile matching), so equal colours move
    equally and no smoothing is needed. Args, Returns and Raises as ``iterative_distribution_transfer``.
    """
    def draw_directions(rng: np.random.Generator) -> np.ndarray:
        directions = rng.normal(size=(SOT_DIRECTIONS_PER_STEP, 3))
        return directions / np.linalg.norm(directions, axis=1, keepdims=True)

    return transport_colors(source, target, source_mask, target_mask, draw_directions, steps,
                            1.0 / SOT_DIRECTIONS_PER_STEP, seed)
