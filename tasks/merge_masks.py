"""Which mask a swapped face is pasted through, how it is kept steady, and how steady the render is.

The mask modes follow DeepFaceLab's merger list. Each mode multiplies (or, for "learned_either",
takes the larger of) some of five masks, all (S, S) float32 in [0, 1] in the aligned crop:
- hull: the convex hull of the dst face's 68 landmarks, forehead included (DeepFaceLab's "dst");
- predicted: the mask the src decoder paints with the swapped face ("learned-prd");
- dst: the mask the dst path paints for the same crop ("learned-dst");
- xseg_predicted, xseg_dst: the trained XSeg segmentation (tasks.xseg_masks) of the swapped face
  and of the dst crop ("XSeg-prd", "XSeg-dst"): they leave out hands, hair and glasses in front of
  the face. A mode with XSeg needs a trained XSeg (checkpoints/xseg); without one the merge stops
  and says so, rather than quietly falling back to the hull.

The learned dst mask costs a second decoder pass per face (about doubling the model's time), so
`needs_dst_mask` tells the merger when to ask for it.

Flicker is measured as the mean absolute frame-to-frame change inside the swapped faces' boxes
of the render, divided by the same on the dst: 1.0 is as steady as the original footage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from tasks.xseg_masks import XSEG_MODE_SOURCES, XsegMaskMode

logger = logging.getLogger(__name__)

MaskMode = Literal[
    "hull",
    "learned_predicted",
    "learned_dst",
    "learned_both",
    "learned_either",
    "hull_learned_predicted",
    "hull_learned_dst",
    "hull_learned_both",
    XsegMaskMode,  # xseg_predicted, xseg_dst, xseg_both, learned_xseg_all (tasks.xseg_masks)
]
MASK_MODE_CHOICES: tuple[str, ...] = get_args(MaskMode)
MaskSource = Literal["hull", "predicted", "dst", "xseg_predicted", "xseg_dst"]


class MergeMaskError(ValueError):
    """A mask mode is unknown, or the masks it needs were not given or do not match."""


@dataclass(frozen=True)
class MaskRecipe:
    """How one mask mode is made: the masks it combines, multiplied or (union) their maximum."""

    sources: tuple[MaskSource, ...]
    union: bool = False


MASK_RECIPES: dict[str, MaskRecipe] = {
    "hull": MaskRecipe(("hull",)),
    "learned_predicted": MaskRecipe(("predicted",)),
    "learned_dst": MaskRecipe(("dst",)),
    "learned_both": MaskRecipe(("predicted", "dst")),
    "learned_either": MaskRecipe(("predicted", "dst"), union=True),
    "hull_learned_predicted": MaskRecipe(("hull", "predicted")),
    "hull_learned_dst": MaskRecipe(("hull", "dst")),
    "hull_learned_both": MaskRecipe(("hull", "predicted", "dst")),
    **{mode: MaskRecipe(sources) for mode, sources in XSEG_MODE_SOURCES.items()},
}
assert set(MASK_RECIPES) == set(MASK_MODE_CHOICES), "MASK_RECIPES must cover every MaskMode"

# Learned masks below one 8-bit level are decoder noise, not face (DeepFaceLab clears them too).
MASK_NOISE_LEVEL = 1.0 / 255.0


def find_recipe(mode: str) -> MaskRecipe:
    """The recipe of a mask mode.

    Raises:
        MergeMaskError: for an unknown mode (the message lists the valid ones).
    """
    recipe = MASK_RECIPES.get(mode)
    if recipe is None:
        raise MergeMaskError(f"unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODE_CHOICES)}")
    return recipe


def needs_dst_mask(mode: str) -> bool:
    """Whether a mask mode uses the dst path's learned mask (a second decoder pass per face)."""
    return "dst" in find_recipe(mode).sources


