"""Training augmentations on numpy images (HWC or HW, any dtype cv2 handles), deterministic per generator.

Two kinds:
- A random similarity transform (rotation, scale, shift, flip) applied identically to a face and its
  mask, so the network sees varied framings of the same identity.
- A random warp: a smooth random displacement field applied to the network input only. The target
  stays unwarped, so the autoencoder must learn to undo the distortion: it cannot just copy pixels
  and has to learn the face, which is what makes swapping work.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

logger = logging.getLogger(__name__)

MAX_ROTATION_DEGREES = 10.0
MAX_SCALE_CHANGE = 0.05  # fraction of the size
MAX_SHIFT = 0.05  # fraction of the size
DEFAULT_WARP_STRENGTH = 0.25  # standard deviation of the control-point offsets, in grid cells


def random_transform_params(rng: np.random.Generator, size: int, allow_flip: bool = True) -> dict[str, Any]:
    """Draw one random similarity transform for a square output of side ``size``.

    Args:
        rng: The generator; equal seeds give equal parameters.
        size: Side of the images the transform will produce, in pixels.
        allow_flip: Whether a horizontal flip may be drawn (half the time).

    Returns:
        {"size": int, "rotation": degrees in [-10, 10], "scale": in [0.95, 1.05],
         "shift": (dx, dy) pixels within +-5% of size, "flip": bool}.

    Raises:
        ValueError: ``size`` is not positive.
    """
    if size <= 0:
        raise ValueError(f"transform size must be positive, got {size}")
    rotation = float(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
    scale = float(rng.uniform(1 - MAX_SCALE_CHANGE, 1 + MAX_SCALE_CHANGE))
    shift_x, shift_y = (float(value) for value in rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2) * size)
    flip = bool(rng.random() < 0.5) if allow_flip else False
    return {"size": size, "rotation": rotation, "scale": scale, "shift": (shift_x, shift_y), "flip": flip}


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to (size, size): area averaging when shrinking (no aliasing), cubic when enlarging."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    interpolation = cv2.INTER_AREA if size < min(height, width) else cv2.INTER_CUBIC
    resized = cv2.resize(image, (size, size), interpolation=interpolation)
    return resized.reshape((size, size, *image.shape[2:]))  # cv2 drops a trailing channel axis of 1


def apply_transform(image: np.ndarray, params: dict[str, Any], size: int) -> np.ndarray:
    """Resize ``image`` to (size, size) and apply the transform in ``params``.

    Call it with the same params on a face and its mask to keep them aligned.

    Args:
        image: (H, W, C) or (H, W) array, e.g. a uint8 BGR face or a uint8 mask.
        params: From ``random_transform_params`` for this ``size``.
        size: Output side in pixels.

    Returns:
        (size, size, C) or (size, size) array of the input's dtype.

    Raises:
        ValueError: ``params`` were drawn for another size.
    """
    if params["size"] != size:
        raise ValueError(f"transform params were drawn for size {params['size']}, not {size}")
    image = resize_square(image, size)
    center = ((size - 1) / 2, (size - 1) / 2)
    matrix = cv2.getRotationMatrix2D(center, params["rotation"], params["scale"])  # (2, 3)
    matrix[:, 2] += params["shift"]
    # Replicating the border avoids black wedges that the network would learn to paint.
    transformed = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    transformed = transformed.reshape(image.shape)
    if params["flip"]:
        transformed = transformed[:, ::-1]
    return np.ascontiguousarray(transformed)


def random_warp(
    image: np.ndarray, rng: np.random.Generator, grid_cells: int = 5, strength: float = DEFAULT_WARP_STRENGTH
) -> np.ndarray:
    """Distort ``image`` with a smooth random displacement field.

    Random offsets are drawn for the interior points of a coarse (grid_cells + 1)^2 grid (border
    points stay put so no outside content is pulled in), upsampled to a per-pixel field with cubic
    interpolation, smoothed, and applied with cv2.remap.

    Args:
        image: (H, W, C) or (H, W) array.
        rng: The generator; equal seeds give equal warps.
        grid_cells: Cells per side of the control grid; fewer cells give broader distortions.
        strength: Standard deviation of the control-point offsets, in units of one cell.

    Returns:
        The warped image, same shape and dtype.

    Raises:
        ValueError: ``grid_cells`` < 2 or ``strength`` < 0.
    """
    if grid_cells < 2:
        raise ValueError(f"random_warp grid_cells must be at least 2, got {grid_cells}")
    if strength < 0:
        raise ValueError(f"random_warp strength must be >= 0, got {strength}")
    height, width = image.shape[:2]
    offsets = rng.normal(0.0, strength, size=(2, grid_cells + 1, grid_cells + 1)).astype(np.float32)
    offsets[:, [0, -1], :] = 0.0  # (2, G+1, G+1): x and y offsets; border rows and columns fixed
    offsets[:, :, [0, -1]] = 0.0
    offsets[0] *= width / grid_cells  # cells -> pixels
    offsets[1] *= height / grid_cells
    sigma = min(height, width) / (grid_cells * 4)
    displacement_x = cv2.GaussianBlur(cv2.resize(offsets[0], (width, height), interpolation=cv2.INTER_CUBIC),
                                      (0, 0), sigma)  # (G+1, G+1) -> (H, W)
    displacement_y = cv2.GaussianBlur(cv2.resize(offsets[1], (width, height), interpolation=cv2.INTER_CUBIC),
                                      (0, 0), sigma)
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    warped = cv2.remap(image, grid_x + displacement_x, grid_y + displacement_y, interpolation=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return warped.reshape(image.shape)


def resize_faceset(faces: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize every crop once: (N, S, S, 3), (N, S, S) -> (N, size, size, 3), (N, size, size)."""
    if faces.shape[1:3] == (size, size):
        return faces, masks
    return (np.stack([resize_square(face, size) for face in faces]),
            np.stack([resize_square(mask, size) for mask in masks]))


def sample_batch(
    faces: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    batch_size: int,
    allow_flip: bool = True,
    warp: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a training batch with replacement and augment it.

    Args:
        faces: (N, R, R, 3) uint8 faces at the model resolution.
        masks: (N, R, R) uint8 masks.
        rng: The generator; equal seeds give equal batches.
        batch_size: Faces to draw.
        allow_flip: Let the random transform flip faces horizontally.
        warp: Randomly warp the inputs.

    Returns:
        inputs (B, R, R, 3) (transformed, then warped if ``warp``), targets (B, R, R, 3)
        (transformed only) and target masks (B, R, R); all uint8.
    """
    size = faces.shape[1]
    inputs, targets, target_masks = [], [], []
    for index in rng.integers(0, len(faces), size=batch_size):
        params = random_transform_params(rng, size, allow_flip=allow_flip)
        target = apply_transform(faces[index], params, size)
        targets.append(target)
        target_masks.append(apply_transform(masks[index], params, size))
        inputs.append(random_warp(target, rng) if warp else target)
    return np.stack(inputs), np.stack(targets), np.stack(target_masks)
