"""Sorting a faceset for review: every DeepFaceLab sort method (and a few more) over a faces table.

A sort never changes the table: it returns the face ids in the method's order (best or most
relevant first) with the score each order came from, so a person can look at a contact sheet of
the order and decide what to keep. Methods on stored columns read no pixels; pixel methods decode
small thumbnails of the crops (tasks.sort_images).

Every method starts from the same canonical order (source path, frame, face), so ties and the
order of faces without a score (NaN, always last) do not depend on how the table is laid out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

import lance
import numpy as np
import pyarrow as pa

from tasks import sort_images
from tasks.faceset import open_faces
from tasks.pose import YAW_EDGES, pose_bins

logger = logging.getLogger(__name__)

SortMethod = Literal[
    "blur", "motion_blur", "blur_fft", "yaw", "pitch", "roll", "face_size", "histogram_similarity",
    "histogram_dissimilarity", "brightness", "hue", "black_pixels", "original_filename", "one_face",
    "pixel_difference", "best_faces", "best_faces_fast", "identity_distance",
]
SORT_METHOD_CHOICES: tuple[str, ...] = get_args(SortMethod)
STORED_COLUMNS = ["face_id", "source_id", "source_path", "frame_index", "face_index", "bbox",
                  "yaw", "pitch", "roll", "blur", "brightness", "hue"]


class SortError(ValueError):
    """A sort cannot run as asked; the message says why and what to do."""


@dataclass(frozen=True)
class SortResult:
    """A faceset order: ids best (or most relevant) first, and the score each position came from."""

    face_ids: list[str]
    scores: list[float]  # one per face, NaN where a face has none
    method: str
    description: str  # one line: what first and last mean


@dataclass(frozen=True)
class SortInputs:
    """What a sort method reads: the table, its stored columns in canonical order, and the request."""

    dataset: lance.LanceDataset
    columns: dict[str, np.ndarray]  # column name -> (N,) or (N, K) array, canonical order
    target_count: int | None
    references: np.ndarray | None  # (K, 128) identity descriptors, or None

    @property
    def positions(self) -> dict[str, int]:
        return {face_id: index for index, face_id in enumerate(self.columns["face_id"])}


class SortFunction(Protocol):
    def __call__(self, inputs: SortInputs) -> tuple[np.ndarray, np.ndarray]:
        """Return (order, scores): a permutation of the canonical rows and each row's score."""


