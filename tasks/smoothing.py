"""Temporal smoothing of face landmarks (anti-jitter) and a jitter measure.

Landmark fits wobble by a pixel or two from frame to frame even on a still face; aligned crops made
from them shake, and so does a face merged back with them. Smoothing is zero-lag: each frame's
landmarks are replaced by a Gaussian-weighted local *linear* fit over the same track's landmarks of
the frames around it (both directions in time), so steady motion passes through unchanged, even at
a track's first and last frames, while frame-to-frame noise is averaged out.

Strength is the Gaussian's sigma in analysed frames; the window reaches WINDOW_SIGMAS sigmas each
way. LandmarkSmoother does this on a stream, holding only the frames of one window.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

WINDOW_SIGMAS = 2.5
RIGHT_EYE = slice(36, 42)  # iBUG 68-point order
LEFT_EYE = slice(42, 48)


def window_radius(strength: float) -> int:
    """Frames each way that a smoothing of this strength looks at (0 when off)."""
    return math.ceil(WINDOW_SIGMAS * strength) if strength > 0 else 0


def fit_local_line(offsets: np.ndarray, values: np.ndarray, strength: float) -> np.ndarray:
    """Value at offset 0 of a Gaussian-weighted least-squares line through (offset, value) samples.

    Args:
        offsets: (N,) frame offsets from the frame being smoothed (it is 0 and must be among them).
        values: (N, ...) samples at those offsets.
        strength: the Gaussian's sigma, in frames (> 0).

    Returns:
        (...) the smoothed value; the sample itself when there is nothing to fit a line through.
    """
    offsets = np.asarray(offsets, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / strength) ** 2)
    shape = (-1,) + (1,) * (np.ndim(values) - 1)
    weights_b, offsets_b = weights.reshape(shape), offsets.reshape(shape)
    s0, s1, s2 = weights.sum(), (weights * offsets).sum(), (weights * offsets**2).sum()
    t0 = (weights_b * values).sum(axis=0)
    t1 = (weights_b * offsets_b * values).sum(axis=0)
    determinant = s0 * s2 - s1 * s1
    if determinant <= 1e-9 * max(s0 * s2, 1e-12):  # a single sample, or all at one offset
        return t0 / s0
    return (s2 * t0 - s1 * t1) / determinant


def smooth_track(landmarks: Sequence[np.ndarray | None], strength: float) -> list[np.ndarray | None]:
    """Smooth one track's landmarks over consecutive analysed frames (None where the track is absent).

    Args:
        landmarks: per frame, (68, 2) landmarks or None.
        strength: sigma in frames; 0 returns the landmarks unchanged.

    Returns:
        Per frame, the smoothed (68, 2) float32 landmarks, or None where the input is None.
    """
    radius = window_radius(strength)
    if radius == 0:
        return list(landmarks)
    result: list[np.ndarray | None] = []
    for index, points in enumerate(landmarks):
        if points is None:
            result.append(None)
            continue
        near = [(other - index, landmarks[other]) for other in range(max(0, index - radius), min(len(landmarks), index + radius + 1))
                if landmarks[other] is not None]
        offsets = np.array([offset for offset, _ in near], dtype=np.float64)
        values = np.stack([np.asarray(value, dtype=np.float64) for _, value in near])
        result.append(fit_local_line(offsets, values, strength).astype(np.float32))
    return result


class LandmarkSmoother:
    """Streaming smoothing: push each analysed frame, get frames back once their window is complete.

    Frames come back in order, ``window_radius(strength)`` frames after they went in (at once
    when strength is 0); flush() returns the rest at the end of a source. Memory: one window of
    frames (2 * radius + 1 payloads).
    """

    def __init__(self, strength: float) -> None:
        if strength < 0:
            raise ValueError(f"smoothing strength must be >= 0, got {strength}")
        self.strength, self.radius = strength, window_radius(strength)
        self._window: deque[tuple[int, Any, Mapping[Hashable, np.ndarray]]] = deque()
        self._next = 0  # position in the window of the next frame to hand back

    def push(self, step: int, payload: Any, landmarks: Mapping[Hashable, np.ndarray]) -> list[tuple[Any, dict]]:
        """Add a frame; returns (payload, smoothed landmarks by track) for every frame now complete.

        Args:
            step: the frame's analysed-frame number (increasing).
            payload: anything to hand back with the frame (e.g. the image and its faces).
            landmarks: track id -> (68, 2) landmarks of the faces in the frame.
        """
        self._window.append((step, payload, landmarks))
        ready = []
        while self._next < len(self._window) and self._window[self._next][0] + self.radius <= step:
            ready.append(self._smooth(self._next))
            self._next += 1
        self._forget_before(step - 2 * self.radius)
        return ready

    def flush(self) -> list[tuple[Any, dict]]:
        """Every frame not handed back yet (the window is cut short at the end)."""
        ready = [self._smooth(position) for position in range(self._next, len(self._window))]
        self._window.clear()
        self._next = 0
        return ready

    def _smooth(self, position: int) -> tuple[Any, dict]:
        step, payload, landmarks = self._window[position]
        if self.radius == 0:
            return payload, dict(landmarks)
        smoothed = {}
        for track in landmarks:
            near = [(other_step - step, other[track]) for other_step, _, other in self._window
                    if abs(other_step - step) <= self.radius and track in other]
            offsets = np.array([offset for offset, _ in near], dtype=np.float64)
            values = np.stack([np.asarray(value, dtype=np.float64) for _, value in near])
            smoothed[track] = fit_local_line(offsets, values, self.strength).astype(np.float32)
        return payload, smoothed

    def _forget_before(self, step: int) -> None:
        while self._next > 0 and self._window[0][0] < step:
            self._window.popleft()
            self._next -= 1


def interocular_distance(landmarks: np.ndarray) -> float:
    """Distance between the two eye centres, in the landmarks' units."""
    return float(np.linalg.norm(landmarks[LEFT_EYE].mean(axis=0) - landmarks[RIGHT_EYE].mean(axis=0)))


def jitter(landmarks_by_frame: Sequence[np.ndarray | None]) -> float:
    """Mean frame-to-frame landmark motion left after removing the track's smooth (locally linear) motion.

    For each run of three consecutive frames of one track, the middle frame's distance from the
    midpoint of its neighbours (what steady motion predicts), averaged over the 68 points and
    divided by the inter-ocular distance. 0 for a still or steadily moving face.

    Args:
        landmarks_by_frame: one track's (68, 2) landmarks per consecutive analysed frame, None
            where the track is absent.

    Returns:
        The mean over every such triple, in inter-ocular distances; nan when there is none.
    """
    residuals = []
    for before, middle, after in zip(landmarks_by_frame, landmarks_by_frame[1:], landmarks_by_frame[2:]):
        if before is None or middle is None or after is None:
            continue
        middle = np.asarray(middle, dtype=np.float64)
        predicted = (np.asarray(before, dtype=np.float64) + np.asarray(after, dtype=np.float64)) / 2
        residuals.append(np.linalg.norm(middle - predicted, axis=1).mean() / max(interocular_distance(middle), 1e-6))
    return float(np.mean(residuals)) if residuals else float("nan")
