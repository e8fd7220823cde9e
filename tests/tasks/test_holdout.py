"""Tests for tasks/holdout.py: a stable, bounded held-out split of face ids."""

from __future__ import annotations

import pytest

from tasks.holdout import BUCKETS, holdout_bucket, split_holdout

IDS = [f"{index:016x}-{frame:05d}-0" for index in range(7) for frame in range(60)]  # 420 ids like real face ids


def test_split_is_deterministic_and_keeps_order() -> None:
    train, held = split_holdout(IDS, 5)
    assert (train, held) == split_holdout(IDS, 5)
    assert sorted(train + held) == sorted(IDS) and not set(train) & set(held)
    assert train == [face_id for face_id in IDS if face_id in set(train)]  # input order kept
    assert held == [face_id for face_id in IDS if face_id in set(held)]


def test_share_is_close_to_percent() -> None:
    _, held = split_holdout(IDS, 5)
    assert 0.02 * len(IDS) <= len(held) <= 0.09 * len(IDS)
    _, held_more = split_holdout(IDS, 20)
    assert set(held) <= set(held_more), "a larger percent only adds faces to the held-out set"


def test_adding_faces_never_moves_a_face() -> None:
    train, held = split_holdout(IDS[:200], 10)
    more_train, more_held = split_holdout(IDS, 10)
    assert set(held) <= set(more_held) and set(train) <= set(more_train)


def test_a_face_is_held_by_its_hash_alone() -> None:
    assert all(0 <= holdout_bucket(face_id) < BUCKETS for face_id in IDS)
    _, held = split_holdout(IDS, 5)
    assert held == [face_id for face_id in IDS if holdout_bucket(face_id) < 0.05 * BUCKETS]
    _, held_again = split_holdout(list(reversed(IDS)), 5)
    assert set(held_again) == set(held), "the split does not depend on the order or the other ids"


def test_small_sets_hold_out_one_and_train_the_rest() -> None:
    pair = ["a", "b"]
    train, held = split_holdout(pair, 5)
    assert len(held) == 1 and len(train) == 1
    assert held == [min(pair, key=holdout_bucket)]
    train, held = split_holdout(pair, 99.99)  # the hash would take both: one must still train
    assert len(held) == 1 and len(train) == 1
    assert split_holdout(["only"], 50) == (["only"], [])
    assert split_holdout([], 5) == ([], [])
    assert split_holdout(IDS, 0) == (IDS, [])


@pytest.mark.parametrize("percent", [-1, 100, 150])
def test_percent_out_of_range_is_an_error(percent: float) -> None:
    with pytest.raises(ValueError, match=rf"holdout percent must be in \[0, 100\), got {percent}"):
        split_holdout(IDS, percent)
