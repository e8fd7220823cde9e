"""Merge: render each destination video with the swapped face, keeping its frames, rate and audio.

Per dst face: the model's face type is cut from the frame at the model's resolution R (as training
re-frames the faceset), the model paints the src identity and its masks, the mask mode combines
them (tasks.merge_masks), the mask is steadied along the face's track, and the face is pasted with
the colour transfer and blend mode asked for (tasks.composite). Faces the dst curation rejected as
"other person" are left as they are; faces it rejected for any other reason (duplicates, blur,
size) are still swapped, since every frame of the render needs its face.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, Protocol, get_args

import cv2
import numpy as np
import torch
from pydantic import ConfigDict, with_config

from model.checkpoint import load_checkpoint
from model.networks import SwapAutoencoder
from tasks.align import FaceType, compute_alignment, transform_points, warp_to_crop
from tasks.blend import BlendMode, MotionBlur, SharpenMode, estimate_motion
from tasks.color import ColorTransfer
from tasks.composite import CompositeOptions, composite_face, scale_about_centre
from tasks.faceset import hash_file, open_faces
from tasks.masks import hull_mask
from tasks.merge_masks import FlickerMeter, MaskMode, MaskSmoother, build_face_mask, needs_dst_mask
from tasks.selection import Selection
from tasks.video import VideoCodec, VideoError, VideoInfo, VideoWriter, iter_frames, probe_video

logger = logging.getLogger(__name__)

RenderFormat = Literal[VideoCodec, "png"]
RENDER_FORMAT_CHOICES: tuple[str, ...] = get_args(RenderFormat)
WRITE_QUEUE_DEPTH = 8  # rendered frames waiting for the encoder (8 x 720p is about 22 MB)
# Curation reasons that mean "not the target person": these faces are never swapped.
OTHER_PERSON_REASON = "other person"
# mask_erode and mask_blur are pixels of a crop this wide, scaled to the model's resolution, so a
# setting means the same part of the face whatever the model size.
MASK_REFERENCE_SIDE = 256


class MergeError(ValueError):
    """The merge cannot run as asked: the message names the setting, file or frame and what to do."""


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class MergeOptions:
    """params.yaml ``merge``: how the swapped face is put back and how the render is encoded."""

    mask_mode: MaskMode = "hull_learned_predicted"
    mask_erode: int = 0  # px at a 256-px crop; negative grows the mask
    mask_blur: int = 16  # feather width in px at a 256-px crop
    mask_smoothing: float = 0.5  # weight of the previous frame's mask along a face track; 0 = off
    face_scale: int = 0  # percent, -50..50: paste the face larger (+) or smaller (-) about its centre
    motion_blur: int = 0  # percent, 0..100 of the distance the face moves per frame
    color_transfer: ColorTransfer = "rct"
    color_masked: bool = True  # colour statistics inside the mask only; false = the whole crop
    blend_mode: BlendMode = "overlay"
    hist_match_threshold: int = 238  # 0..255, the hist_match blend modes only
    sharpen_mode: SharpenMode = "none"
    sharpen_amount: int = 0  # percent, 0..100
    codec: RenderFormat = "h264"
    crf: int = 18
    start_frame: int = 0
    end_frame: int | None = None  # last frame rendered (inclusive); None = the video's last
    label_synthetic: bool = True  # container label + provenance sidecar; turning it off is logged

    def __post_init__(self) -> None:
        ranges = {"crf": (0, 51), "mask_blur": (0, 1024), "mask_erode": (-1024, 1024), "face_scale": (-50, 50),
                  "motion_blur": (0, 100), "hist_match_threshold": (0, 255), "sharpen_amount": (0, 100)}
        for name, (low, high) in ranges.items():
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"merge.{name} must be in {low}..{high}, got {getattr(self, name)}")
        if not 0.0 <= self.mask_smoothing < 1.0:
            raise ValueError(f"merge.mask_smoothing must be in [0, 1) (0 = off), got {self.mask_smoothing}")
        if self.start_frame < 0 or (self.end_frame is not None and self.end_frame < self.start_frame):
            raise ValueError(f"merge.start_frame ({self.start_frame}) must be >= 0 and merge.end_frame "
                             f"({self.end_frame}) null or >= start_frame")

    def make_composite_options(self, side: int) -> CompositeOptions:
        """The per-face paste settings for a crop of ``side`` px (mask sizes scaled from the 256-px reference)."""
        scale = side / MASK_REFERENCE_SIDE
        return CompositeOptions(
            color_transfer=self.color_transfer, color_masked=self.color_masked, erode=round(self.mask_erode * scale),
            blur=round(self.mask_blur * scale), blend_mode=self.blend_mode, hist_match_threshold=self.hist_match_threshold,
            sharpen_mode=self.sharpen_mode, sharpen_amount=self.sharpen_amount)


@dataclass
class DstFace:
    face_id: str
    track_id: int
    landmarks: np.ndarray  # (68, 2) frame px, already smoothed along the track by extraction


@dataclass
class Prediction:
    faces: np.ndarray  # (N, R, R, 3) float32 BGR in [0, 1], painted as the src identity
    masks: np.ndarray  # (N, R, R) float32 in [0, 1], the src decoder's mask
    dst_masks: np.ndarray | None  # (N, R, R) float32 in [0, 1], the dst path's mask, when asked for


class FacePredictor(Protocol):
    """What the merger needs from a model: its input framing and a batch prediction."""

    resolution: int
    face_type: FaceType

    def predict(self, crops: list[np.ndarray], with_dst_mask: bool) -> Prediction:
        """(R, R, 3) uint8 BGR crops of the model's face type -> the swapped faces and their masks."""
        ...


