"""Face masks from a trained XSeg network, for the mask stage and the merger.

``XsegMasker`` takes aligned face crops of any size (uint8 0..255 or float 0..1, BGR), resizes them
to the network's resolution, runs them in batches and returns each mask at its crop's size. The
merger's XSeg mask modes (DeepFaceLab's XSeg-prd, XSeg-dst and their products) are described here
too, so the merge code can take them from one place:
    xseg_predicted      XSeg on the predicted (swapped) face                 (DeepFaceLab "XSeg-prd")
    xseg_dst            XSeg on the dst face                                 ("XSeg-dst")
    xseg_both           XSeg-prd * XSeg-dst                                  ("XSeg-prd*XSeg-dst")
    learned_xseg_all    learned-prd * learned-dst * XSeg-prd * XSeg-dst      (DeepFaceLab's last mode)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np
import torch

from model.xseg import XsegNetwork, load_xseg
from tasks.augment import resize_square
from tasks.composite import resize_to

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 16
XsegMaskMode = Literal["xseg_predicted", "xseg_dst", "xseg_both", "learned_xseg_all"]
XSEG_MASK_MODE_CHOICES: tuple[str, ...] = get_args(XsegMaskMode)
# The masks each mode multiplies, named as tasks.merge_masks names its sources ("predicted" and "dst"
# are the decoders' learned masks).
XSEG_MODE_SOURCES: dict[str, tuple[str, ...]] = {
    "xseg_predicted": ("xseg_predicted",),
    "xseg_dst": ("xseg_dst",),
    "xseg_both": ("xseg_predicted", "xseg_dst"),
    "learned_xseg_all": ("predicted", "dst", "xseg_predicted", "xseg_dst"),
}
assert set(XSEG_MODE_SOURCES) == set(XSEG_MASK_MODE_CHOICES), "XSEG_MODE_SOURCES must cover every XsegMaskMode"


def uses_xseg(mode: str) -> bool:
    """Whether a merge mask mode needs the trained XSeg network (checkpoints/xseg)."""
    return mode in XSEG_MODE_SOURCES


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when torch sees one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_float_crop(crop: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 0..255 or float 0..1 -> float32 0..1, checked."""
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1]:
        raise ValueError(f"XSeg needs square (S, S, 3) BGR face crops, got shape {crop.shape}")
    if crop.dtype == np.uint8:
        return crop.astype(np.float32) / 255.0
    return np.clip(crop.astype(np.float32), 0.0, 1.0)


class XsegMasker:
    """Runs a trained XSeg network on face crops in batches.

    Args:
        model: The network (its config gives the resolution and the framing it was trained on).
        device: Where to run it; None picks CUDA when available.
        batch_size: Crops per forward pass.
    """

    def __init__(self, model: XsegNetwork, device: str | torch.device | None = None,
                 batch_size: int = DEFAULT_BATCH) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = pick_device(device)
        # channels-last layout: 1.2-1.5x faster convolutions on the CPU here, same results
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.batch_size = batch_size
        self.resolution = model.config.resolution
        self.face_type = model.config.face_type

    @classmethod
    def from_checkpoint(cls, directory: Path, device: str | torch.device | None = None,
                        batch_size: int = DEFAULT_BATCH) -> XsegMasker:
        """Load checkpoints/xseg.

        Raises:
            model.xseg.XsegUntrainedError: the directory says no XSeg was trained (no labels yet).
            model.checkpoint.CheckpointError: the checkpoint is missing or damaged.
        """
        return cls(load_xseg(directory, pick_device(device)).model, device, batch_size)

    @torch.inference_mode()
    def predict_resized(self, crops: np.ndarray) -> np.ndarray:
        """(N, R, R, 3) float32 0..1 at the network's resolution -> (N, R, R) float32 0..1."""
        masks = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.from_numpy(crops[start:start + self.batch_size]).to(self.device)
            images = batch.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # (B, R, R, 3) -> (B, 3, R, R)
            masks.append(self.model(images)[:, 0].float().cpu().numpy())  # (B, 1, R, R) -> (B, R, R)
        return np.concatenate(masks) if masks else np.zeros((0, self.resolution, self.resolution), np.float32)

    def predict(self, crops: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Segment face crops.

        Args:
            crops: (S, S, 3) BGR crops, uint8 0..255 or float 0..1 (e.g. the merger's dst crops and
                predicted faces); sizes may differ. A (N, S, S, 3) array is N crops.

        Returns:
            One (S, S) float32 mask in [0, 1] per crop, at that crop's size: 1 = face.

        Raises:
            ValueError: a crop is not a square BGR image.
        """
        side = self.resolution
        # cubic enlarging can overshoot [0, 1]
        resized = [np.clip(resize_square(as_float_crop(crop), side), 0.0, 1.0) for crop in crops]
        if not resized:
            return []
        masks = self.predict_resized(np.ascontiguousarray(np.stack(resized), dtype=np.float32))
        return [np.clip(resize_to(mask, crop.shape[0], cv2.INTER_LINEAR), 0.0, 1.0).astype(np.float32, copy=False)
                for mask, crop in zip(masks, crops, strict=True)]  # bilinear: masks are smooth


def predict_xseg_sources(masker: XsegMasker, mode: str, dst_crops: Sequence[np.ndarray],
                         predicted_faces: Sequence[np.ndarray] | np.ndarray) -> dict[str, list[np.ndarray]]:
    """The XSeg masks a merge mask mode multiplies, for one batch of faces (both kinds in one network batch).

    Args:
        masker: The trained XSeg.
        mode: A merge mask mode; modes without XSeg get an empty dict.
        dst_crops: (S, S, 3) uint8 BGR dst crops, one per face.
        predicted_faces: (S, S, 3) float BGR in [0, 1], the swapped faces painted for those crops.

    Returns:
        "xseg_dst" and/or "xseg_predicted" (those the mode uses) -> one (S, S) float32 mask per face.

    Raises:
        ValueError: the two lists differ in length, or a crop is not square BGR.
    """
    sources = [source for source in XSEG_MODE_SOURCES.get(mode, ()) if source.startswith("xseg_")]
    if len(dst_crops) != len(predicted_faces):
        raise ValueError(f"{len(dst_crops)} dst crops but {len(predicted_faces)} predicted faces; give one of each per face")
    inputs = {"xseg_dst": list(dst_crops), "xseg_predicted": list(predicted_faces)}
    masks = masker.predict([crop for source in sources for crop in inputs[source]])
    count = len(dst_crops)
    return {source: masks[position * count:(position + 1) * count] for position, source in enumerate(sources)}


def to_uint8_mask(mask: np.ndarray) -> np.ndarray:
    """(S, S) float mask in [0, 1] -> uint8 0..255, as the masks table stores it."""
    return np.round(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8)
