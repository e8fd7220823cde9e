"""Live mode: swap the face in every frame of a camera (or a video read as one) with a DeepFaceLive .dfm.

Per frame, each stage timed on its own (tasks.live_stats):
- detect: dlib HOG on a downscaled copy of the frame, only every `detect_every` frames or when
  tracking is lost; in between the 68 landmarks are refitted inside each track's last box
  (tasks.tracking.FaceFollower), then smoothed causally (only past frames exist in a live stream);
- align: the model's face type cut from the frame at the model's resolution;
- swap: the .dfm in ONNX Runtime (tasks.live_model);
- merge: the mask mode's mask, steadied along the track, eroded and feathered, the face recoloured
  and pasted back by warping only the face's region of the frame (tasks.composite, as the merge
  stage does);
- label, sink: the labelling step (tasks.live_sinks.label_output_frame), then the window, file or
  udp stream.
A frame in which no face is found passes through unchanged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Hashable
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tasks.align import compute_alignment, transform_points, warp_to_crop
from tasks.composite import CompositeOptions, paste_face
from tasks.detect import DlibAnalyzer
from tasks.live_model import DfmSwapModel
from tasks.live_options import LiveOptions
from tasks.c2pa_signing import SigningIdentity
from tasks.live_sinks import FrameSink, OutputLabels, label_output_frame, open_sink
from tasks.live_sources import FrameSource, open_source
from tasks.live_stats import LiveReport, StageClock
from tasks.masks import hull_mask
from tasks.merge import MASK_REFERENCE_SIDE
from tasks.merge_masks import MaskSmoother, build_face_mask
from tasks.smoothing import fit_local_line, window_radius
from tasks.tracking import FaceFollower

logger = logging.getLogger(__name__)

STATUS_EVERY_SECONDS = 5.0  # how often the status line is logged while running


class CausalLandmarkSmoother:
    """Landmark smoothing for a live stream, where only past frames exist.

    Each track's landmarks are replaced by the value at the current frame of a Gaussian-weighted
    line fitted through the track's landmarks of this and the previous frames (tasks.smoothing's
    local linear fit, one-sided): steady motion passes without lag, frame-to-frame noise is
    averaged. Strength is the Gaussian's sigma in frames; sigma 3 halves the jitter measured by
    tasks.smoothing.jitter on talking-head and webcam clips.
    """

    def __init__(self, strength: float) -> None:
        self.strength, self.radius = strength, window_radius(strength)
        self.history: dict[Hashable, deque[tuple[int, np.ndarray]]] = {}  # track -> (frame, (68, 2) float64)

    def smooth(self, track: Hashable, frame: int, landmarks: np.ndarray) -> np.ndarray:
        """(68, 2) landmarks of `track` at processed frame number `frame` -> smoothed (68, 2) float32."""
        if self.radius == 0:
            return landmarks
        past = self.history.setdefault(track, deque())
        past.append((frame, np.asarray(landmarks, dtype=np.float64)))
        while past[0][0] < frame - self.radius:
            past.popleft()
        if len(self.history) > 1:  # forget tracks that are gone
            self.history = {key: value for key, value in self.history.items() if value[-1][0] >= frame - self.radius}
        offsets = np.array([step - frame for step, _ in past], dtype=np.float64)
        return fit_local_line(offsets, np.stack([points for _, points in past]), self.strength).astype(np.float32)


class LiveSwapper:
    """The per-frame pipeline: detect/track, align, swap, merge. Keeps the state that runs across frames."""

    def __init__(self, model: DfmSwapModel, options: LiveOptions, analyzer: DlibAnalyzer | None = None) -> None:
        """Args:
            model: the opened .dfm.
            options: the live options.
            analyzer: the face detector and landmark fitter; default dlib HOG on a copy of
                options.detect_side px with options.detect_upsample passes.
        """
        self.model, self.options = model, options
        analyzer = analyzer or DlibAnalyzer("hog", upsample=options.detect_upsample, max_side=options.detect_side)
        self.follower = FaceFollower(analyzer, detect_every=options.detect_every, max_faces=options.max_faces)
        self.landmark_smoother = CausalLandmarkSmoother(options.smoothing)
        self.mask_smoother = MaskSmoother(options.mask_smoothing)
        scale = model.resolution / MASK_REFERENCE_SIDE  # mask sizes mean the same part of the face as in merge
        self.composite_options = CompositeOptions(color_transfer=options.color_transfer, erode=round(options.mask_erode * scale),
                                                  blur=round(options.mask_blur * scale), blend_mode=options.blend_mode)
        self.processed = 0  # frames processed so far; the smoothers' clock (dropped frames do not count)

    def process(self, image: np.ndarray, clock: StageClock) -> tuple[np.ndarray, int]:
        """Swap the faces of one frame.

        Args:
            image: (H, W, 3) uint8 BGR frame.
            clock: receives the time of each stage that runs.

        Returns:
            (output frame, faces swapped); with no face found, `image` itself, untouched.
        """
        frame_number, side, face_type = self.processed, self.model.resolution, self.model.face_type
        self.processed += 1
        with clock.stage("detect"):
            tracked = self.follower.follow(image)
            landmarks = [self.landmark_smoother.smooth(item.track_id, frame_number, item.face.landmarks)
                         for item in tracked]
        if not tracked:
            return image, 0
        with clock.stage("align"):
            matrices = [compute_alignment(points, face_type, side) for points in landmarks]
            crops = np.stack([warp_to_crop(image, matrix, side) for matrix in matrices])  # (N, R, R, 3) uint8
        with clock.stage("swap"):
            swapped = self.model.swap(crops)
        with clock.stage("merge"):
            image = image.copy()  # one copy for all faces, pasted in place inside their boxes
            for index, (item, points, matrix) in enumerate(zip(tracked, landmarks, matrices, strict=True)):
                hull = hull_mask(transform_points(points, matrix), side).astype(np.float32) * np.float32(1 / 255)
                mask = build_face_mask(self.options.mask_mode, hull, swapped.masks[index], swapped.dst_masks[index])
                mask = self.mask_smoother.smooth(item.track_id, frame_number, mask)
                paste_face(image, matrix, swapped.faces[index], mask, crops[index], self.composite_options)
        return image, len(tracked)


def run_live(swapper: LiveSwapper, source: FrameSource, sink: FrameSink, max_frames: int = 0,
             labels: OutputLabels | None = None) -> LiveReport:
    """Swap the faces of every frame from `source` into `sink` until the source, max_frames, the sink or Ctrl-C stops it.

    Args:
        swapper: the per-frame pipeline.
        source: an opened source (tasks.live_sources).
        sink: an opened sink (tasks.live_sinks); closed here, with the report (or discarded on an error).
        max_frames: stop after this many frames; 0 = no limit.
        labels: the watermark every output frame gets (tasks.live_sinks.OutputLabels); None for none.

    Returns:
        The run's report: frame counts, fps and per-stage timing.
    """
    clock = StageClock()
    frames_with_face = faces_swapped = 0
    next_status = time.perf_counter() + STATUS_EVERY_SECONDS
    try:
        while not max_frames or clock.frames < max_frames:
            start = time.perf_counter()
            frame = source.read()
            if frame is None:
                break
            clock.add("read", (time.perf_counter() - start - source.waited) * 1000.0)  # a camera's pace is no work
            output, faces = swapper.process(frame.image, clock)
            frames_with_face += faces > 0
            faces_swapped += faces
            with clock.stage("label"):
                output = label_output_frame(output, labels)
            with clock.stage("sink"):
                keep_going = sink.write(output, frame.index, clock.status_lines())
            clock.finish_frame(frame.captured_at)
            if time.perf_counter() >= next_status:
                logger.info("%s", " | ".join(clock.status_lines()[:1] + [f"{source.dropped} dropped"]))
                next_status += STATUS_EVERY_SECONDS
            if not keep_going:
                logger.info("stopped from the window")
                break
    except KeyboardInterrupt:  # Ctrl-C is how a camera run is stopped: finish the output properly
        logger.info("interrupted: finishing the output")
    except BaseException:
        sink.close(None)
        raise
    seconds, latency, stages = clock.summarize()
    model = swapper.model
    report = LiveReport(model=str(model.path), resolution=model.resolution, face_type=model.face_type,
                        provider=model.providers[0], source=source.name, sink=type(sink).__name__,
                        frames=clock.frames, frames_with_face=frames_with_face, faces_swapped=faces_swapped,
                        dropped=source.dropped, detections=swapper.follower.detections, seconds=round(seconds, 3),
                        fps=round(clock.frames / seconds, 3) if seconds > 0 else 0.0, latency=latency, stages=stages)
    sink.close(asdict(report))
    return report


def swap_live(model_path: Path, source_spec: str, options: LiveOptions, revision: dict,
              identity: SigningIdentity | None = None) -> LiveReport:
    """Open the .dfm, the source and the sink `options` name, and run live until the source ends or is stopped.

    Args:
        model_path: the .dfm file.
        source_spec: a camera index ("0") or a video file.
        options: the live options.
        revision: tasks.provenance.pipeline_revision; labels the file sink's output.
        identity: The project's C2PA signing identity (tasks.c2pa_signing.ensure_signing_identity) for the
            file sink's manifest; None leaves the file unsigned (the watermark and sidecar still label it).

    Returns:
        The run's report.

    Raises:
        tasks.dfm_check.DfmError: the .dfm is missing or breaks the contract (the tensor is named).
        tasks.live_options.LiveError: no camera, no display, no output path, an unusable stream address.
        tasks.video.VideoError: the video source cannot be read or the file sink cannot be written.
    """
    model = DfmSwapModel(model_path, options.face_type, options.device, options.threads)
    swapper = LiveSwapper(model, options)
    with ExitStack() as stack:
        source = open_source(source_spec, options)
        stack.callback(source.close)
        labels = OutputLabels.for_revision(revision, identity) if options.label_synthetic else None
        if labels is None:
            logger.warning("live.label_synthetic is off: the output carries no watermark and no C2PA manifest; "
                           "label synthetic media you publish")
        sink = open_sink(options, source.width, source.height, source.fps, revision, labels)
        return run_live(swapper, source, sink, options.max_frames, labels)
