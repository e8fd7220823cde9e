"""Where live frames go: a window, an MP4 file, or an MPEG-TS stream over UDP; and the labelling step.

Every output frame passes through `label_output_frame` before it reaches any sink: with labelling
on (the default) it gets the invisible watermark (tasks.watermark) that `faceflow verify` reads. The
file sink also labels the container (tasks.provenance.container_metadata), signs the finished MP4
with a C2PA manifest (tasks.c2pa_signing) and then writes the provenance sidecar beside it; the udp
stream names itself as synthetic in its MPEG-TS service name.

Sinks:
- window: an OpenCV window with the fps/latency overlay; q or Esc stops.
- file: H.264 MP4 at the source's frame rate (tasks.video.VideoWriter), appearing only when complete;
  the frames a live source dropped are filled with the frame before, so it plays in real time.
- udp: H.264 in MPEG-TS to udp://HOST:PORT (127.0.0.1 by default), low-latency settings; play it with
  `ffplay udp://127.0.0.1:5004`, VLC, or OBS's media source.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
import cv2
import numpy as np

from tasks.c2pa_signing import FileSigner, SigningIdentity
from tasks.live_options import LiveError, LiveOptions, SinkKind
from tasks.live_stats import draw_overlay
from tasks.merge import BackgroundWriter
from tasks.provenance import SYNTHETIC_LABEL, container_metadata, revision_summary, write_sidecar
from tasks.video import VideoWriter
from tasks.watermark import embed_watermark, encode_payload

logger = logging.getLogger(__name__)

WINDOW_TITLE = "faceflow live (q to stop)"
STOP_KEYS = {ord("q"), 27}  # q, Esc
UDP_PACKET_SIZE = 1316  # 7 MPEG-TS packets of 188 bytes: fits an Ethernet MTU
KEYFRAMES_PER_SECOND = 1  # a receiver that joins late shows a picture within a second


@dataclass(frozen=True)
class OutputLabels:
    """How live output is labelled as synthetic.

    Attributes:
        summary: tasks.provenance.revision_summary of the run's revision (the manifest's assertion).
        payload: The watermark bits every frame carries.
        identity: The project's signing identity for the file sink's C2PA manifest; None signs nothing.
    """

    summary: dict
    payload: np.ndarray
    identity: SigningIdentity | None

    @classmethod
    def for_revision(cls, revision: dict, identity: SigningIdentity | None) -> OutputLabels:
        summary = revision_summary(revision)
        return cls(summary, encode_payload(summary["watermark_revision_tag"]), identity)


def label_output_frame(frame: np.ndarray, labels: OutputLabels | None) -> np.ndarray:
    """The labelling step every live output frame goes through, before any sink.

    Args:
        frame: (H, W, 3) uint8 BGR output frame.
        labels: The run's labels; None (labelling turned off) returns the frame unchanged.

    Returns:
        The frame to hand to the sink, watermarked (a few ms at 720p).
    """
    return frame if labels is None else embed_watermark(frame, labels.payload)


class FrameSink(Protocol):
    """Shows, stores or sends output frames."""

    def write(self, frame: np.ndarray, index: int, status: Sequence[str]) -> bool:
        """Hand over one frame; False when the user asked to stop.

        Args:
            frame: (H, W, 3) uint8 BGR.
            index: the frame's index in its source (increasing; gaps where the source dropped frames).
            status: the overlay text (fps, latency, stage times).
        """
        ...

    def close(self, report: dict | None) -> None:
        """Finish; `report` (what the run did) goes into provenance records. None: the run failed, discard."""
        ...


def find_display() -> str | None:
    """The display a window can open on, or None when there is none (a server, a container)."""
    if not sys.platform.startswith("linux"):
        return "desktop"
    return os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")


class WindowSink:
    """An OpenCV window showing each frame with the fps and latency overlay."""

    def __init__(self, title: str = WINDOW_TITLE) -> None:
        # OpenCV's Qt backend aborts the whole process when there is no display, so look first.
        if find_display() is None:
            raise LiveError("the window sink needs a display, and there is none (DISPLAY is not set); use "
                            "--sink file --output live.mp4, or --sink udp and play the stream elsewhere")
        self.title = title
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_AUTOSIZE)
        except cv2.error as error:
            raise LiveError(f"cannot open a window ({error}); use --sink file or --sink udp") from error

    def write(self, frame: np.ndarray, index: int, status: Sequence[str]) -> bool:
        cv2.imshow(self.title, draw_overlay(frame, status))
        key = cv2.waitKey(1) & 0xFF
        closed = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        return key not in STOP_KEYS and not closed

    def close(self, report: dict | None) -> None:
        cv2.destroyWindow(self.title)


class FileSink:
    """An H.264 MP4 labelled as synthetic (container tags, a signed C2PA manifest unless ``identity`` is None),
    with a provenance sidecar naming the model and the run.

    Frames are encoded on a second thread (tasks.merge.BackgroundWriter), so encoding overlaps the
    next frames' processing. A frame the source dropped is filled with the frame before it, so the
    file plays at the speed it was captured.
    """

    def __init__(self, path: Path, width: int, height: int, fps: float, crf: int, revision: dict,
                 labels: OutputLabels | None = None) -> None:
        """Raises: tasks.video.VideoError: the file cannot be created there."""
        self.path, self.revision, self.labels = Path(path), revision, labels
        rate = Fraction(fps).limit_denominator(1001)
        self.writer = VideoWriter(self.path, width, height, rate, crf=crf, metadata=container_metadata(revision))
        self.background = BackgroundWriter(self.writer)
        self.previous: np.ndarray | None = None
        self.first_index: int | None = None
        self.frames_queued = 0
        self.repeated = 0  # frames written twice to fill a dropped frame's time

    def write(self, frame: np.ndarray, index: int, status: Sequence[str]) -> bool:
        self.first_index = index if self.first_index is None else self.first_index
        while self.previous is not None and self.frames_queued < index - self.first_index:
            self.background.write(self.previous)
            self.frames_queued, self.repeated = self.frames_queued + 1, self.repeated + 1
        self.background.write(frame)
        self.previous, self.frames_queued = frame, self.frames_queued + 1
        return True

    def close(self, report: dict | None) -> None:
        try:
            self.background.__exit__(None, None, None)  # waits for the queued frames; raises an encoder error
        except BaseException:
            self.writer.__exit__(LiveError, None, None)  # drops the unfinished file
            raise
        if report is None:  # the run failed
            self.writer.__exit__(LiveError, None, None)
            return
        self.writer.close()
        if self.labels is not None and self.labels.identity is not None:
            FileSigner(self.labels.identity).sign(self.path, self.labels.summary)
        sidecar = write_sidecar(self.path, self.revision, {"live": report, "repeated_frames": self.repeated})
        logger.info("wrote %s and its provenance record %s", self.path, sidecar.name)


class UdpSink:
    """H.264 in MPEG-TS sent as UDP datagrams, tuned for latency (no B-frames, no lookahead)."""

    def __init__(self, host: str, port: int, width: int, height: int, fps: float, crf: int) -> None:
        """Raises: LiveError: the stream cannot be opened (an unknown host, say)."""
        self.address = f"udp://{host}:{port}"
        rate = Fraction(fps).limit_denominator(1001)
        try:
            self.output = av.open(f"{self.address}?pkt_size={UDP_PACKET_SIZE}", "w", format="mpegts")
            self.output.metadata.update({"service_provider": "faceflow", "service_name": SYNTHETIC_LABEL})
            self.stream = self.output.add_stream("libx264", rate=rate)
            self.stream.width, self.stream.height = width + width % 2, height + height % 2
            self.stream.pix_fmt = "yuv420p"
            self.stream.codec_context.time_base = 1 / rate  # pts count frames of the source
            self.stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": str(crf),
                                   "g": str(max(1, round(fps / KEYFRAMES_PER_SECOND)))}
        except (OSError, av.FFmpegError) as error:
            raise LiveError(f"cannot stream to {self.address} ({error}); check --host and --port") from error
        self.frames_sent, self.first_index = 0, None
        logger.info("streaming MPEG-TS to %s (play it with `ffplay %s`)", self.address, self.address)

    def write(self, frame: np.ndarray, index: int, status: Sequence[str]) -> bool:
        if frame.shape[0] % 2 or frame.shape[1] % 2:  # yuv420p needs even sizes
            frame = cv2.copyMakeBorder(frame, 0, frame.shape[0] % 2, 0, frame.shape[1] % 2, cv2.BORDER_REPLICATE)
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        self.first_index = index if self.first_index is None else self.first_index
        video_frame.pts = index - self.first_index  # a dropped frame's time stays empty; the receiver holds the picture
        try:
            self.output.mux(self.stream.encode(video_frame))
        except (OSError, av.FFmpegError) as error:
            raise LiveError(f"sending to {self.address} failed ({error})") from error
        self.frames_sent += 1
        return True

    def close(self, report: dict | None) -> None:
        try:
            if report is not None:
                self.output.mux(self.stream.encode(None))  # the encoder's last frames
        finally:
            self.output.close()


def open_window(options: LiveOptions, width: int, height: int, fps: float, revision: dict,
                labels: OutputLabels | None) -> FrameSink:
    return WindowSink()


def open_file(options: LiveOptions, width: int, height: int, fps: float, revision: dict,
              labels: OutputLabels | None) -> FrameSink:
    if options.output is None:
        raise LiveError("the file sink needs an output path: pass --output FILE.mp4")
    return FileSink(options.output, width, height, fps, options.crf, revision, labels)


def open_udp(options: LiveOptions, width: int, height: int, fps: float, revision: dict,
             labels: OutputLabels | None) -> FrameSink:
    return UdpSink(options.host, options.port, width, height, fps, options.crf)


SINKS: dict[SinkKind, Callable[[LiveOptions, int, int, float, dict, OutputLabels | None], FrameSink]] = {
    "window": open_window, "file": open_file, "udp": open_udp}


def open_sink(options: LiveOptions, width: int, height: int, fps: float, revision: dict,
              labels: OutputLabels | None = None) -> FrameSink:
    """Open the sink `options.sink` names for frames of this size and rate.

    Args:
        options: the live options (sink, output, host, port, crf).
        width, height: the frames' size.
        fps: the source's frame rate (the file's and the stream's rate).
        revision: tasks.provenance.pipeline_revision, recorded in the file sink's container and sidecar.
        labels: the run's labels; the file sink signs its MP4 with their identity. None: labelling is off.

    Raises:
        LiveError: no display for a window, no output path, or the stream cannot be opened.
        tasks.video.VideoError: the file cannot be created.
    """
    return SINKS[options.sink](options, width, height, fps, revision, labels)
