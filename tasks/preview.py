"""What a person watches of a training run: preview grids and TensorBoard scalars.

Also holds the image <-> tensor conversions that training and previews share.

A preview grid has one row per face and the columns
    src | src->src | dst | dst->dst | dst->src
i.e. each side's input, its reconstruction through its own decoder, and the swap: a dst face painted
by the src decoder. It is how a person judges training progress at a glance.

Every grid also goes to a preview history folder as <iteration>.jpg (``save_preview_history``), so
the progress of a long run can be paged through; the folder is thinned to at most
``PREVIEW_HISTORY_LIMIT`` images, evenly spread over the run.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from model.networks import SwapAutoencoder
from tasks.augment import resize_square

logger = logging.getLogger(__name__)

PREVIEW_FACES = 4
PREVIEW_COLUMNS = ("src", "src->src", "dst", "dst->dst", "dst->src")
PREVIEW_HISTORY_LIMIT = 100  # images kept in a preview history folder
PREVIEW_JPEG_QUALITY = 90
PREVIEW_NAME = re.compile(r"^(\d+)\.jpg$")


def images_to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """Convert uint8 images to model input: (B, H, W, C) -> (B, C, H, W) float32 in [0, 1].

    A (B, H, W) stack of masks becomes (B, 1, H, W).
    """
    if images.ndim == 3:
        images = images[..., None]
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_images(tensor: Tensor) -> np.ndarray:
    """Convert model output to uint8 images: (B, C, H, W) in [0, 1] -> (B, H, W, C)."""
    scaled = tensor.detach().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def select_preview_faces(faces: np.ndarray, resolution: int, count: int = PREVIEW_FACES) -> np.ndarray:
    """Take the first ``count`` faces (cycling through them when there are fewer), resized.

    Args:
        faces: (N, S, S, 3) uint8 BGR, N >= 1.
        resolution: Side of the returned faces.
        count: How many faces to return.

    Returns:
        (count, resolution, resolution, 3) uint8 BGR. The same faces every call, so successive
        previews are comparable.
    """
    indices = np.arange(count) % len(faces)
    return np.stack([resize_square(faces[index], resolution) for index in indices])


@torch.no_grad()
def render_preview(model: SwapAutoencoder, src_faces: np.ndarray, dst_faces: np.ndarray) -> np.ndarray:
    """Render the preview grid of ``model`` on fixed faces.

    Args:
        model: The autoencoder; it is put in eval mode for rendering and returned to its mode after.
        src_faces: (F, R, R, 3) uint8 BGR src faces at the model's resolution.
        dst_faces: (F, R, R, 3) uint8 BGR dst faces.

    Returns:
        (F * R, 5 * R, 3) uint8 BGR grid with columns src, src->src, dst, dst->dst, dst->src.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        src = images_to_tensor(src_faces, device)
        dst = images_to_tensor(dst_faces, device)
        src_to_src, _ = model(src, "src")
        dst_to_dst, _ = model(dst, "dst")
        _, dst_to_src, _ = model.swap(dst)
    finally:
        model.train(was_training)
    columns = [src_faces, tensor_to_images(src_to_src), dst_faces, tensor_to_images(dst_to_dst),
               tensor_to_images(dst_to_src)]
    rows = [np.concatenate([column[row] for column in columns], axis=1) for row in range(len(src_faces))]
    return np.concatenate(rows, axis=0)  # F rows of (R, 5R, 3) -> (F*R, 5R, 3)


def log_preview(writer: SummaryWriter, model: SwapAutoencoder, src_faces: np.ndarray, dst_faces: np.ndarray,
                step: int) -> np.ndarray:
    """Render the preview grid, add it to TensorBoard as the "preview" image and return it (BGR).

    Args:
        writer: The stage's TensorBoard writer.
        model: The autoencoder.
        src_faces: (F, R, R, 3) uint8 BGR src faces.
        dst_faces: (F, R, R, 3) uint8 BGR dst faces.
        step: The model's iteration count.

    Returns:
        (F * R, 5 * R, 3) uint8 BGR grid (see ``render_preview``).
    """
    grid = render_preview(model, src_faces, dst_faces)
    writer.add_image("preview", np.ascontiguousarray(grid[..., ::-1]), step, dataformats="HWC")  # BGR -> RGB
    return grid


def log_scalars(writer: SummaryWriter, values: dict[str, float], learning_rate: float, ms_per_iteration: float,
                step: int) -> None:
    """Write every loss term, the learning rate and the iteration time to TensorBoard."""
    for name, value in values.items():
        writer.add_scalar(f"loss/{name}", value, step)
    writer.add_scalar("learning_rate", learning_rate, step)
    writer.add_scalar("ms_per_iteration", ms_per_iteration, step)


def save_preview_history(directory: Path, grid: np.ndarray, iteration: int, limit: int = PREVIEW_HISTORY_LIMIT) -> Path:
    """Write a preview grid as ``<directory>/<iteration>.jpg`` (zero-padded) and thin the folder.

    Beyond ``limit`` images, every second one is removed (the newest always stays), so the history
    keeps an even spread over the whole run at about half the density each time it fills up.

    Args:
        directory: The preview history folder, e.g. logs/<stage>/previews; created if missing.
        grid: (H, W, 3) uint8 BGR grid (see ``render_preview``).
        iteration: The model's iteration count.
        limit: The most images to keep (at least 2).

    Returns:
        The image's path.

    Raises:
        OSError: The image cannot be written.
        ValueError: ``limit`` is below 2.
    """
    if limit < 2:
        raise ValueError(f"a preview history keeps at least 2 images, got limit {limit}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{iteration:09d}.jpg"
    if not cv2.imwrite(str(path), grid, [cv2.IMWRITE_JPEG_QUALITY, PREVIEW_JPEG_QUALITY]):
        raise OSError(f"could not write the preview image {path}; check that the directory is writable")
    kept = sorted((int(match.group(1)), item) for item in directory.iterdir() if (match := PREVIEW_NAME.match(item.name)))
    while len(kept) > limit:
        removed = kept[1:-1:2]  # the oldest and the newest stay
        for _, item in removed:
            item.unlink()
        kept = [entry for entry in kept if entry not in removed]
    return path
