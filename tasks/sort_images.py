"""Pixel measures for sorting faces: decode aligned crops as small thumbnails and score them.

Crops are decoded with the JPEG decoder's own downscaling (a 256 px crop read at 1/2 or 1/4 costs a
fraction of a full decode), in batches straight from the Lance table, so a table of thousands of
faces is measured in seconds. Every measure looks at the centre of the crop (the face itself), at a
fixed thumbnail size, so scores are comparable across crop sizes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import lance
import numpy as np

from tasks.augment import resize_square
from tasks.scores import central_region

logger = logging.getLogger(__name__)

BATCH_ROWS = 256
MEASURE_SIZE = 64  # thumbnail side (px) of the crop centre that sharpness measures look at
HISTOGRAM_BINS = 32  # per colour channel
DIFFERENCE_SIZE = 16  # grayscale thumbnail side for pixel differences
BLACK_LEVEL = 10  # a pixel darker than this in every channel counts as black
WORKERS = 2

# (reduction factor, imdecode flag) for colour decoding, largest reduction first
_REDUCED_COLOR = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2), (1, cv2.IMREAD_COLOR))

Measure = Callable[[np.ndarray], np.ndarray]  # BGR crop thumbnail (S, S, 3) uint8 -> feature vector (F,)


def decode_thumbnail(data: bytes, crop_size: int, size: int) -> np.ndarray:
    """Decode a JPEG crop to (size, size, 3) BGR, letting the decoder shrink it first where it can."""
    flag = next(flag for factor, flag in _REDUCED_COLOR if crop_size // factor >= size or factor == 1)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise ValueError("a face crop in the table is not a decodable JPEG; re-run extraction")
    return resize_square(image, size)


def measure_crops(dataset: lance.LanceDataset, positions: dict[str, int], measure: Measure, size: int) -> np.ndarray:
    """Apply ``measure`` to every crop of a faces table.

    Args:
        dataset: The faces table.
        positions: face_id -> output row; faces not in it are skipped.
        measure: Thumbnail -> feature vector; the same length for every face.
        size: Thumbnail side the crops are decoded to.

    Returns:
        (len(positions), F) float32 features, in the order of ``positions``.
    """
    features: np.ndarray | None = None

    def measure_one(item: tuple[bytes, int]) -> np.ndarray:
        return np.asarray(measure(decode_thumbnail(item[0], item[1], size)), dtype=np.float32).reshape(-1)

    with ThreadPoolExecutor(WORKERS) as pool:
        for batch in dataset.to_batches(columns=["face_id", "image", "crop_size"], batch_size=BATCH_ROWS):
            face_ids = batch.column("face_id").to_pylist()
            items = list(zip(batch.column("image").to_pylist(), batch.column("crop_size").to_pylist(), strict=True))
            for face_id, vector in zip(face_ids, pool.map(measure_one, items), strict=True):
                if face_id not in positions:
                    continue
                if features is None:
                    features = np.full((len(positions), vector.size), np.nan, dtype=np.float32)
                features[positions[face_id]] = vector
    return features if features is not None else np.zeros((0, 1), dtype=np.float32)


def read_crops(dataset: lance.LanceDataset, face_ids: Sequence[str], size: int) -> list[np.ndarray]:
    """The crops of ``face_ids`` as (size, size, 3) BGR thumbnails, in the order given."""
    positions = {face_id: index for index, face_id in enumerate(face_ids)}
    crops: list[np.ndarray | None] = [None] * len(face_ids)
    for batch in dataset.to_batches(columns=["face_id", "image", "crop_size"], batch_size=BATCH_ROWS):
        columns = (batch.column(name).to_pylist() for name in ("face_id", "image", "crop_size"))
        for face_id, data, crop_size in zip(*columns, strict=True):
            if face_id in positions:
                crops[positions[face_id]] = decode_thumbnail(data, crop_size, size)
    missing = [face_id for face_id, crop in zip(face_ids, crops, strict=True) if crop is None]
    if missing:
        raise KeyError(f"faces not in the table: {missing[:5]}")
    return crops  # type: ignore[return-value]


def centre_gray(crop: np.ndarray) -> np.ndarray:
    """The face centre (middle half of the crop) as (MEASURE_SIZE, MEASURE_SIZE) float32 gray."""
    gray = cv2.cvtColor(central_region(crop), cv2.COLOR_BGR2GRAY)
    return resize_square(gray, MEASURE_SIZE).astype(np.float32)


def high_frequency_energy(crop: np.ndarray) -> np.ndarray:
    """Mean log magnitude of the spectrum outside its low-frequency core: high = fine detail = sharp."""
    gray = centre_gray(crop)
    spectrum = np.fft.fftshift(np.fft.fft2(gray - gray.mean()))
    centre, radius = MEASURE_SIZE // 2, MEASURE_SIZE // 8
    magnitude = np.log1p(np.abs(spectrum))
    magnitude[centre - radius : centre + radius, centre - radius : centre + radius] = np.nan
    return np.array([np.nanmean(magnitude)])


def orientation_spread(crop: np.ndarray) -> np.ndarray:
    """Gradient energy along the weakest direction over that along the strongest (0..1).

    From the structure tensor of the face centre: motion smears edges along one direction, so the
    gradient energy across that direction collapses while the perpendicular one survives. The
    ratio does not depend on contrast, so a dim face is not mistaken for a smeared one.
    """
    gray = centre_gray(crop)
    gradient_x = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gradient_y = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    cross = np.mean(gradient_x * gradient_y)
    tensor = np.array([[np.mean(gradient_x * gradient_x), cross], [cross, np.mean(gradient_y * gradient_y)]])
    weakest, strongest = np.linalg.eigvalsh(tensor)
    return np.array([max(float(weakest), 0.0) / strongest if strongest > 0 else 0.0])


def black_fraction(crop: np.ndarray) -> np.ndarray:
    """Fraction of the crop's pixels that are black in every channel."""
    return np.array([np.mean(np.all(crop < BLACK_LEVEL, axis=2))])


