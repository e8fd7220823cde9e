"""Where a render's frames go: an H.264/H.265 mp4 carrying the dst audio, or a folder of PNG frames,
written on a thread of its own so that encoding overlaps swapping.

A half-written render never replaces an earlier one: the mp4 is written to a temporary file and
the PNG frames to a hidden folder, each moved into place only when the render completes.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from fractions import Fraction
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np

from tasks.video import EncoderPreset, VideoCodec, VideoError, VideoInfo, VideoWriter

logger = logging.getLogger(__name__)

RenderFormat = Literal[VideoCodec, "png"]
RENDER_FORMAT_CHOICES: tuple[str, ...] = get_args(RenderFormat)
WRITE_QUEUE_DEPTH = 8  # rendered frames waiting for the encoder (8 x 720p is about 22 MB)


class FrameRangeWriter(VideoWriter):
    """A VideoWriter whose copied audio starts ``audio_start`` seconds into the source (a frame range's render)."""

    def __init__(self, *args, audio_start: Fraction = Fraction(0), **kwargs) -> None:
        self.audio_start = audio_start
        super().__init__(*args, **kwargs)

    def _open_audio_source(self, audio_from: Path) -> None:
        super()._open_audio_source(audio_from)
        if self._audio is not None:
            self._audio_offset += round(self.audio_start / self._audio_source.streams.audio[0].time_base)


class PngSequenceWriter:
    """Writes ``<folder>/<frame index:06d>.png``; the folder replaces an earlier one only when close() succeeds."""

    def __init__(self, folder: Path, first_index: int) -> None:
        self.folder, self.next_index = Path(folder), first_index
        self.temporary = self.folder.with_name(f".{self.folder.name}.partial")
        try:
            shutil.rmtree(self.temporary, ignore_errors=True)
            self.temporary.mkdir(parents=True)
        except OSError as error:
            raise VideoError(f"{self.folder}: cannot write PNG frames here ({error}); choose a writable path") from error

    def __enter__(self) -> PngSequenceWriter:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self.close() if error_type is None else shutil.rmtree(self.temporary, ignore_errors=True)

    def write(self, frame_bgr: np.ndarray) -> None:
        """Write the next frame (fast PNG compression: frames are large and written often)."""
        path = self.temporary / f"{self.next_index:06d}.png"
        if not cv2.imwrite(str(path), frame_bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise VideoError(f"{path}: writing the PNG frame failed; check free disk space")
        self.next_index += 1

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(self.temporary, self.folder)
        logger.info("wrote %s (PNG frames up to %06d)", self.folder, self.next_index - 1)


def open_frame_sink(output: Path, info: VideoInfo, codec: RenderFormat, crf: int, start_frame: int,
                    metadata: dict[str, str], preset: EncoderPreset | None = None) -> FrameRangeWriter | PngSequenceWriter:
    """The writer for a render: an H.264/H.265 mp4 (encoder ``preset``) with the dst audio, or PNG frames (no audio)."""
    if codec == "png":
        if info.has_audio:
            logger.info("%s: PNG frames carry no audio; take it from %s when assembling them", output, info.path)
        return PngSequenceWriter(output, start_frame)
    return FrameRangeWriter(output, info.width, info.height, info.fps, codec=codec, crf=crf, audio_from=info.path,
                            metadata=metadata, preset=preset, audio_start=Fraction(start_frame) / info.fps)


class BackgroundWriter:
    """Hands frames to a sink on a second thread: encoding overlaps swapping (PyAV and OpenCV release the GIL).

    A sink error is raised by the next ``write`` or on leaving the ``with`` block."""

    def __init__(self, sink: FrameRangeWriter | PngSequenceWriter, depth: int = WRITE_QUEUE_DEPTH) -> None:
        self.sink, self.error = sink, None
        self.frames: queue.Queue[np.ndarray | None] = queue.Queue(depth)
        self.thread = threading.Thread(target=self.drain, name="merge-writer", daemon=True)
        self.thread.start()

    def drain(self) -> None:
        while (frame := self.frames.get()) is not None:
            if self.error is None:
                try:
                    self.sink.write(frame)
                except Exception as error:  # handed to the rendering thread, which raises it
                    self.error = error

    def write(self, frame: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.frames.put(frame)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self.frames.put(None)
        self.thread.join()
        if error_type is None and self.error is not None:
            raise self.error
