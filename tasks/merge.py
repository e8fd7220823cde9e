"""Merge: render each destination video with the swapped face, keeping its frames, rate and audio.

Per dst face: the model's face type is cut from the frame at the model's resolution R (as training
re-frames the faceset), the model paints the src identity and its masks, the mask mode combines
them (tasks.merge_masks), the mask is steadied along the face's track, and the face is pasted with
the colour transfer and blend mode asked for (tasks.composite). Faces the dst curation rejected as
"other person" are left as they are; faces it rejected for any other reason (duplicates, blur,
size) are still swapped, since every frame of the render needs its face.

A render is a pipeline: the render thread decodes a frame and cuts its faces out, worker threads
run the model a few frames ahead (tasks.merge_predict), the render thread pastes the faces back in
frame order (each track's mask is smoothed from the frame before) and a writer thread encodes
(tasks.merge_sinks). On a CPU the model is most of the cost, so it gets the cores' spare time.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ConfigDict, with_config

from model.checkpoint import CheckpointError
from tasks.align import compute_alignment, transform_points, warp_to_crop
from tasks.blend import BlendMode, MotionBlur, SharpenMode, estimate_motion
from tasks.color import ColorTransfer
from tasks.composite import CompositeOptions, paste_face, scale_about_centre
from tasks.faceset import hash_file, open_faces
from tasks.masks import hull_mask
from tasks.merge_masks import FlickerMeter, MaskMode, MaskSmoother, build_face_mask, needs_dst_mask
from tasks.merge_predict import FacePredictor, FaceSwapper, Prediction, count_prediction_workers, predict_ahead
from tasks.merge_sinks import BackgroundWriter, RenderFormat, open_frame_sink
from tasks.selection import Selection
from tasks.train_options import PrecisionChoice
from tasks.video import EncoderPreset, iter_frames, probe_video
from tasks.watermark import watermarking_sink
from tasks.xseg_masks import XsegMasker, predict_xseg_sources, uses_xseg

logger = logging.getLogger(__name__)

# Curation reasons that mean "not the target person": these faces are never swapped.
OTHER_PERSON_REASON = "other person"
# mask_erode and mask_blur are pixels of a crop this wide, scaled to the model's resolution, so a
# setting means the same part of the face whatever the model size.
MASK_REFERENCE_SIDE = 256
# Batches queued or running per prediction worker: enough that a worker never waits for the render
# thread, few enough to hold little memory (frames are kept until pasted).
PREDICTED_AHEAD = 2
# Consecutive frames whose faces go through the model in one batch: a CPU convolution reads (and
# re-lays out) its weights once per call, so four frames a call cost about 30 % less CPU per face
# than one for a SAEHD-sized model, 20 % for a 96 px DF (measured, bf16, 2 workers); results are
# the same as frame by frame (bit for bit in bf16).
FRAMES_PER_BATCH = 4


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
    # x264/x265 speed: faster spends about a third less CPU per frame than the encoders' own medium,
    # same SSIM at CRF 18, PSNR at most about 0.1 dB lower, files 1-10 % larger (benchmarks/merge_speed.py --presets)
    preset: EncoderPreset = "faster"
    start_frame: int = 0
    end_frame: int | None = None  # last frame rendered (inclusive); None = the video's last
    label_synthetic: bool = True  # container label + provenance sidecar; turning it off is logged
    # the model's arithmetic: auto = bf16 where the CPU has it natively (about twice as fast; rendered
    # faces within 3 of 255 levels of fp32's, 0.2 on average), else fp32
    precision: PrecisionChoice = "auto"

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


def check_face_type(model_face_type: str, params_face_type: str, checkpoint: Path) -> None:
    """Raise MergeError when the trained model's framing is not the one params.yaml asks for."""
    if model_face_type != params_face_type:
        raise MergeError(f"{checkpoint} was trained on {model_face_type} crops but params.yaml train.model.face_type is "
                         f"{params_face_type}; set it back to {model_face_type} or train again (dvc repro)")


