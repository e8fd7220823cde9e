"""Reading the watermark of tasks.watermark back: from a frame, an image file, or frames spread over a video."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from tasks.watermark import (DITHER, MAGIC_BITS, MAGIC_ERRORS_ALLOWED, MAGIC_SIGNS, STEP, TAG_CODEBOOK, chip_means,
                             project_bits, to_work_luma, work_grid)


@dataclass(frozen=True)
class WatermarkReading:
    """What the reader found in a frame, an image or a video.

    ``confidence`` is the mean agreement of the magic bits, in [-1, 1]: 1 when every frame shows
    every magic bit clearly, about 0 (+- 0.16) in a picture without the watermark.
    """

    found: bool
    payload: tuple[int, ...]  # the decoded (voted) bits
    revision_tag: int | None  # the decoded 8-bit tag, when found
    magic_bits_matched: int  # of MAGIC_BITS
    confidence: float
    frames: int  # frames read
    frame_agreement: float  # mean share of each frame's bits equal to the voted payload

    def bit_accuracy(self, expected: np.ndarray) -> float:
        """Share of the decoded bits equal to ``expected`` (an encode_payload result)."""
        return float(np.mean(np.asarray(self.payload) == np.asarray(expected)))


MIN_CONFIDENCE = 0.45  # mean agreement of the magic bits; an unmarked picture gives 0 +- 0.16


def soft_bits(frame_bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) BGR or (H, W) gray frame -> (PAYLOAD_BITS,) soft bits in [-1, 1], > 0 for a 1."""
    luma = to_work_luma(frame_bgr)
    projections = project_bits(chip_means(luma, work_grid(*luma.shape)))
    return -np.cos(2.0 * np.pi * (projections - DITHER) / STEP)


def vote(soft: np.ndarray) -> WatermarkReading:
    """(frames, PAYLOAD_BITS) soft bits -> the reading of their sum."""
    soft = np.atleast_2d(soft)
    # frames count by how far their soft bits stand out from chance (|cos| of a uniform phase averages 2/pi):
    # re-encoding wears the mark off towards the end of each group of pictures. The weight ignores the
    # signs, so it favours no payload in an unmarked video.
    weights = np.maximum(np.abs(soft).mean(axis=1) - 2.0 / np.pi, 1e-3)
    mean = weights @ soft / weights.sum()
    bits = (mean > 0).astype(np.uint8)
    matched = int(np.sum((mean[:MAGIC_BITS] > 0) == (MAGIC_SIGNS > 0)))
    confidence = float(np.mean(mean[:MAGIC_BITS] * MAGIC_SIGNS))
    found = matched >= MAGIC_BITS - MAGIC_ERRORS_ALLOWED and confidence >= MIN_CONFIDENCE
    tag = int(np.argmax(TAG_CODEBOOK @ mean[MAGIC_BITS:])) if found else None  # nearest codeword to the soft bits
    agreement = float(np.mean((soft > 0) == bits[None, :]))
    return WatermarkReading(found, tuple(int(bit) for bit in bits), tag, matched, round(confidence, 4), len(soft),
                            round(agreement, 4))


def read_watermark(frame_bgr: np.ndarray) -> WatermarkReading:
    """Read the watermark of one frame (any size: the chip grid follows the frame)."""
    return vote(soft_bits(frame_bgr)[None, :])


def read_image_watermark(path: Path) -> WatermarkReading:
    """Read the watermark of an image file (PNG, JPEG, ...).

    Raises:
        ValueError: the file cannot be decoded as an image.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return read_watermark(image)


def sample_video_frames(path: Path, count: int) -> list[np.ndarray]:
    """Up to ``count`` upright BGR frames spread over a video: key frames when it has enough, else every n-th frame.

    Key frames are decoded alone (fast on long videos) and carry the watermark best.

    Raises:
        av.FFmpegError: the file is not a readable video.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = keyframes = 0
        for packet in container.demux(stream):
            packets += packet.size > 0
            keyframes += packet.is_keyframe
        container.seek(0)
        if keyframes >= count:
            stream.codec_context.skip_frame = "NONKEY"
        step = max(keyframes if keyframes >= count else packets, 1) / count
        wanted = {int(index * step) for index in range(count)}
        stream.thread_type = "AUTO"
        frames = []
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                turns = int(round(-frame.rotation / 90.0)) % 4  # display matrix, counter-clockwise degrees
                frames.append(np.ascontiguousarray(np.rot90(frame.to_ndarray(format="bgr24"), -turns)))
    return frames


def read_video_watermark(path: Path, frames: int = 24) -> WatermarkReading:
    """Read a video's watermark on ``frames`` frames spread over it and vote.

    Raises:
        ValueError: no frame could be decoded.
        av.FFmpegError: the file is not a readable video.
    """
    sampled = sample_video_frames(Path(path), frames)
    if not sampled:
        raise ValueError(f"{path}: no video frame could be decoded")
    return vote(np.stack([soft_bits(frame) for frame in sampled]))