def build_face_mask(
    mode: MaskMode, hull: np.ndarray, predicted: np.ndarray, dst: np.ndarray | None = None,
    xseg_predicted: np.ndarray | None = None, xseg_dst: np.ndarray | None = None,
) -> np.ndarray:
    """Combine a face's masks as a mask mode says.

    Args:
        mode: one of MASK_MODE_CHOICES.
        hull: (S, S) float in [0, 1], the dst landmarks' hull in crop coordinates.
        predicted: (S, S) float in [0, 1], the src decoder's learned mask.
        dst: (S, S) float in [0, 1], the dst path's learned mask; needed only when
            ``needs_dst_mask(mode)``.
        xseg_predicted, xseg_dst: (S, S) float in [0, 1], XSeg's masks of the swapped face and of the
            dst crop; needed only by the modes that use them.

    Returns:
        (S, S) float32 in [0, 1], a new array.

    Raises:
        MergeMaskError: unknown mode, a needed mask missing, or masks of different shapes.
    """
    recipe = find_recipe(mode)
    given = {"hull": hull, "predicted": predicted, "dst": dst, "xseg_predicted": xseg_predicted, "xseg_dst": xseg_dst}
    masks = []
    for source in recipe.sources:
        mask = given[source]
        if mask is None:
            needed = "the learned dst mask; predict with the dst mask" if source == "dst" else f"the {source} mask of XSeg"
            raise MergeMaskError(f"mask mode {mode!r} needs {needed}")
        if mask.shape != hull.shape:
            raise MergeMaskError(f"the {source} mask has shape {mask.shape}, the hull {hull.shape}; they must match")
        mask = np.clip(mask.astype(np.float32), 0.0, 1.0)
        if source != "hull":
            mask = np.where(mask < MASK_NOISE_LEVEL, 0.0, mask).astype(np.float32)
        masks.append(mask)
    combine = np.maximum if recipe.union else np.multiply
    combined = masks[0].copy()
    for mask in masks[1:]:
        combined = combine(combined, mask)
    return combined


class MaskSmoother:
    """Exponential moving average of each face track's mask over consecutive frames.

    Masks are in the aligned crop, which follows the (already smoothed) landmarks, so the same
    crop pixel is the same place on the face from one frame to the next; averaging there steadies
    the mask's edge without dragging it behind a moving head. A track that skips a frame starts over.
    """

    def __init__(self, previous_weight: float) -> None:
        """Args: previous_weight: 0 (off) to below 1, the weight of the running mask in each step."""
        if not 0.0 <= previous_weight < 1.0:
            raise MergeMaskError(f"mask smoothing must be in [0, 1), got {previous_weight}")
        self.previous_weight = previous_weight
        self.tracks: dict[int, tuple[int, np.ndarray]] = {}  # track id -> (frame index, running mask)

    def smooth(self, track_id: int, frame_index: int, mask: np.ndarray) -> np.ndarray:
        """This frame's mask for a track, averaged with the track's running mask: (S, S) -> (S, S) float32."""
        if self.previous_weight == 0.0:
            return mask
        last = self.tracks.get(track_id)
        if last is not None and last[0] == frame_index - 1 and last[1].shape == mask.shape:
            mask = (self.previous_weight * last[1] + (1.0 - self.previous_weight) * mask).astype(np.float32)
        self.tracks[track_id] = (frame_index, mask)
        return mask


class FlickerMeter:
    """Frame-to-frame change inside the swapped faces' boxes, summed for the render and for the dst."""

    def __init__(self) -> None:
        self.dst_change = 0.0
        self.render_change = 0.0
        self.previous: tuple[int, np.ndarray, np.ndarray] | None = None  # (frame index, dst frame, render)

    def add(self, frame_index: int, dst_frame: np.ndarray, rendered: np.ndarray, faces: list[np.ndarray]) -> None:
        """Count one frame: its (H, W, 3) uint8 dst and render, and each swapped face's (68, 2) landmarks."""
        previous = self.previous
        self.previous = (frame_index, dst_frame, rendered)
        if previous is None or previous[0] != frame_index - 1:
            return
        height, width = dst_frame.shape[:2]
        for landmarks in faces:
            (x0, y0), (x1, y1) = np.floor(landmarks.min(axis=0)), np.ceil(landmarks.max(axis=0)) + 1
            box = np.s_[max(int(y0), 0):min(int(y1), height), max(int(x0), 0):min(int(x1), width)]
            self.dst_change += float(np.abs(dst_frame[box].astype(np.int16) - previous[1][box]).sum())
            self.render_change += float(np.abs(rendered[box].astype(np.int16) - previous[2][box]).sum())

    @property
    def ratio(self) -> float | None:
        """Render change / dst change; None until two consecutive frames with faces were counted."""
        return self.render_change / self.dst_change if self.dst_change > 0 else None