def load_xseg_for(mask_mode: str, directory: Path) -> XsegMasker | None:
    """The trained XSeg of ``directory`` when the mask mode uses XSeg, else None.

    Raises:
        MergeError: the mode uses XSeg but none was trained (no labels yet) or the checkpoint is damaged.
    """
    if not uses_xseg(mask_mode):
        return None
    try:
        return XsegMasker.from_checkpoint(directory)
    except CheckpointError as error:
        raise MergeError(f"merge.mask_mode {mask_mode} needs a trained XSeg: {error}. Label faces in "
                         "data/<side>/xseg_labels/ and run the xseg stage, or choose a mask mode without xseg") from None


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


@dataclass
class PreparedFrame:
    """One frame's faces cut out for the model, and what pasting them back needs."""

    index: int
    frame: np.ndarray  # (H, W, 3) uint8 BGR dst frame
    faces: list[DstFace]
    matrices: list[np.ndarray]  # (2, 3) frame -> crop, one per face
    crops: list[np.ndarray]  # (R, R, 3) uint8 BGR crops of the model's face type, one per face


class FrameMerger:
    """Swaps the faces of one video's frames in order, keeping each track's running mask.

    Args:
        predictor: the model; a FaceSwapper runs at ``options.precision``, any other predictor as it is.
        options: the merge params.
        faces_by_frame: frame index -> the faces to swap there (see load_dst_faces).
        xseg: the trained XSeg, needed by the XSeg mask modes (ignored by the others).

    Raises:
        MergeError: an XSeg mask mode without ``xseg``.
    """

    def __init__(self, predictor: FacePredictor, options: MergeOptions, faces_by_frame: dict[int, list[DstFace]],
                 xseg: XsegMasker | None = None) -> None:
        if uses_xseg(options.mask_mode) and xseg is None:
            raise MergeError(f"merge.mask_mode {options.mask_mode} needs a trained XSeg (checkpoints/xseg); label faces "
                             "and run the xseg stage (see the README, XSeg), or choose a mask mode without xseg")
        self.xseg = xseg if uses_xseg(options.mask_mode) else None
        if isinstance(predictor, FaceSwapper):
            predictor = predictor.with_precision(options.precision)
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

    def prepare(self, frame_index: int, frame: np.ndarray) -> PreparedFrame | None:
        """Cut the listed faces of one frame out for the model; None when none is listed."""
        faces = self.faces_by_frame.get(frame_index, [])
        if not faces:
            return None
        side = self.predictor.resolution
        matrices = [compute_alignment(face.landmarks, self.predictor.face_type, side) for face in faces]
        return PreparedFrame(frame_index, frame, faces, matrices, [warp_to_crop(frame, matrix, side) for matrix in matrices])

    def predict(self, prepared: PreparedFrame) -> Prediction:
        """The model's faces and masks for one prepared frame: all its faces in one batch (any thread, any order)."""
        return self.predict_crops(prepared.crops)

    def predict_crops(self, crops: list[np.ndarray]) -> Prediction:
        """The model's faces and masks for a batch of crops, with XSeg's masks when the mask mode uses them."""
        prediction = self.predictor.predict(crops, self.with_dst_mask)
        if self.xseg is not None:
            sources = predict_xseg_sources(self.xseg, self.options.mask_mode, crops, prediction.faces)
            prediction.xseg_masks = {name: np.stack(masks) for name, masks in sources.items()}
        return prediction

    def predict_frames(self, batch: list[PreparedFrame]) -> list[Prediction]:
        """``predict`` for several frames in one model batch (the weights are read once), split back per frame."""
        whole = self.predict_crops([crop for prepared in batch for crop in prepared.crops])
        bounds = np.cumsum([len(prepared.crops) for prepared in batch])[:-1]  # where each frame's faces start
        dst_masks = [None] * len(batch) if whole.dst_masks is None else np.split(whole.dst_masks, bounds)
        xseg_masks = {name: np.split(masks, bounds) for name, masks in whole.xseg_masks.items()}
        return [Prediction(faces, masks, dst, {name: parts[position] for name, parts in xseg_masks.items()})
                for position, (faces, masks, dst) in enumerate(zip(np.split(whole.faces, bounds),
                                                                   np.split(whole.masks, bounds), dst_masks, strict=True))]

    def paste(self, prepared: PreparedFrame, prediction: Prediction) -> np.ndarray:
        """Paste a prepared frame's predicted faces into one copy of it; call in frame order (masks follow tracks)."""
        side = self.predictor.resolution
        output = prepared.frame.copy()
        for index, (face, matrix, crop) in enumerate(zip(prepared.faces, prepared.matrices, prepared.crops, strict=True)):
            hull = hull_mask(transform_points(face.landmarks, matrix), side).astype(np.float32) / 255.0
            dst_mask = None if prediction.dst_masks is None else prediction.dst_masks[index]
            mask = build_face_mask(self.options.mask_mode, hull, prediction.masks[index], dst_mask,
                                   **{name: masks[index] for name, masks in prediction.xseg_masks.items()})
            mask = self.smoother.smooth(face.track_id, prepared.index, mask)
            output_matrix = scale_about_centre(matrix, self.options.face_scale, side)
            # in place, inside the face's box only: one frame copy for all its faces
            paste_face(output, output_matrix, prediction.faces[index], mask, crop, self.composite_options,
                       self.find_motion(prepared.index, face, matrix))
        return output

    def merge(self, frame_index: int, frame: np.ndarray) -> np.ndarray:
        """Swap every listed face of one frame; a frame without one comes back as it is (the same array)."""
        prepared = self.prepare(frame_index, frame)
        return frame if prepared is None else self.paste(prepared, self.predict(prepared))

    def merge_frames(self, frames: Iterable[tuple[int, np.ndarray]], workers: int = 1,
                     frames_per_batch: int = FRAMES_PER_BATCH) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Merge a stream of frames, the model running ahead on worker threads, ``frames_per_batch`` frames a batch.

        Args:
            frames: (frame index, (H, W, 3) uint8 BGR frame) in increasing index order.
            workers: prediction threads (see tasks.merge_predict.prediction_pool).
            frames_per_batch: consecutive frames with faces predicted in one model call.

        Returns:
            Iterator of (frame index, dst frame, rendered frame) in the order given; each rendered
            frame is the one merge() would give (up to float32 rounding: a batch's faces are
            computed together). Close it (contextlib.closing) to stop early: the queued predictions
            are then dropped.

        Raises:
            Whatever the predictor raises, when the frame it failed on comes due.
        """
        return predict_ahead(frames, self.prepare, self.predict_frames, self.paste, workers, frames_per_batch,
                             PREDICTED_AHEAD)


def read_frame_range(video: Path, first: int, last: int) -> Iterator[tuple[int, np.ndarray]]:
    """Frames ``first`` to ``last`` (inclusive) of a video, as (frame index, (H, W, 3) uint8 BGR frame)."""
    for frame_index, _, frame in iter_frames(video):
        if frame_index > last:
            return
        if frame_index >= first:
            yield frame_index, frame


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
    watermark: np.ndarray | None = None,
    xseg: XsegMasker | None = None,
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
        watermark: payload bits embedded in every written frame (tasks.watermark); None leaves frames unmarked.
        xseg: the trained XSeg, for the XSeg mask modes.

    Raises:
        MergeError: the frame range starts past the end of the video, or an XSeg mask mode without ``xseg``.
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
    merger, flicker = FrameMerger(predictor, options, wanted, xseg), FlickerMeter()
    swapped = skipped = missing = frames = 0
    frames_in_range = read_frame_range(video, options.start_frame, last)
    with (open_frame_sink(output, info, options.codec, options.crf, options.start_frame, metadata, options.preset) as sink,
          BackgroundWriter(watermarking_sink(sink, watermark)) as writer,
          closing(merger.merge_frames(frames_in_range, count_prediction_workers())) as merged):
        for frame_index, frame, rendered in merged:
            faces = wanted.get(frame_index, [])
            swapped += len(faces)
            skipped += len(faces_by_frame.get(frame_index, [])) - len(faces)
            missing += not faces_by_frame.get(frame_index)
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

