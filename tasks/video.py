"""Video probing, decoding to upright BGR frames (rotation metadata applied) and encoding, with PyAV."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from collections.abc import Collection, Iterator
from typing import Literal, get_args

import av
import cv2
import numpy as np

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"})

VideoCodec = Literal["h264", "h265"]
ENCODER_NAMES: dict[VideoCodec, str] = {"h264": "libx264", "h265": "libx265"}
assert set(ENCODER_NAMES) == set(get_args(VideoCodec)), "ENCODER_NAMES must cover every VideoCodec"
# x264/x265 speed presets, fastest first: at one CRF a faster preset spends less CPU per frame, for
# a somewhat larger file or slightly lower quality (benchmarks/merge_speed.py --presets measures
# both); None keeps the encoder's own (medium)
EncoderPreset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]

# clockwise degrees -> cv2 flag that turns a decoded frame upright
_ROTATE_FLAGS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
_REMEDY = "re-encode it or remove it from data/raw/<side>"


class VideoError(Exception):
    """A video cannot be read or written; the message names the file and what to do."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds. width/height are the display size (rotation already applied)."""

    path: Path
    width: int
    height: int
    fps: Fraction
    frame_count: int
    rotation: int  # degrees clockwise applied to decoded frames: 0, 90, 180 or 270
    duration: float
    codec: str
    has_audio: bool


def _unreadable(path: Path, reason: object) -> VideoError:
    return VideoError(f"{path}: cannot read video ({reason}); {_REMEDY}")


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise VideoError(f"{path}: no such video file; check the path")
    if path.stat().st_size == 0:
        raise _unreadable(path, "the file is empty")
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise _unreadable(path, error) from error
    if not container.streams.video:
        container.close()
        raise _unreadable(path, "it holds no video stream")
    return container


def _clockwise_rotation(frame: av.VideoFrame) -> int:
    # PyAV reports the display-matrix angle counter-clockwise, in [-180, 180]
    return int(round(-frame.rotation / 90.0)) % 4 * 90


