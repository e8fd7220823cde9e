"""A held-out split of face ids: faces the model never trains on, kept to score it.

The split is a pure function of each face id (its SHA-256), so it is the same on every run, on every
machine, and for every training stage; adding faces never moves an existing face across the split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

DEFAULT_HOLDOUT_PERCENT = 5.0
BUCKETS = 10_000  # hash buckets: percent has a resolution of 0.01


def holdout_bucket(face_id: str) -> int:
    """The face's fixed bucket in [0, BUCKETS): the first 8 bytes of sha256(face_id) modulo BUCKETS."""
    digest = hashlib.sha256(face_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def split_holdout(face_ids: Sequence[str], percent: float = DEFAULT_HOLDOUT_PERCENT) -> tuple[list[str], list[str]]:
    """Split face ids into training and held-out ids, deterministically.

    A face is held out when its bucket (see ``holdout_bucket``) is below ``percent`` of BUCKETS.
    With two or more faces and ``percent > 0`` at least one face is held out and at least one is
    kept for training: when the hash picks none, the face with the lowest bucket is held out; when
    it picks all, the face with the highest bucket trains. A single face always trains.

    Args:
        face_ids: Face ids (unique); the order is kept in both outputs.
        percent: Share of faces to hold out, in [0, 100). 0 holds out nothing.

    Returns:
        (train_ids, holdout_ids).

    Raises:
        ValueError: ``percent`` is outside [0, 100).
    """
    if not 0 <= percent < 100:
        raise ValueError(f"holdout percent must be in [0, 100), got {percent}")
    ids = list(face_ids)
    if percent == 0 or len(ids) < 2:
        return ids, []
    buckets = {face_id: holdout_bucket(face_id) for face_id in ids}
    threshold = percent / 100 * BUCKETS
    held = {face_id for face_id in ids if buckets[face_id] < threshold}
    ranked = sorted(ids, key=lambda face_id: (buckets[face_id], face_id))  # ties broken by id: still deterministic
    if not held:
        held = {ranked[0]}
    elif len(held) == len(ids):
        held.discard(ranked[-1])
    return [face_id for face_id in ids if face_id not in held], [face_id for face_id in ids if face_id in held]
