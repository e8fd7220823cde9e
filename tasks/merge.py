"""Merge: render each destination video with the swapped face, keeping its frames, rate and audio."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from pydantic import ConfigDict, with_config

from model.checkpoint import load_checkpoint
from model.networks import SwapAutoencoder
from tasks.align import transform_points, warp_to_crop
from tasks.color import ColorTransfer
from tasks.composite import composite_face
from tasks.faceset import hash_file, open_faces
from tasks.masks import hull_mask
from tasks.video import VideoWriter, iter_frames, probe_video

logger = logging.getLogger(__name__)

Codec = Literal["h264", "h265"]



@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class MergeOptions:
    """params.yaml ``merge``: how the swapped face is put back and how the render is encoded."""

    color_transfer: ColorTransfer = "rct"
    mask_erode: int = 0  # px at crop size; negative grows the mask
    mask_blur: int = 16  # feather width in px at crop size
    codec: Codec = "h264"
    crf: int = 18
    label_synthetic: bool = True  # container label + provenance sidecar; turning it off is logged

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 51:
            raise ValueError(f"merge.crf must be in 0..51, got {self.crf}")
        if self.mask_blur < 0:
            raise ValueError(f"merge.mask_blur must be >= 0, got {self.mask_blur}")


@dataclass
class DstFace:
    landmarks: np.ndarray  # (68, 2) frame px
    matrix: np.ndarray  # (2, 3) frame -> crop
    crop_size: int


@dataclass
class RenderReport:
    source: str
    output: str
    frames: int
    swapped_faces: int
    frames_without_face: int


def load_dst_faces(faces_path: Path, source_id: str) -> dict[int, list[DstFace]]:
    """The dst faces of one video, grouped by frame index."""
    table = open_faces(faces_path).to_table(
        columns=["frame_index", "face_index", "landmarks", "matrix", "crop_size"],
        filter=f"source_id = '{source_id}'",
    )
    grouped: dict[int, list[tuple[int, DstFace]]] = defaultdict(list)
    for row in table.to_pylist():
        face = DstFace(
            landmarks=np.asarray(row["landmarks"], np.float32).reshape(-1, 2),
            matrix=np.asarray(row["matrix"], np.float32).reshape(2, 3),
            crop_size=row["crop_size"],
        )
        grouped[row["frame_index"]].append((row["face_index"], face))
    return {frame: [face for _, face in sorted(faces, key=lambda item: item[0])] for frame, faces in grouped.items()}


class FaceSwapper:
    """Runs the trained model on dst crops: (S,S,3) uint8 -> predicted face and mask at model resolution."""

    def __init__(self, model: SwapAutoencoder) -> None:
        self.model = model.eval()
        self.resolution = model.config.resolution

    @classmethod
    def from_checkpoint(cls, directory: Path) -> FaceSwapper:
        return cls(load_checkpoint(directory).model)

    @torch.inference_mode()
    def predict(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Returns faces (N,R,R,3) float32 BGR [0,1] and masks (N,R,R) float32 [0,1]."""
        resized = [cv2.resize(crop, (self.resolution, self.resolution), interpolation=cv2.INTER_AREA) for crop in crops]
        batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float().div_(255)  # (N,3,R,R)
        _, face, mask = self.model.swap(batch)
        return face.permute(0, 2, 3, 1).numpy(), mask[:, 0].numpy()


def swap_frame(frame: np.ndarray, faces: list[DstFace], swapper: FaceSwapper, options: MergeOptions) -> np.ndarray:
    """Swap every listed face of one frame; a frame with no faces comes back unchanged."""
    if not faces:
        return frame
    crops = [warp_to_crop(frame, face.matrix, face.crop_size) for face in faces]
    predicted_faces, predicted_masks = swapper.predict(crops)
    for face, crop, predicted_face, predicted_mask in zip(faces, crops, predicted_faces, predicted_masks, strict=True):
        dst_mask = hull_mask(transform_points(face.landmarks, face.matrix), face.crop_size)
        frame = composite_face(
            frame,
            face.matrix,
            predicted_face,
            predicted_mask,
            dst_mask.astype(np.float32) / 255,
            crop,
            options.color_transfer,
            options.mask_erode,
            options.mask_blur,
        )
    return frame


def render_video(
    video: Path,
    faces_path: Path,
    swapper: FaceSwapper,
    output: Path,
    options: MergeOptions,
    metadata: dict[str, str],
    on_frame=None,
) -> RenderReport:
    """Render one dst video: every frame decoded, its faces swapped, encoded with the dst audio copied."""
    info = probe_video(video)
    faces_by_frame = load_dst_faces(faces_path, hash_file(video))
    swapped = missing = frames = 0
    with VideoWriter(
        output, info.width, info.height, info.fps, codec=options.codec, crf=options.crf, audio_from=video, metadata=metadata
    ) as writer:
        for frame_index, _, frame in iter_frames(video):
            faces = faces_by_frame.get(frame_index, [])
            swapped += len(faces)
            missing += not faces
            writer.write(swap_frame(frame, faces, swapper, options))
            frames += 1
            if on_frame is not None:
                on_frame()
    if missing:
        logger.warning("%s: %d of %d frames had no dst face and were passed through unchanged", video, missing, frames)
    return RenderReport(source=str(video), output=str(output), frames=frames, swapped_faces=swapped, frames_without_face=missing)