class FaceSwapper:
    """Runs a trained model on dst crops (a FacePredictor)."""

    def __init__(self, model: SwapAutoencoder) -> None:
        # eval mode, and channels-last layout: about 15 % faster convolutions on the CPU, same results
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.resolution = model.config.resolution
        self.face_type: FaceType = model.config.face_type

    @classmethod
    def from_checkpoint(cls, directory: Path) -> FaceSwapper:
        return cls(load_checkpoint(directory).model)

    @torch.inference_mode()
    def predict(self, crops: list[np.ndarray], with_dst_mask: bool) -> Prediction:
        """Without the dst mask only the src path runs (about half the model's cost)."""
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255)  # (N, R, R, 3) -> (N, 3, R, R)
        batch = batch.contiguous(memory_format=torch.channels_last)
        if with_dst_mask:
            dst_mask, face, mask = self.model.swap(batch)
        else:
            (face, mask), dst_mask = self.model(batch, "src"), None
        return Prediction(face.permute(0, 2, 3, 1).numpy(), mask[:, 0].numpy(),
                          None if dst_mask is None else dst_mask[:, 0].numpy())


def check_face_type(model_face_type: str, params_face_type: str, checkpoint: Path) -> None:
    """Raise MergeError when the trained model's framing is not the one params.yaml asks for."""
    if model_face_type != params_face_type:
        raise MergeError(f"{checkpoint} was trained on {model_face_type} crops but params.yaml train.model.face_type is "
                         f"{params_face_type}; set it back to {model_face_type} or train again (dvc repro)")


def read_other_people(selection_path: Path) -> frozenset[str]:
    """Face ids the dst curation rejected as another person than the target (never swapped)."""
    if not selection_path.is_file():
        logger.warning("%s not found: every dst face is swapped (run the curate stage to swap only the target)",
                       selection_path)
        return frozenset()
    rejected = Selection.load(selection_path).rejected
    return frozenset(face_id for face_id, reason in rejected.items() if reason.startswith(OTHER_PERSON_REASON))


def load_dst_faces(faces_path: Path, source_id: str) -> dict[int, list[DstFace]]:
    """The dst faces of one video, grouped by frame index (in face index order)."""
    table = open_faces(faces_path).to_table(
        columns=["face_id", "frame_index", "face_index", "track_id", "landmarks"], filter=f"source_id = '{source_id}'")
    grouped: dict[int, list[tuple[int, DstFace]]] = defaultdict(list)
    for row in table.to_pylist():
        landmarks = np.asarray(row["landmarks"], np.float32).reshape(-1, 2)
        grouped[row["frame_index"]].append((row["face_index"], DstFace(row["face_id"], row["track_id"], landmarks)))
    return {frame: [face for _, face in sorted(faces, key=lambda item: item[0])] for frame, faces in grouped.items()}


class FrameMerger:
    """Swaps the faces of one video's frames in order, keeping each track's running mask.

    Args:
        predictor: the model.
        options: the merge params.
        faces_by_frame: frame index -> the faces to swap there (see load_dst_faces).
    """

    def __init__(self, predictor: FacePredictor, options: MergeOptions, faces_by_frame: dict[int, list[DstFace]]) -> None:
        self.predictor, self.options, self.faces_by_frame = predictor, options, faces_by_frame
        self.smoother = MaskSmoother(options.mask_smoothing)
        self.composite_options = options.make_composite_options(predictor.resolution)
        self.with_dst_mask = needs_dst_mask(options.mask_mode)

    def find_motion(self, frame_index: int, face: DstFace, matrix: np.ndarray) -> MotionBlur | None:
        """The face's streak: its track's landmarks in the frames before and after, when motion blur is on."""
        if self.options.motion_blur == 0:
            return None
        neighbours = [next((other.landmarks for other in self.faces_by_frame.get(frame_index + step, [])
                            if other.track_id == face.track_id), None) for step in (-1, 1)]
        return estimate_motion(neighbours[0], face.landmarks, neighbours[1], matrix, self.options.motion_blur,
                               self.predictor.resolution)

    def merge(self, frame_index: int, frame: np.ndarray) -> np.ndarray:
        """Swap every listed face of one frame; a frame without one comes back as it is (the same array)."""
        faces = self.faces_by_frame.get(frame_index, [])
        if not faces:
            return frame
        side = self.predictor.resolution
        matrices = [compute_alignment(face.landmarks, self.predictor.face_type, side) for face in faces]
        crops = [warp_to_crop(frame, matrix, side) for matrix in matrices]
        prediction = self.predictor.predict(crops, self.with_dst_mask)
        for index, (face, matrix, crop) in enumerate(zip(faces, matrices, crops, strict=True)):
            hull = hull_mask(transform_points(face.landmarks, matrix), side).astype(np.float32) / 255.0
            dst_mask = None if prediction.dst_masks is None else prediction.dst_masks[index]
            mask = build_face_mask(self.options.mask_mode, hull, prediction.masks[index], dst_mask)
            mask = self.smoother.smooth(face.track_id, frame_index, mask)
            output_matrix = scale_about_centre(matrix, self.options.face_scale, side)
            frame = composite_face(frame, output_matrix, prediction.faces[index], mask, crop, self.composite_options,
                                   self.find_motion(frame_index, face, matrix))
        return frame


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
                    metadata: dict[str, str]) -> FrameRangeWriter | PngSequenceWriter:
    """The writer for a render: an H.264/H.265 mp4 with the dst audio, or a folder of PNG frames (no audio)."""
    if codec == "png":
        if info.has_audio:
            logger.info("%s: PNG frames carry no audio; take it from %s when assembling them", output, info.path)
        return PngSequenceWriter(output, start_frame)
    return FrameRangeWriter(output, info.width, info.height, info.fps, codec=codec, crf=crf, audio_from=info.path,
                            metadata=metadata, audio_start=Fraction(start_frame) / info.fps)


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