def _to_bgr(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    image = frame.to_ndarray(format="bgr24")
    return cv2.rotate(image, _ROTATE_FLAGS[rotation]) if rotation else image


def probe_video(path: Path) -> VideoInfo:
    """Read a video's display size, frame rate, length, rotation and codec.

    Args:
        path: the video file.

    Returns:
        VideoInfo; frame_count is the container's sample count, or the number of demuxed
        packets when the container does not state it (Matroska, WebM).

    Raises:
        VideoError: the file is missing, empty, not a video, or its first frame cannot be decoded.
    """
    path = Path(path)
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        frame_count = stream.frames
        if frame_count <= 0:
            frame_count = sum(1 for packet in container.demux(stream) if packet.size > 0)
            container.seek(0)
        try:
            first_frame = next(container.decode(stream), None)
        except av.FFmpegError as error:
            raise _unreadable(path, error) from error
        if first_frame is None:
            raise _unreadable(path, "no frame could be decoded")
        rotation = _clockwise_rotation(first_frame)
        if stream.duration is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / av.time_base
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps:
            if duration <= 0:
                raise _unreadable(path, "it states neither a frame rate nor a duration")
            fps = Fraction(frame_count / duration).limit_denominator(1001)
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(path=path, width=width, height=height, fps=Fraction(fps), frame_count=frame_count,
                         rotation=rotation, duration=duration, codec=stream.codec_context.name,
                         has_audio=bool(container.streams.audio))
    finally:
        container.close()


def _decode_stream(path: Path) -> Iterator[tuple[int, float, av.VideoFrame, int]]:
    """Yield (index, seconds since the first frame, frame, clockwise rotation) for every frame."""
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        origin_pts, packet_count, index = None, 0, 0
        try:
            for packet in container.demux(stream):
                packet_count += packet.size > 0
                for frame in packet.decode():
                    if frame.pts is None:
                        timestamp = index / float(rate)
                    else:
                        origin_pts = frame.pts if origin_pts is None else origin_pts
                        timestamp = float((frame.pts - origin_pts) * stream.time_base)
                    yield index, timestamp, frame, _clockwise_rotation(frame)
                    index += 1
        except av.FFmpegError as error:
            raise VideoError(f"{path}: decoding failed after {index} frames ({error}); {_REMEDY}") from error
        if packet_count < stream.frames:
            raise VideoError(f"{path}: stream ended after {index} frames of the {stream.frames} its index lists "
                             f"(the file looks truncated); {_REMEDY}")
    finally:
        container.close()


def iter_frames(
    path: Path, every_n: int = 1, fps: float | None = None, include: Collection[int] = ()
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decode a video into upright BGR frames.

    Args:
        path: the video file.
        every_n: keep every n-th frame (of the sampled ones when `fps` is also given).
        fps: sample at this rate, keeping the frame nearest each sample time; None keeps all.
        include: frame indices yielded as well, sampled or not (e.g. frames with faces placed by hand).

    Returns:
        Iterator of (frame_index, timestamp_seconds, frame): frame_index counts every frame of
        the stream, the timestamp is measured from the first frame.

    Raises:
        VideoError: the file cannot be opened, or decoding stops early (the message says how many
            frames were read; frames already yielded stay valid).
        ValueError: every_n < 1 or fps <= 0.
    """
    if every_n < 1:
        raise ValueError(f"every_n must be >= 1, got {every_n}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    include = frozenset(include)
    extra: list[tuple] = []  # included frames decoded but not yet yielded, in stream order

    def tap(stream: Iterator[tuple]) -> Iterator[tuple]:
        for item in stream:
            if item[0] in include:
                extra.append(item)
            yield item

    frames = tap(_decode_stream(Path(path)))
    if fps is not None:
        frames = _sample_at_rate(frames, 1.0 / fps)
    for kept, (index, timestamp, frame, rotation) in enumerate(frames):
        # the sampler looks at most one frame ahead, so every included frame before this one is buffered
        while extra and extra[0][0] < index:
            before = extra.pop(0)
            yield before[0], before[1], _to_bgr(before[2], before[3])
        if extra and extra[0][0] == index:
            extra.pop(0)
            yield index, timestamp, _to_bgr(frame, rotation)
        elif kept % every_n == 0:
            yield index, timestamp, _to_bgr(frame, rotation)
    for index, timestamp, frame, rotation in extra:
        yield index, timestamp, _to_bgr(frame, rotation)


def _sample_at_rate(frames: Iterator[tuple], period: float) -> Iterator[tuple]:
    """Keep the frame nearest each sample time 0, period, 2*period, ... (each frame at most once)."""
    previous, sample, last_kept_index, half_frame = None, 0, -1, 0.0
    for current in frames:
        while current[1] >= sample * period:
            target = sample * period
            nearer_before = previous is not None and target - previous[1] < current[1] - target
            chosen = previous if nearer_before else current
            if chosen[0] != last_kept_index:
                last_kept_index = chosen[0]
                yield chosen
            sample += 1
        if previous is not None:
            half_frame = (current[1] - previous[1]) / 2
        previous = current
    # a sample time less than half a frame past the last frame still belongs to it
    if previous is not None and previous[0] != last_kept_index and sample * period - previous[1] <= half_frame:
        yield previous


class VideoWriter:
    """Encode BGR frames to a yuv420p video, optionally carrying over another file's audio.

    The file appears at `path` only when close() succeeds: frames go to a temporary file in the
    same folder that replaces `path` at the end; leaving a `with` block on an exception discards it.
    Frame i gets pts i in a 1/fps time base, so count and rate survive a probe_video round trip.
    Odd sizes are padded by one replicated row/column (yuv420p needs even sizes). The audio of
    `audio_from` is stream-copied, interleaved as frames arrive, shifted so that written frame 0
    lines up with that file's first video frame, and cut at the end of the written video.

    Raises (constructor):
        VideoError: the output cannot be created, or `audio_from` cannot be read.
        ValueError: unknown codec or preset.
    """

    def __init__(self, path: Path, width: int, height: int, fps: Fraction, codec: VideoCodec = "h264",
                 crf: int = 18, audio_from: Path | None = None, metadata: dict[str, str] | None = None,
                 preset: EncoderPreset | None = None) -> None:
        if codec not in ENCODER_NAMES:
            raise ValueError(f"codec must be one of {list(get_args(VideoCodec))}, got {codec!r}")
        if preset is not None and preset not in get_args(EncoderPreset):
            raise ValueError(f"preset must be one of {list(get_args(EncoderPreset))} or None, got {preset!r}")
        self.path, self.width, self.height = Path(path), int(width), int(height)
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        self.frames_written = 0
        self._temporary = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:8]}.partial{self.path.suffix}")
        self._audio_source = self._audio = self._pending_audio = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._output = av.open(str(self._temporary), "w")
        except (OSError, av.FFmpegError) as error:
            raise VideoError(f"{self.path}: cannot write a video here ({error}); choose a writable path") from error
        try:
            self._output.metadata.update(metadata or {})
            self._video = self._output.add_stream(ENCODER_NAMES[codec], rate=self.fps)
            self._video.width, self._video.height = self.width + self.width % 2, self.height + self.height % 2
            self._video.pix_fmt = "yuv420p"
            self._video.time_base = self._video.codec_context.time_base = 1 / self.fps
            self._video.options = {"crf": str(crf)} | ({} if preset is None else {"preset": preset})
            if codec == "h265":
                self._video.codec_tag = "hvc1"  # the tag Apple players require for HEVC in mp4/mov
                self._video.options["x265-params"] = "log-level=error"
            if audio_from is not None:
                self._open_audio_source(Path(audio_from))
        except BaseException:
            self._discard()
            raise

    def _open_audio_source(self, audio_from: Path) -> None:
        source = _open_input(audio_from)
        if not source.streams.audio:
            logger.info("%s has no audio stream; writing %s without audio", audio_from, self.path)
            source.close()
            return
        source_audio, source_video = source.streams.audio[0], source.streams.video[0]
        self._audio_source = source
        self._audio = self._output.add_stream_from_template(source_audio)
        video_start = (source_video.start_time or 0) * source_video.time_base
        self._audio_offset = round(video_start / source_audio.time_base)
        self._audio_packets = source.demux(source_audio)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self.close() if error_type is None else self._discard()

    def write(self, frame_bgr: np.ndarray) -> None:
        """Encode one frame.

        Args:
            frame_bgr: uint8 (height, width, 3) BGR image of the size given to the writer.

        Raises:
            ValueError: the frame has the wrong shape or dtype.
            VideoError: the encoder or the disk failed.
        """
        if frame_bgr.shape != (self.height, self.width, 3) or frame_bgr.dtype != np.uint8:
            raise ValueError(f"{self.path}: frame must be uint8 {(self.height, self.width, 3)}, "
                             f"got {frame_bgr.dtype} {frame_bgr.shape}")
        if self.width % 2 or self.height % 2:
            frame_bgr = cv2.copyMakeBorder(frame_bgr, 0, self.height % 2, 0, self.width % 2, cv2.BORDER_REPLICATE)
        # OpenCV's BT.601 conversion, not swscale's: swscale's bgr24 -> yuv420p comes out 1-5 levels dark
        # (white decodes as 250-253), OpenCV's decodes back to within a level.
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        frame.pts = self.frames_written
        try:
            self._output.mux(self._video.encode(frame))
            self.frames_written += 1
            self._copy_audio(until=self.frames_written / self.fps)
        except (OSError, av.FFmpegError) as error:
            raise VideoError(f"{self.path}: encoding failed ({error}); check free disk space") from error

    def close(self) -> None:
        """Flush the encoder (else the last frames are lost), finish the audio, move the file into place.

        Raises:
            VideoError: flushing, muxing or the final rename failed (`path` is left untouched).
        """
        if self._output is None:
            return
        try:
            self._output.mux(self._video.encode(None))
            self._copy_audio(until=self.frames_written / self.fps)
            self._output.close()
            self._output = None
            os.replace(self._temporary, self.path)
        except (OSError, av.FFmpegError) as error:
            self._discard()
            raise VideoError(f"{self.path}: finishing the video failed ({error}); check free disk space") from error
        finally:
            self._close_audio_source()
        logger.info("wrote %s (%d frames at %s fps)", self.path, self.frames_written, self.fps)

    def _copy_audio(self, until: Fraction) -> None:
        """Mux the source audio packets that start before `until` seconds of written video."""
        while self._audio is not None:
            packet = self._pending_audio or next(self._audio_packets, None)
            self._pending_audio = None
            if packet is None:
                return
            if packet.pts is None or packet.pts < self._audio_offset:
                continue
            if (packet.pts - self._audio_offset) * packet.time_base >= until:
                self._pending_audio = packet
                return
            packet.pts -= self._audio_offset
            packet.dts = packet.pts if packet.dts is None else max(packet.dts - self._audio_offset, 0)
            packet.stream = self._audio
            self._output.mux(packet)

    def _close_audio_source(self) -> None:
        if self._audio_source is not None:
            self._audio_source.close()
        self._audio_source = self._audio = self._pending_audio = None

    def _discard(self) -> None:
        """Drop the unfinished file; runs while another error is on its way up, so it only logs."""
        self._close_audio_source()
        if self._output is not None:
            try:
                self._output.close()
            except (OSError, av.FFmpegError) as error:
                logger.warning("closing the unfinished %s failed: %s", self._temporary, error)
            self._output = None
        self._temporary.unlink(missing_ok=True)
