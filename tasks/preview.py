"""What a person watches of a training run: preview grids and TensorBoard scalars.

Also holds the image <-> tensor conversions that training and previews share.

A preview grid has one row per face and the columns
    src | src->src | dst | dst->dst | dst->src
i.e. each side's input, its reconstruction through its own decoder, and the swap: a dst face painted
by the src decoder. It is how a person judges training progress at a glance.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from model.networks import SwapAutoencoder
from tasks.augment import resize_square

logger = logging.getLogger(__name__)

PREVIEW_FACES = 4
PREVIEW_COLUMNS = ("src", "src->src", "dst", "dst->dst", "dst->src")


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
