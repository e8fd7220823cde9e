"""Options of live mode (`faceflow live`), its choice types and its user-facing error.

Shared by the live pipeline (tasks.live), its model (tasks.live_model), sources (tasks.live_sources)
and sinks (tasks.live_sinks). Mask and colour options mean what the merge stage's options of the
same name mean, so a setting tried with `faceflow merge-preview` carries over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pydantic import ConfigDict, with_config

from tasks.align import FaceType
from tasks.blend import BlendMode
from tasks.color import ColorTransfer
from tasks.merge_masks import MaskMode

SourceKind = Literal["camera", "video"]
SOURCE_KINDS: tuple[str, ...] = get_args(SourceKind)
SinkKind = Literal["window", "file", "udp"]
SINK_KINDS: tuple[str, ...] = get_args(SinkKind)
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)
# The per-frame stages, in order, each timed on its own; "read" is the source handing over a frame.
Stage = Literal["read", "detect", "align", "swap", "merge", "label", "sink"]
STAGES: tuple[str, ...] = get_args(Stage)

DEFAULT_UDP_HOST = "127.0.0.1"  # loopback: nothing leaves the machine unless asked
DEFAULT_UDP_PORT = 5004


class LiveError(Exception):
    """Live mode cannot run as asked; the message names the source, sink, file or option and what to do."""


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class LiveOptions:
    """How `faceflow live` finds, swaps and pastes faces, and where the frames go."""

    face_type: FaceType | None = None  # framing the model was trained on; None = the .dfm's record
    device: Device = "auto"  # auto = CUDA when ONNX Runtime offers it, else the CPU
    threads: int = 0  # ONNX Runtime intra-op threads; 0 lets it choose
    detect_every: int = 5  # full detection every n-th frame; landmarks are refitted (tracked) in between
    detect_side: int = 320  # longer side (px) of the downscaled copy the detector searches
    detect_upsample: int = 1  # detector upsampling passes on that copy: finds faces half as large per pass
    max_faces: int = 1  # faces swapped per frame, largest first; 0 = every face
    smoothing: float = 3.0  # causal landmark smoothing, Gaussian sigma in frames; 0 = off
    mask_mode: MaskMode = "hull_learned_predicted"
    mask_erode: int = 0  # px at a 256-px crop (as merge.mask_erode); negative grows the mask
    mask_blur: int = 16  # feather width, px at a 256-px crop (as merge.mask_blur)
    mask_smoothing: float = 0.5  # weight of the previous frame's mask along a face track; 0 = off
    color_transfer: ColorTransfer = "rct"  # rct costs about a millisecond; idt and sot far more
    blend_mode: BlendMode = "overlay"  # seamless costs several ms per face
    capture_width: int = 640  # frames of a video source are resized to this, like a webcam's; 0 = native
    capture_height: int = 480
    realtime: bool = True  # a video source delivers frames at its own rate and drops those that come too fast
    max_frames: int = 0  # stop after this many frames; 0 = at the end of the source (or q in the window)
    sink: SinkKind = "window"
    output: Path | None = None  # the file sink's .mp4
    crf: int = 20  # the file and udp sinks' H.264 quality (0..51, lower is better)
    host: str = DEFAULT_UDP_HOST  # the udp sink's receiver
    port: int = DEFAULT_UDP_PORT
    # every output frame carries the invisible watermark, the file sink's MP4 a signed C2PA manifest and a
    # provenance sidecar; off only on purpose (logged as a warning)
    label_synthetic: bool = True

    def __post_init__(self) -> None:
        if self.threads < 0 or self.detect_upsample < 0 or self.max_faces < 0 or self.max_frames < 0:
            raise ValueError("threads, detect_upsample, max_faces and max_frames must be >= 0, got "
                             f"{self.threads}, {self.detect_upsample}, {self.max_faces}, {self.max_frames}")
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1 (1 detects on every frame), got {self.detect_every}")
        if self.detect_side < 32:
            raise ValueError(f"detect_side must be >= 32 px, got {self.detect_side}")
        if self.smoothing < 0 or not 0.0 <= self.mask_smoothing < 1.0:
            raise ValueError(f"smoothing must be >= 0 and mask_smoothing in [0, 1), got {self.smoothing}, "
                             f"{self.mask_smoothing}")
        if not -1024 <= self.mask_erode <= 1024 or not 0 <= self.mask_blur <= 1024 or not 0 <= self.crf <= 51:
            raise ValueError(f"need mask_erode in -1024..1024, mask_blur in 0..1024, crf in 0..51; got "
                             f"{self.mask_erode}, {self.mask_blur}, {self.crf}")
        if (self.capture_width == 0) != (self.capture_height == 0) or min(self.capture_width, self.capture_height) < 0:
            raise ValueError(f"capture size must be two positive numbers, or 0x0 for the source's own size; got "
                             f"{self.capture_width}x{self.capture_height}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.sink == "file" and self.output is None:
            raise ValueError("the file sink needs an output path (--output FILE.mp4)")

    @property
    def capture_size(self) -> tuple[int, int] | None:
        """(width, height) frames are delivered at; None keeps the source's own size."""
        return (self.capture_width, self.capture_height) if self.capture_width else None
