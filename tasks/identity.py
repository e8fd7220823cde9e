"""Identity filtering: keep the faces of the target person and drop everyone else.

With reference photos of the target, a face is kept when its identity descriptor lies within a
distance threshold of the nearest reference. Without references, the descriptors are clustered
and the largest cluster is taken to be the target. Faces linked into a track share one decision,
so a face turned too far for a reliable descriptor still follows the rest of its track.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import dlib
import numpy as np

from tasks.dedup import cover_greedily, embedding_distances
from tasks.detect import FaceAnalyzer
from tasks.images import list_media, read_image

logger = logging.getLogger(__name__)

# Chosen with benchmarks/identity_filter.py on photos/identities + photos/distractors (10 people
# with >= 3 photos, 1 or 2 references each): precision and recall are >= 0.95 from 0.54 to 0.61;
# 0.56 keeps every impostor out (nearest different-person pair: 0.575) at recall 0.98 (1 photo)
# and 1.00 (2 photos).
DEFAULT_THRESHOLD = 0.56  # dlib descriptors; other analyzers: tasks.analyzers.IDENTITY_SPACES


class IdentityError(ValueError):
    """The target person cannot be established; the message names the files and what to do."""


@dataclass
class IdentityResult:
    """Which faces are the target person.

    keep: (N,) bool. distance: (N,) float32, to the nearest reference (or to the centre of the
    kept cluster when there are no references), NaN without a descriptor. reasons: for every
    dropped row index, why. labels: (N,) cluster per row when clustering was used, -1 without a
    descriptor; None with references.
    """

    keep: np.ndarray
    distance: np.ndarray
    reasons: dict[int, str] = field(default_factory=dict)
    labels: np.ndarray | None = None


def reference_embeddings(folder: Path, analyzer: FaceAnalyzer) -> tuple[np.ndarray, list[Path]]:
    """Describe the target person from the photos in a reference folder.

    Args:
        folder: photos of the target (searched recursively); the largest face of each is used.
            A missing or empty folder means no references.
        analyzer: the analyzer whose descriptors the faces table holds.

    Returns:
        ((K, D) float32 descriptors of the analyzer's size D, the K photos they come from). Photos without a face are
        logged and skipped; videos are ignored (with a warning).

    Raises:
        IdentityError: the folder has photos but no face was found in any of them.
        tasks.images.ImageError: a photo cannot be read (the message names it).
    """
    folder = Path(folder)
    if not folder.exists():
        return np.empty((0, 0), np.float32), []
    videos, photos = list_media(folder)
    if videos:
        logger.warning("reference folder %s: videos are not used as references, only photos: %s", folder,
                       ", ".join(video.name for video in videos))
    descriptors, used, faceless = [], [], []
    for photo in photos:
        image = read_image(photo)
        faces = analyzer.detect(image)
        if not faces:
            logger.warning("reference photo %s: no face found; skipped", photo)
            faceless.append(photo)
            continue
        descriptors.append(np.asarray(analyzer.embed(image, faces[0]), np.float32))
        used.append(photo)
    if photos and not used:
        raise IdentityError(f"{folder}: no face found in any reference photo ({', '.join(p.name for p in faceless)}); "
                            "add clear, frontal photos of the target person or empty the folder to keep the "
                            "largest identity instead")
    logger.info("reference folder %s: %d photos, %d described", folder, len(photos), len(used))
    stacked = np.stack(descriptors) if descriptors else np.empty((0, 0), np.float32)
    return stacked, used


def _check_embeddings(embeddings: np.ndarray, size: int | None = None) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or (size is not None and embeddings.shape[1] != size):
        wanted = f"(N, {size})" if size is not None else "(N, D)"
        raise ValueError(f"embeddings must be {wanted}, got {embeddings.shape}: were the references described by "
                         "another analyzer than the faces table's?")
    return embeddings


def match_references(embeddings: np.ndarray, references: np.ndarray,
                     threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Keep the faces close to any reference descriptor.

    Args:
        embeddings: (N, D) descriptors; NaN rows (no descriptor) are never kept.
        references: (K, D) descriptors of the target, K >= 1.
        threshold: largest Euclidean distance to the nearest reference that is kept.

    Returns:
        (keep (N,) bool, distance to the nearest reference (N,) float32, NaN without a descriptor).

    Raises:
        ValueError: wrong shapes or no references.
    """
    embeddings = _check_embeddings(embeddings)
    references = _check_embeddings(references, embeddings.shape[1]) if len(references) else _check_embeddings(references)
    if not len(references):
        raise ValueError("match_references needs at least one reference descriptor")
    distance = embedding_distances(embeddings, references).min(axis=1).astype(np.float32)
    return distance <= threshold, distance


def dominant_identity(embeddings: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Keep the largest identity cluster.

    Descriptors closer than threshold / 2 are first merged into one representative each (so a
    long video costs about as much as its distinct looks), then the representatives are clustered
    with dlib's Chinese whispers, linking pairs closer than `threshold`. The cluster holding the
    most faces is kept.

    Args:
        embeddings: (N, D) descriptors; NaN rows are never kept and get label -1.
        threshold: distance under which two faces are linked as the same person.

    Returns:
        (keep (N,) bool, cluster label per row (N,) int64; labels count from 0, largest first).
    """
    embeddings = _check_embeddings(embeddings)
    labels = np.full(len(embeddings), -1, dtype=np.int64)
    valid = np.flatnonzero(np.isfinite(embeddings).all(axis=1))
    if not len(valid):
        return np.zeros(len(embeddings), dtype=bool), labels
    described = embeddings[valid]
    radius = threshold / 2.0

    def close_distances(block: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        distance = embedding_distances(described[block], described[candidates])
        return np.where(distance < radius, distance, np.inf)

    representative = cover_greedily(np.arange(len(valid)), close_distances)
    leaders, member_of = np.unique(representative, return_inverse=True)
    vectors = [dlib.vector(row.astype(np.float64).tolist()) for row in described[leaders]]
    leader_labels = np.asarray(dlib.chinese_whispers_clustering(vectors, threshold), dtype=np.int64)
    raw_labels = leader_labels[member_of]
    # relabel by size, largest first (ties: the cluster seen first)
    clusters, first_seen, sizes = np.unique(raw_labels, return_index=True, return_counts=True)
    ranking = np.lexsort((first_seen, -sizes))
    rank_of = np.empty(len(clusters), dtype=np.int64)
    rank_of[ranking] = np.arange(len(clusters))
    labels[valid] = rank_of[np.searchsorted(clusters, raw_labels)]
    sorted_sizes = sizes[ranking]
    logger.info("identity clusters (largest first): %s from %d leaders", sorted_sizes[:5].tolist(), len(leaders))
    if len(sorted_sizes) > 1 and sorted_sizes[1] > sorted_sizes[0] / 2:
        logger.warning("the two largest identities have %d and %d faces; add reference photos of the target "
                       "person to choose between them", sorted_sizes[0], sorted_sizes[1])
    return labels == 0, labels


def _group_rows(count: int, track_ids: np.ndarray | None, source_ids: np.ndarray | None) -> np.ndarray | None:
    """(N,) group index per row, one group per (source, track); None without track ids."""
    if track_ids is None:
        return None
    track_ids = np.asarray(track_ids)
    sources = np.zeros(count, np.int64) if source_ids is None else np.unique(np.asarray(source_ids), return_inverse=True)[1]
    if track_ids.shape != (count,) or sources.shape != (count,):
        raise ValueError(f"track_ids and source_ids must have one entry per face ({count}); got {track_ids.shape}"
                         f"{'' if source_ids is None else f' and {np.asarray(source_ids).shape}'}")
    pairs = np.stack([sources, track_ids.astype(np.int64)], axis=1)
    return np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1)


def filter_identity(embeddings: np.ndarray, references: np.ndarray | None, threshold: float = DEFAULT_THRESHOLD,
                    track_ids: np.ndarray | None = None, source_ids: np.ndarray | None = None) -> IdentityResult:
    """Decide which faces are the target person, whole tracks at a time.

    Args:
        embeddings: (N, D) descriptors, NaN rows where missing (the faces table's `embedding`).
        references: (K, D) descriptors of the target (reference_embeddings); None or empty to
            keep the largest identity instead.
        threshold: descriptor distance under which two faces are the same person.
        track_ids: (N,) track per face; a track is kept or dropped whole, by the majority of its
            described faces (a tie goes by their mean distance), and faces without a descriptor
            follow their track.
        source_ids: (N,) source per face; track ids are only unique within a source.

    Returns:
        IdentityResult with the keep mask, distances and a reason for every dropped face.

    Raises:
        ValueError: wrong shapes.
    """
    embeddings = _check_embeddings(embeddings)
    count = len(embeddings)
    described = np.isfinite(embeddings).all(axis=1)
    labels = None
    if references is not None and len(references):
        own_keep, distance = match_references(embeddings, references, threshold)
        own_reason = "distance {distance:.2f} > {threshold:.2f} from the nearest reference photo"
    else:
        own_keep, labels = dominant_identity(embeddings, threshold)
        centre = embeddings[own_keep].mean(axis=0, keepdims=True) if own_keep.any() else embeddings[:1] * np.nan
        distance = embedding_distances(embeddings, centre)[:, 0].astype(np.float32)
        own_reason = "not in the largest identity cluster (distance {distance:.2f} from its centre)"
    own_keep &= described

    keep, reasons = own_keep.copy(), {}
    groups = _group_rows(count, track_ids, source_ids)
    if groups is None:
        for index in np.flatnonzero(~keep):
            reasons[int(index)] = ("no identity descriptor (extract with embeddings on)" if not described[index] else
                                   "other person: " + own_reason.format(distance=distance[index], threshold=threshold))
    else:
        group_count = int(groups.max()) + 1 if count else 0
        described_count = np.bincount(groups, weights=described, minlength=group_count)
        votes = np.bincount(groups, weights=own_keep, minlength=group_count)
        mean_distance = np.bincount(groups, weights=np.where(described, distance, 0.0), minlength=group_count)
        mean_distance = mean_distance / np.maximum(described_count, 1)
        group_keep = (2 * votes > described_count) | ((2 * votes == described_count) & (described_count > 0)
                                                      & (mean_distance <= threshold))
        keep = group_keep[groups]
        for index in np.flatnonzero(~keep):
            group = groups[index]
            track = "" if track_ids is None else f"track {int(np.asarray(track_ids)[index])}"
            if described_count[group] == 0:
                reasons[int(index)] = f"no identity descriptor in its {track}"
            else:
                reasons[int(index)] = (f"other person: {track} has {int(described_count[group] - votes[group])} of "
                                       f"{int(described_count[group])} described faces out (mean distance "
                                       f"{mean_distance[group]:.2f}, threshold {threshold:.2f})")
    logger.info("identity: kept %d of %d faces (%s)", int(keep.sum()), count,
                "reference photos" if labels is None else "largest cluster")
    return IdentityResult(keep=keep, distance=distance, reasons=reasons, labels=labels)


@dataclass(frozen=True)
class MatchingScore:
    """Counts of reference matching over a labelled photo set."""

    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        return self.true_positives / max(self.true_positives + self.false_positives, 1)

    @property
    def recall(self) -> float:
        return self.true_positives / max(self.true_positives + self.false_negatives, 1)


def score_matching(descriptors: np.ndarray, people: np.ndarray, threshold: float, reference_count: int,
                   min_photos: int = 3, targets: list[str] | None = None) -> MatchingScore:
    """Score match_references on labelled descriptors, each person with >= min_photos (of `targets`) as the target.

    Every choice of `reference_count` of the target's photos is a trial whose candidates are all
    the other photos (the target's others, other people's, distractors); counts add up over trials.
    """
    people = np.asarray(people)
    positives = negatives = misses = 0
    for person in np.unique(people) if targets is None else targets:
        rows = np.flatnonzero(people == person)
        if len(rows) < min_photos:
            continue
        for chosen in itertools.combinations(rows, reference_count):
            candidates = np.setdiff1d(np.arange(len(people)), chosen)
            keep, _ = match_references(descriptors[candidates], descriptors[list(chosen)], threshold)
            target = people[candidates] == person
            positives += int((keep & target).sum())
            negatives += int((keep & ~target).sum())
            misses += int((~keep & target).sum())
    return MatchingScore(positives, negatives, misses)
