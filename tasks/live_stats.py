"""Timing of live mode: per-stage latency, capture-to-output latency and frames per second.

Every stage of every frame is timed with time.perf_counter. The run's summary gives mean, median
(p50) and 95th percentile per stage over the frames the stage ran on (align, swap and merge run only
on frames with a face), the end-to-end latency from the moment a frame was captured to the moment
its output left the sink, and the frames per second over the whole run. A rolling view of the last
frames feeds the overlay and the periodic status line.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from tasks.live_options import STAGES

RECENT_FRAMES = 30  # frames the overlay and status line average over (a second at 30 fps)
OVERLAY_SCALE = 0.5
OVERLAY_LINE_HEIGHT = 18  # px
OVERLAY_COLOUR = (80, 255, 80)  # BGR


@dataclass(frozen=True)
class TimingSummary:
    """Milliseconds of one stage (or of the whole frame) over the frames it ran on."""

    count: int
    mean: float
    p50: float
    p95: float


def summarize_times(milliseconds: Sequence[float]) -> TimingSummary:
    """Count, mean, median and 95th percentile; zeros when there is no sample."""
    if not milliseconds:
        return TimingSummary(0, 0.0, 0.0, 0.0)
    values = np.asarray(milliseconds, dtype=np.float64)
    return TimingSummary(len(values), round(float(values.mean()), 3), round(float(np.percentile(values, 50)), 3),
                         round(float(np.percentile(values, 95)), 3))


@dataclass(frozen=True)
class LiveReport:
    """What a live run did and how fast (written as JSON by --stats and into the file sink's record)."""

    model: str
    resolution: int
    face_type: str
    provider: str  # the ONNX Runtime provider that ran the model
    source: str
    sink: str
    frames: int  # frames processed and written
    frames_with_face: int
    faces_swapped: int
    dropped: int  # frames a paced video source skipped because they came while the previous one was processed
    detections: int  # full detector runs (the other frames were tracked)
    seconds: float
    fps: float  # frames / seconds, end to end
    latency: TimingSummary  # capture -> output, per frame
    stages: dict[str, TimingSummary]  # STAGES -> per-stage timing

    def write_json(self, path: Path) -> None:
        """Write the report to `path` as JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(temporary, path)

    def format_lines(self) -> list[str]:
        """A short table for the terminal: the run, then one line per stage."""
        lines = [f"live: {self.frames} frames in {self.seconds:.1f} s = {self.fps:.1f} fps end to end "
                 f"({self.frames_with_face} with a face, {self.dropped} dropped, {self.detections} detector runs; "
                 f"{self.resolution} px {self.face_type} model on {self.provider})",
                 f"  {'stage':8} {'frames':>6} {'mean ms':>8} {'p50 ms':>8} {'p95 ms':>8}"]
        for name, timing in [*self.stages.items(), ("latency", self.latency)]:
            lines.append(f"  {name:8} {timing.count:6d} {timing.mean:8.1f} {timing.p50:8.1f} {timing.p95:8.1f}")
        return lines


class StageClock:
    """Collects the milliseconds of every stage of every frame, and each frame's capture-to-output latency."""

    def __init__(self) -> None:
        self.milliseconds: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self.latencies: list[float] = []
        self.frame_ends: deque[float] = deque(maxlen=RECENT_FRAMES + 1)  # perf_counter at each frame's end
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as one run of stage `name` (one of STAGES)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.milliseconds[name].append((time.perf_counter() - start) * 1000.0)

    def add(self, name: str, milliseconds: float) -> None:
        """Record a stage time measured elsewhere."""
        self.milliseconds[name].append(milliseconds)

    def finish_frame(self, captured_at: float) -> None:
        """Mark a frame done; `captured_at` is the perf_counter time its source delivered (or would have) it."""
        now = time.perf_counter()
        self.latencies.append((now - captured_at) * 1000.0)
        self.frame_ends.append(now)

    @property
    def frames(self) -> int:
        return len(self.latencies)

    def recent_fps(self) -> float:
        """Frames per second over the last RECENT_FRAMES frames (0 until two frames are done)."""
        if len(self.frame_ends) < 2:
            return 0.0
        return (len(self.frame_ends) - 1) / max(self.frame_ends[-1] - self.frame_ends[0], 1e-9)

    def status_lines(self) -> list[str]:
        """The overlay: fps and latency, then the recent mean of each stage that ran, in ms."""
        recent = self.latencies[-RECENT_FRAMES:]
        lines = [f"{self.recent_fps():5.1f} fps  latency {np.mean(recent) if recent else 0.0:6.1f} ms"]
        for name in STAGES:
            samples = self.milliseconds[name][-RECENT_FRAMES:]
            if samples:
                lines.append(f"{name:7} {np.mean(samples):6.1f} ms")
        return lines

    def summarize(self) -> tuple[float, TimingSummary, dict[str, TimingSummary]]:
        """(seconds since the clock started, latency summary, per-stage summaries)."""
        seconds = (self.frame_ends[-1] if self.frame_ends else time.perf_counter()) - self.started
        stages = {name: summarize_times(samples) for name, samples in self.milliseconds.items()}
        return seconds, summarize_times(self.latencies), stages


def draw_overlay(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """A copy of `frame` with `lines` drawn top left on a darkened box (the window sink's view)."""
    shown = frame.copy()
    if not lines:
        return shown
    width = 12 + max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, OVERLAY_SCALE, 1)[0][0] for line in lines)
    height = 8 + OVERLAY_LINE_HEIGHT * len(lines)
    box = shown[:height, :width]
    box[:] = box // 3  # darkened, so the text reads on any background
    for row, line in enumerate(lines):
        cv2.putText(shown, line, (6, OVERLAY_LINE_HEIGHT * (row + 1)), cv2.FONT_HERSHEY_SIMPLEX, OVERLAY_SCALE,
                    OVERLAY_COLOUR, 1, cv2.LINE_AA)
    return shown