def colour_histogram(crop: np.ndarray) -> np.ndarray:
    """Square roots of the per-channel normalised histograms of the face centre (Hellinger space)."""
    centre = central_region(crop)
    parts = []
    for channel in range(3):
        histogram = cv2.calcHist([centre], [channel], None, [HISTOGRAM_BINS], [0, 256]).reshape(-1)
        parts.append(np.sqrt(histogram / max(histogram.sum(), 1.0)))
    return np.concatenate(parts)


def small_gray(crop: np.ndarray) -> np.ndarray:
    """The whole crop as a (DIFFERENCE_SIZE ** 2,) grayscale vector, 0..255."""
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return resize_square(gray, DIFFERENCE_SIZE).reshape(-1).astype(np.float32)


def swap_remove(arrays: list[np.ndarray], index: int, size: int) -> None:
    """Drop row ``index`` from the first ``size`` rows of each array by moving the last of them into its place."""
    for array in arrays:
        array[index] = array[size - 1]


def chain_nearest(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy chain: start at row 0, then always step to the nearest (Euclidean) row not yet visited.

    Returns:
        (order, step distances): step distance i is from order[i - 1] to order[i]; NaN for the first.
    """
    count = len(vectors)
    order, steps = np.zeros(count, dtype=np.int64), np.full(count, np.nan)
    # the unvisited rows, kept packed at the front so each step only looks at what is left
    pool = np.array(vectors[1:], dtype=np.float32)
    pool_rows = np.arange(1, count)
    pool_norms = np.einsum("ij,ij->i", pool, pool)
    current = np.asarray(vectors[0], dtype=np.float32)
    for step in range(1, count):
        size = count - step
        distances = pool_norms[:size] - 2.0 * (pool[:size] @ current)  # squared distance less |current|^2
        nearest = int(np.argmin(distances))
        following = pool[nearest].copy()
        order[step], steps[step] = pool_rows[nearest], float(np.linalg.norm(following - current))
        swap_remove([pool, pool_rows, pool_norms], nearest, size)
        current = following
    return order, steps


def summed_distances(vectors: np.ndarray, chunk: int = 512) -> np.ndarray:
    """For each row, the sum of its Euclidean distances to every other row (chunked: O(N) memory per chunk)."""
    squared_norms = np.einsum("ij,ij->i", vectors, vectors)
    sums = np.zeros(len(vectors))
    for start in range(0, len(vectors), chunk):
        block = vectors[start : start + chunk]
        squared = squared_norms[start : start + chunk, None] + squared_norms[None, :] - 2.0 * (block @ vectors.T)
        sums[start : start + chunk] = np.sqrt(np.maximum(squared, 0.0)).sum(axis=1)
    return sums


def farthest_first(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order rows so each next one has the largest mean absolute difference to every row already taken.

    Starts from the row farthest from the mean; near-duplicates of taken rows come last.

    Returns:
        (order, distances): for each position, the mean absolute difference of that row to its
        nearest earlier row (the first row: to the mean).
    """
    count = len(vectors)
    order, distances = np.zeros(count, dtype=np.int64), np.zeros(count)
    if count == 0:
        return order, distances
    # the rows not taken yet, packed at the front, with each one's distance to its nearest taken row
    pool = np.array(vectors, dtype=np.float32)
    pool_rows = np.arange(count)
    nearest = np.abs(pool - pool.mean(axis=0)).mean(axis=1)
    for step in range(count):
        size = count - step
        chosen = int(np.argmax(nearest[:size]))
        taken = pool[chosen].copy()
        order[step], distances[step] = pool_rows[chosen], nearest[chosen]
        swap_remove([pool, pool_rows, nearest], chosen, size)
        np.minimum(nearest[: size - 1], np.abs(pool[: size - 1] - taken).mean(axis=1), out=nearest[: size - 1])
    return order, distances