def order_by(scores: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Stable order of rows by score, NaN scores last."""
    key = np.where(np.isnan(scores), np.inf, -scores if descending else scores)
    return np.argsort(key, kind="stable"), scores


def by_column(name: str, descending: bool) -> SortFunction:
    def sort_by_column(inputs: SortInputs) -> tuple[np.ndarray, np.ndarray]:
        return order_by(inputs.columns[name].astype(np.float64), descending)

    return sort_by_column


def by_pixels(measure: sort_images.Measure, size: int, descending: bool) -> SortFunction:
    """A method that orders by one value a pixel measure gives each crop."""

    def sort_by_pixels(inputs: SortInputs) -> tuple[np.ndarray, np.ndarray]:
        features = sort_images.measure_crops(inputs.dataset, inputs.positions, measure, size)
        return order_by(features[:, 0].astype(np.float64), descending)

    return sort_by_pixels


def sort_face_size(inputs: SortInputs) -> tuple[np.ndarray, np.ndarray]:
    boxes = inputs.columns["bbox"]
    return order_by(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])), descending=True)


def sort_original_filename(inputs: SortInputs) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(len(inputs.columns["face_id"])), inputs.columns["frame_index"].astype(np.float64)


def sort_one_face(inputs: SortInputs) -> tuple[np.ndarray, np.ndarray]:
    frames = [f"{source}/{frame}" for source, frame in zip(inputs.columns["source_id"], inputs.columns["frame_index"], strict=True)]
    _, inverse, counts = np.unique(frames, return_inverse=True, return_counts=True)
    return order_by(counts[inverse].astype(np.float64), descending=False)


def sort_histogram_similarity(inputs: SortInputs) -> tuple[np.ndarray, np.ndarray]:
    histograms = sort_images.measure_crops(inputs.dataset, inputs.positions, sort_images.colour_histogram, 128)
    order, steps = sort_images.chain_nearest(histograms)
    scores = np.empty(len(order))
    scores[order] = steps
    return order, scores


def sort_histogram_dissimilarity(inputs: SortInputs) -> tuple[np.ndarray, np.ndarray]:
    histograms = sort_images.measure_crops(inputs.dataset, inputs.positions, sort_images.colour_histogram, 128)
    return order_by(sort_images.summed_distances(histograms.astype(np.float64)), descending=True)


def sort_pixel_difference(inputs: SortInputs) -> tuple[np.ndarray, np.ndarray]:
    size = sort_images.DIFFERENCE_SIZE * 4
    thumbnails = sort_images.measure_crops(inputs.dataset, inputs.positions, sort_images.small_gray, size)
    order, distances = sort_images.farthest_first(thumbnails)
    scores = np.empty(len(order))
    scores[order] = distances
    return order, scores


def spread_over_yaw(yaw: np.ndarray, quality: np.ndarray, target_count: int | None) -> np.ndarray:
    """Pick ``target_count`` faces round-robin over yaw bins (best quality per bin each round), then the rest.

    Each round takes the best remaining face of every non-empty bin, best first within the round,
    so the first picks cover every head turn present before any bin gets a second face.
    """
    count = len(yaw)
    target = count if target_count is None else min(max(target_count, 0), count)
    quality = np.where(np.isnan(quality), -np.inf, quality)
    bins = pose_bins(yaw, YAW_EDGES)  # the yaw cells of the pose grid shared with curation and coverage
    queues = {value: sorted(np.flatnonzero(bins == value), key=lambda row: -quality[row]) for value in np.unique(bins)}
    picked: list[int] = []
    while len(picked) < target:
        round_picks = [queue.pop(0) for queue in queues.values() if queue]
        picked += sorted(round_picks, key=lambda row: -quality[row])[: target - len(picked)]
    rest = np.setdiff1d(np.arange(count), picked)
    rest = rest[np.argsort(-quality[rest], kind="stable")]
    return np.concatenate([np.asarray(picked, dtype=np.int64), rest]).astype(np.int64)


def sort_best_faces_fast(inputs: SortInputs) -> tuple[np.ndarray, np.ndarray]:
    quality = inputs.columns["blur"].astype(np.float64)
    return spread_over_yaw(inputs.columns["yaw"].astype(np.float64), quality, inputs.target_count), quality


def sort_best_faces(inputs: SortInputs) -> tuple[np.ndarray, np.ndarray]:
    """Quality from the pixels: high-frequency energy, scaled down by the share of black (cut) pixels."""

    def measure(crop: np.ndarray) -> np.ndarray:
        return np.concatenate([sort_images.high_frequency_energy(crop), sort_images.black_fraction(crop)])

    features = sort_images.measure_crops(inputs.dataset, inputs.positions, measure, 128).astype(np.float64)
    quality = features[:, 0] * (1.0 - features[:, 1])
    return spread_over_yaw(inputs.columns["yaw"].astype(np.float64), quality, inputs.target_count), quality


def sort_identity_distance(inputs: SortInputs) -> tuple[np.ndarray, np.ndarray]:
    embeddings = inputs.columns["embedding"]
    present = ~np.isnan(embeddings).any(axis=1)
    if not present.any():
        raise SortError("the faces table has no identity descriptors; set extract.<side>.embeddings: true and re-run extract")
    if inputs.references is None:
        anchors = embeddings[present].mean(axis=0, keepdims=True)
    else:
        anchors = np.asarray(inputs.references, dtype=np.float64).reshape(-1, embeddings.shape[1])
    distances = np.linalg.norm(embeddings[:, None, :] - anchors[None, :, :], axis=2).min(axis=1)
    return order_by(np.where(present, distances, np.nan), descending=False)


SORT_METHODS: dict[str, SortFunction] = {
    "blur": by_column("blur", descending=True),
    "motion_blur": by_pixels(sort_images.orientation_spread, 128, descending=True),
    "blur_fft": by_pixels(sort_images.high_frequency_energy, 128, descending=True),
    "yaw": by_column("yaw", descending=False),
    "pitch": by_column("pitch", descending=False),
    "roll": by_column("roll", descending=False),
    "face_size": sort_face_size,
    "histogram_similarity": sort_histogram_similarity,
    "histogram_dissimilarity": sort_histogram_dissimilarity,
    "brightness": by_column("brightness", descending=True),
    "hue": by_column("hue", descending=False),
    "black_pixels": by_pixels(sort_images.black_fraction, 64, descending=False),
    "original_filename": sort_original_filename,
    "one_face": sort_one_face,
    "pixel_difference": sort_pixel_difference,
    "best_faces": sort_best_faces,
    "best_faces_fast": sort_best_faces_fast,
    "identity_distance": sort_identity_distance,
}

SORT_DESCRIPTIONS: dict[str, str] = {
    "blur": "sharpest first (stored variance of the Laplacian), blurriest last",
    "motion_blur": "edges in every direction first, smeared along one direction (motion blur) last (weakest / strongest gradient energy)",
    "blur_fft": "most high-frequency detail (FFT of the face centre) first, blurriest last",
    "yaw": "lowest yaw first, highest last (degrees; the head turned one way, then the other)",
    "pitch": "lowest pitch first, highest last (degrees)",
    "roll": "lowest roll first, highest last (degrees)",
    "face_size": "largest face in the source frame first, smallest last (side of the box, px)",
    "histogram_similarity": "faces with similar colour histograms next to each other (score: step from the previous face)",
    "histogram_dissimilarity": "most unusual colours first (summed histogram distance to all others), most typical last",
    "brightness": "brightest first, darkest last (mean HSV value)",
    "hue": "lowest mean hue first, highest last (degrees)",
    "black_pixels": "fewest black pixels first, faces cut by black borders last (fraction of black pixels)",
    "original_filename": "by source file, frame and face index (score: frame index)",
    "one_face": "faces alone in their frame first, frames with several faces last (score: faces in the frame)",
    "pixel_difference": "most different faces first, near-duplicates last (mean abs. pixel difference to the nearest earlier face)",
    "best_faces": "the target count of sharp, uncut faces spread over yaw first, then the rest by quality",
    "best_faces_fast": "the target count of sharp faces spread over yaw first (stored scores only), then the rest",
    "identity_distance": "closest to the faceset's mean identity (or the references) first, furthest last; no descriptor last",
}


def read_columns(dataset: lance.LanceDataset, with_embeddings: bool) -> dict[str, np.ndarray]:
    """The stored columns as numpy arrays, rows in canonical order (source path, frame, face)."""
    names = STORED_COLUMNS + (["embedding"] if with_embeddings else [])
    table: pa.Table = dataset.to_table(columns=names)
    columns: dict[str, np.ndarray] = {}
    for name in names:
        values = table.column(name).to_pylist()
        if name == "bbox":
            columns[name] = np.asarray(values, dtype=np.float64).reshape(-1, 4)
        elif name == "embedding":
            width = next((len(value) for value in values if value is not None), 128)
            columns[name] = np.array([value if value is not None else [np.nan] * width for value in values], dtype=np.float64).reshape(-1, width)
        else:
            columns[name] = np.asarray(values, dtype=object if name in ("face_id", "source_id", "source_path") else np.float64)
    canonical = sorted(range(table.num_rows), key=lambda row: (columns["source_path"][row], columns["frame_index"][row], columns["face_index"][row]))
    return {name: values[canonical] for name, values in columns.items()}


def sort_faces(table_path: Path, method: SortMethod, target_count: int | None = None,
               references: np.ndarray | None = None) -> SortResult:
    """Order the faces of a table by one sort method.

    Args:
        table_path: A faces table (data/<side>/faces.lance).
        method: One of SORT_METHOD_CHOICES.
        target_count: For best_faces and best_faces_fast: how many faces the yaw-spread pick
            holds (None: every face).
        references: For identity_distance: (K, 128) descriptors to measure against (the nearest
            counts); None measures against the table's mean descriptor.

    Returns:
        The face ids in the method's order, a score per face, and what first and last mean.

    Raises:
        SortError: an unknown method, or a method the table cannot support (no descriptors).
        FacesetError: the table is missing or has the wrong schema.
    """
    if method not in SORT_METHODS:
        raise SortError(f"unknown sort method {method!r}; choose one of: {', '.join(SORT_METHOD_CHOICES)}")
    dataset = open_faces(table_path)
    columns = read_columns(dataset, with_embeddings=method == "identity_distance")
    if len(columns["face_id"]) == 0:
        return SortResult([], [], method, SORT_DESCRIPTIONS[method])
    order, scores = SORT_METHODS[method](SortInputs(dataset, columns, target_count, references))
    logger.info("sorted %d faces of %s by %s", len(order), table_path, method)
    return SortResult(
        face_ids=[str(face_id) for face_id in columns["face_id"][order]],
        scores=[float(score) for score in np.asarray(scores, dtype=np.float64)[order]],
        method=method,
        description=SORT_DESCRIPTIONS[method],
    )

