"""Landmark smoothing: steady motion passes unchanged, jitter on a real clip goes down, streaming matches offline."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tasks.detect import DlibAnalyzer
from tasks.smoothing import LandmarkSmoother, interocular_distance, jitter, smooth_track, window_radius
from tasks.tracking import FaceFollower
from tasks.video import iter_frames


def moving_face(frames: int, seed: int = 0) -> np.ndarray:
    """(frames, 68, 2) landmarks of a rigid random face moving and growing linearly."""
    base = np.random.default_rng(seed).uniform(-50, 50, (68, 2))
    base[36:42] += (-40, 0)  # eyes apart, so the inter-ocular distance is well defined
    base[42:48] += (40, 0)
    time = np.arange(frames, dtype=np.float64)[:, None, None]
    return (base * (1 + 0.004 * time) + (200, 150) + time * (3.0, -1.5)).astype(np.float32)


def test_steady_motion_passes_through_unchanged_even_at_ends_and_gaps():
    track = list(moving_face(40))
    track[17] = track[18] = None  # a gap in the middle
    smoothed = smooth_track(track, strength=2.0)
    for before, after in zip(track, smoothed):
        assert (before is None) == (after is None)
        if before is not None:
            assert np.abs(after - before).max() < 0.01
    assert jitter(track) < 1e-5 and jitter(smoothed) < 1e-5


def test_smoothing_removes_noise_but_not_motion():
    truth = moving_face(60)
    noisy = truth + np.random.default_rng(1).normal(0, 1.5, truth.shape).astype(np.float32)
    smoothed = np.stack(smooth_track(list(noisy), strength=2.0))
    assert jitter(list(smoothed)) < 0.4 * jitter(list(noisy))
    assert np.abs(smoothed - truth).mean() < 0.6 * np.abs(noisy - truth).mean()
    frames = list(noisy)
    assert all(a is b for a, b in zip(smooth_track(frames, strength=0), frames, strict=True)), "strength 0 is off"


def test_streaming_smoother_matches_offline_smoothing_per_track():
    rng = np.random.default_rng(2)
    first = moving_face(30, seed=3) + rng.normal(0, 1.0, (30, 68, 2)).astype(np.float32)
    second = moving_face(30, seed=4) + rng.normal(0, 1.0, (30, 68, 2)).astype(np.float32)
    present = {"a": set(range(30)) - {7, 8}, "b": set(range(12, 30))}  # a has a gap, b starts late
    smoother = LandmarkSmoother(strength=1.5)
    returned = []
    for step in range(30):
        landmarks = {name: points[step] for name, points in (("a", first), ("b", second)) if step in present[name]}
        ready = smoother.push(step, step, landmarks)
        assert all(payload <= step - window_radius(1.5) for payload, _ in ready), "no frame leaves before its window"
        returned.extend(ready)
    returned.extend(smoother.flush())
    assert [payload for payload, _ in returned] == list(range(30))
    for name, points in (("a", first), ("b", second)):
        offline = smooth_track([points[step] if step in present[name] else None for step in range(30)], 1.5)
        for step, smoothed in returned:
            assert (name in smoothed) == (step in present[name])
            if name in smoothed:
                np.testing.assert_allclose(smoothed[name], offline[step], atol=1e-4)
    with pytest.raises(ValueError, match="strength"):
        LandmarkSmoother(-1)


def test_smoothing_reduces_jitter_on_a_real_clip(media_dir):
    analyzer = DlibAnalyzer(min_size=40)
    follower = FaceFollower(analyzer, detect_every=5, max_faces=1)
    raw = []
    for _, _, frame in itertools.islice(iter_frames(media_dir / "videos" / "talking_head_a.mp4"), 120):
        faces = follower.follow(frame)
        raw.append(faces[0].face.landmarks if faces else None)
    smoothed = smooth_track(raw, strength=1.5)
    before, after = jitter(raw), jitter(smoothed)
    assert after < 0.5 * before, f"jitter {before:.4f} -> {after:.4f}"
    shift = np.mean([np.linalg.norm(a - b, axis=1).mean() / interocular_distance(a)
                     for a, b in zip(raw, smoothed) if a is not None])
    assert shift < 0.03, f"smoothing moved the landmarks by {shift:.3f} inter-ocular distances on average"