@contextmanager
def leave_a_core_free() -> Iterator[None]:
    """Torch on one core fewer while frames are encoded on a second thread (contending threads spin-wait)."""
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, min(threads, cores - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class RenderReport:
    source: str
    output: str
    frames: int
    swapped_faces: int
    other_person_faces: int  # left unswapped: the dst curation says they are someone else
    frames_without_face: int
    dst_change: float  # summed |frame - previous frame| inside the swapped faces' boxes, dst
    render_change: float  # the same on the render
    flicker: float | None  # render_change / dst_change; 1.0 = as steady as the dst; None without consecutive faces


def render_video(
    video: Path,
    faces_path: Path,
    predictor: FacePredictor,
    output: Path,
    options: MergeOptions,
    metadata: dict[str, str],
    on_frame=None,
    other_people: frozenset[str] = frozenset(),
) -> RenderReport:
    """Render one dst video (or its frame range): every frame decoded, the target's faces swapped, encoded.

    Args:
        video: the dst video.
        faces_path: the dst faces table.
        predictor: the model (FaceSwapper) or any FacePredictor.
        output: the .mp4 file, or with codec png the folder of numbered PNG frames.
        options: the merge params.
        metadata: container metadata (the synthetic-media label); not written to PNG frames.
        on_frame: called once per rendered frame (progress).
        other_people: face ids never swapped (see read_other_people).

    Raises:
        MergeError: the frame range starts past the end of the video.
        tasks.video.VideoError: the video cannot be read, or the output cannot be written (raised
            before any frame is decoded; a half-written output never replaces an earlier one).
    """
    info = probe_video(video)
    if options.start_frame >= info.frame_count:
        raise MergeError(f"merge.start_frame is {options.start_frame} but {video} has {info.frame_count} frames "
                         f"(0..{info.frame_count - 1}); lower it")
    last = info.frame_count - 1 if options.end_frame is None else min(options.end_frame, info.frame_count - 1)
    faces_by_frame = load_dst_faces(faces_path, hash_file(video))
    wanted = {index: [face for face in faces if face.face_id not in other_people] for index, faces in faces_by_frame.items()}
    merger, flicker = FrameMerger(predictor, options, wanted), FlickerMeter()
    swapped = skipped = missing = frames = 0
    with (leave_a_core_free(), open_frame_sink(output, info, options.codec, options.crf, options.start_frame, metadata) as sink,
          BackgroundWriter(sink) as writer):
        for frame_index, _, frame in iter_frames(video):
            if frame_index < options.start_frame:
                continue
            if frame_index > last:
                break
            faces = wanted.get(frame_index, [])
            swapped += len(faces)
            skipped += len(faces_by_frame.get(frame_index, [])) - len(faces)
            missing += not faces_by_frame.get(frame_index)
            rendered = merger.merge(frame_index, frame)
            flicker.add(frame_index, frame, rendered, [face.landmarks for face in faces])
            writer.write(rendered)
            frames += 1
            if on_frame is not None:
                on_frame()
    logger.log(logging.WARNING if missing else logging.INFO, "%s: %d faces swapped, %d of other people left as they are, "
               "%d of %d frames without a face (passed through unchanged)", video, swapped, skipped, missing, frames)
    return RenderReport(source=str(video), output=str(output), frames=frames, swapped_faces=swapped,
                        other_person_faces=skipped, frames_without_face=missing, dst_change=flicker.dst_change,
                        render_change=flicker.render_change, flicker=flicker.ratio)

