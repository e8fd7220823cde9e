"""Where live frames come from: a camera, or a video file read as if it were one.

A source is named on the command line: a number is a camera index (0 is the first camera), anything
else a video file. A video source delivers its frames at the capture size (640x480 by default, what
a webcam gives) and, in realtime mode, at the file's own frame rate by the wall clock: a frame that
came while the previous one was still being processed is dropped and counted, as a live camera
would have overwritten it. Without realtime pacing every frame is delivered as fast as it is asked
for (benchmarks, offline processing).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from tasks.live_options import LiveError, LiveOptions, SourceKind
from tasks.video import iter_frames, probe_video

logger = logging.getLogger(__name__)

DEFAULT_CAMERA_FPS = 30.0  # when the driver does not say
PREFETCH_FRAMES = 4  # decoded ahead of an unpaced loop


@dataclasses.dataclass(frozen=True)
class LiveFrame:
    """One captured frame."""

    index: int  # position in the source's own sequence; dropped frames leave gaps
    image: np.ndarray  # (H, W, 3) uint8 BGR at the capture size
    captured_at: float  # time.perf_counter() when the frame was (or, paced, would have been) captured


class FrameSource(Protocol):
    """A stream of frames of one size."""

    name: str
    width: int
    height: int
    fps: float
    live: bool  # frames that come while the previous one is processed are dropped
    dropped: int  # frames dropped so far
    waited: float  # seconds the last read() waited for a live frame to be captured (the camera's pace, not work)

    def read(self) -> LiveFrame | None:
        """The next frame to process; None when the source has ended."""
        ...

    def close(self) -> None:
        """Release the camera or file."""
        ...


def resize_to_capture(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """`image` at (width, height) `size`; the same array when it already is."""
    if size is None or (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)  # bilinear: cheap enough for every frame


class CapturedSource:
    """Frames captured on a thread of their own, as a camera driver does, so capture overlaps processing.

    Live (a camera, or a video in realtime mode): only the newest frame is kept; one replaced before
    it was read is dropped and counted. Unpaced: a short queue, nothing is dropped.
    """

    def __init__(self, name: str, width: int, height: int, fps: float, live: bool,
                 capture: Callable[[Callable[[], bool]], Iterator[LiveFrame]], release: Callable[[], None]) -> None:
        """Args:
            name, width, height, fps: what the source is and delivers.
            live: keep only the newest frame (True) or queue them all (False).
            capture: given a function that says when to stop, yields the frames as they are captured.
            release: frees the camera or file once capturing has stopped.
        """
        self.name, self.width, self.height, self.fps, self.live = name, width, height, fps, live
        self.capture, self.release = capture, release
        self.pending: deque[LiveFrame] = deque()
        self.condition = threading.Condition()
        self.started = self.finished = self.stopping = False
        self.error: BaseException | None = None
        self.dropped, self.waited = 0, 0.0
        self.thread = threading.Thread(target=self.run_capture, name=f"capture {name}", daemon=True)

    def run_capture(self) -> None:
        try:
            for frame in self.capture(lambda: self.stopping):
                with self.condition:
                    if self.live and self.pending:  # the loop is still busy with the frame before: it is lost
                        self.dropped += len(self.pending)
                        self.pending.clear()
                    while not self.live and len(self.pending) >= PREFETCH_FRAMES and not self.stopping:
                        self.condition.wait()
                    self.pending.append(frame)
                    self.condition.notify_all()
                if self.stopping:
                    break
        except BaseException as error:  # handed to the processing thread, which raises it
            self.error = error
        finally:
            self.release()
            with self.condition:
                self.finished = True
                self.condition.notify_all()

    def read(self) -> LiveFrame | None:
        if not self.started:
            self.started = True
            self.thread.start()  # the clock of a paced video starts with the first read
        start = time.perf_counter()
        with self.condition:
            while not self.pending and not self.finished:
                self.condition.wait()
            # waiting for a live frame is the camera's pace, not work; waiting for a queued one is decoding
            self.waited = time.perf_counter() - start if self.live else 0.0
            if self.error is not None:
                raise self.error
            if not self.pending:
                return None
            frame = self.pending.popleft()
            self.condition.notify_all()
        # a queued frame counts from its handover: its wait in the queue is decoding ahead, not latency
        return frame if self.live else dataclasses.replace(frame, captured_at=time.perf_counter())

    def close(self) -> None:
        with self.condition:
            self.stopping = True
            self.condition.notify_all()
        if self.started:
            self.thread.join()  # the thread releases the camera or file as it ends
        else:
            self.release()


def open_camera_source(index: int, capture_size: tuple[int, int] | None) -> CapturedSource:
    """Camera `index` through OpenCV, asked for `capture_size` (frames of another size are resized to it).

    Raises:
        LiveError: there is no camera at that index, or it gives no frame.
    """
    log_level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # each backend it tries would log its failure
    try:
        camera = cv2.VideoCapture(index)
    finally:
        cv2.utils.logging.setLogLevel(log_level)
    if not camera.isOpened():
        raise LiveError(f"no camera at index {index}: OpenCV cannot open it (on Linux /dev/video{index}); "
                        "connect one, choose another index, or give a video file as the source")
    if capture_size is not None:
        camera.set(cv2.CAP_PROP_FRAME_WIDTH, capture_size[0])
        camera.set(cv2.CAP_PROP_FRAME_HEIGHT, capture_size[1])
    ok, first = camera.read()
    if not ok or first is None:
        camera.release()
        raise LiveError(f"camera {index} opened but gives no frame; is another program using it?")
    first = resize_to_capture(first, capture_size)

    def capture(stopping: Callable[[], bool]) -> Iterator[LiveFrame]:
        yield LiveFrame(0, first, time.perf_counter())
        index = 1
        while not stopping():
            ok, image = camera.read()  # blocks until the camera has the next frame
            if not ok or image is None:
                logger.warning("camera stopped giving frames")
                return
            yield LiveFrame(index, resize_to_capture(image, capture_size), time.perf_counter())
            index += 1

    fps = float(camera.get(cv2.CAP_PROP_FPS)) or DEFAULT_CAMERA_FPS
    return CapturedSource(f"camera {index}", first.shape[1], first.shape[0], fps, True, capture, camera.release)


def open_video_source(path: Path, capture_size: tuple[int, int] | None, realtime: bool) -> CapturedSource:
    """A video file read as a camera: at `capture_size` (None: its own) and, when `realtime`, at its own rate.

    Raises:
        tasks.video.VideoError: the file cannot be read.
    """
    info = probe_video(path)
    width, height = capture_size or (info.width, info.height)
    fps = float(info.fps)
    frames = iter_frames(path)

    def capture(stopping: Callable[[], bool]) -> Iterator[LiveFrame]:
        start = time.perf_counter()
        for index, _, image in frames:
            if stopping():
                return
            due = start + index / fps  # when a camera would have captured it
            if realtime and due > time.perf_counter():
                time.sleep(due - time.perf_counter())
            yield LiveFrame(index, resize_to_capture(image, capture_size), due if realtime else time.perf_counter())

    return CapturedSource(str(path), width, height, fps, realtime, capture, frames.close)


def find_source_kind(spec: str) -> SourceKind:
    """camera for a camera index such as "0", video for anything else (a file path)."""
    return "camera" if spec.strip().isdigit() else "video"


def open_camera(spec: str, options: LiveOptions) -> FrameSource:
    return open_camera_source(int(spec), options.capture_size)


def open_video(spec: str, options: LiveOptions) -> FrameSource:
    if not Path(spec).is_file():
        raise LiveError(f"source {spec!r} is neither a camera index (0, 1, ...) nor an existing video file; "
                        "check the path")
    return open_video_source(Path(spec), options.capture_size, options.realtime)


SOURCES: dict[SourceKind, Callable[[str, LiveOptions], FrameSource]] = {"camera": open_camera, "video": open_video}


def open_source(spec: str, options: LiveOptions) -> FrameSource:
    """Open the camera or video file `spec` names (see find_source_kind).

    Raises:
        LiveError: no camera at that index, or no such file.
        tasks.video.VideoError: the file is not a readable video.
    """
    source = SOURCES[find_source_kind(spec)](spec, options)
    logger.info("source %s: %dx%d at %.3g fps, %s", source.name, source.width, source.height, source.fps,
                "live (frames that come while one is processed are dropped)" if source.live else "unpaced")
    return source
