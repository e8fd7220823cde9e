"""Training augmentations on numpy images (HWC or HW, any dtype cv2 handles), deterministic per generator.

Geometry:
- A random similarity transform (rotation, scale, shift, flip) applied identically to a face and its
  mask, so the network sees varied framings of the same identity.
- A random warp: a smooth random displacement field applied to the network input only. The target
  stays unwarped, so the autoencoder must learn to undo the distortion: it cannot just copy pixels
  and has to learn the face, which is what makes swapping work.

DeepFaceLab SAEHD's optional sample options (the appearance ones live in tasks/appearance.py):
- colour transfer (ct_mode): recolour a src face to a random dst face's colours, input and target alike;
- random HSV shift (random_hsv_power): jitter hue, saturation and value of the input only;
- blur out mask: blur the target's background, so the model does not spend capacity on its detail;
- uniform yaw: draw faces so every yaw range is equally likely, not just the common frontal one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

from tasks.appearance import blur_out_mask, random_hsv, recolour_face
from tasks.color import ColorTransfer
from tasks.pose import pose_bins

logger = logging.getLogger(__name__)

MAX_ROTATION_DEGREES = 10.0
MAX_SCALE_CHANGE = 0.05  # fraction of the size
MAX_SHIFT = 0.05  # fraction of the size
DEFAULT_WARP_STRENGTH = 0.25  # standard deviation of the control-point offsets, in grid cells
YAW_RANGE = (-90.0, 90.0)  # degrees (tasks.pose conventions); yaws beyond it count in the edge bins
DEFAULT_YAW_BINS = 32  # 5.6-degree bins over YAW_RANGE


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


def yaw_balanced_weights(yaws: np.ndarray, bins: int = DEFAULT_YAW_BINS) -> np.ndarray:
    """Sampling probabilities that make every occupied yaw bin equally likely (DFL uniform_yaw).

    Faces are binned over YAW_RANGE; each face gets 1 / (faces in its bin * occupied bins), so
    rare profiles are drawn as often as the many frontal faces. NaN yaws count in the middle bin.

    Args:
        yaws: (N,) yaw angles in degrees.
        bins: Bins across YAW_RANGE.

    Returns:
        (N,) float64 probabilities summing to 1 (empty for no faces).

    Raises:
        ValueError: ``yaws`` is not 1-D or ``bins`` < 1.
    """
    yaws = np.asarray(yaws, dtype=np.float64)
    if yaws.ndim != 1 or bins < 1:
        raise ValueError(f"yaw_balanced_weights needs (N,) yaws and bins >= 1, got {yaws.shape} and {bins}")
    bin_of_face = pose_bins(yaws, np.linspace(*YAW_RANGE, bins + 1))
    counts = np.bincount(bin_of_face, minlength=bins)
    return 1.0 / (counts[bin_of_face] * np.count_nonzero(counts))


def check_probabilities(weights: np.ndarray, count: int) -> np.ndarray:
    """Validate per-face sampling weights and normalise them to probabilities: (N,) float64."""
    probabilities = np.asarray(weights, dtype=np.float64)
    if probabilities.shape != (count,) or not np.all(np.isfinite(probabilities)) or np.any(probabilities < 0):
        raise ValueError(f"sample_batch weights must be {count} finite values >= 0 (one per face), "
                         f"got shape {probabilities.shape}")
    total = probabilities.sum()
    if not total > 0:
        raise ValueError("sample_batch weights are all zero; give at least one face a positive weight")
    return probabilities / total


class AugmentedSample(NamedTuple):
    """One face after augmentation (see ``augment_sample``); uint8 arrays at the face's size R.

    Attributes:
        input: (R, R, 3) what the network sees: transformed, warped, HSV-shifted.
        target: (R, R, 3) what it must paint: transformed (background blurred with blur-out).
        target_mask: (R, R) the face mask, transformed like the target.
        extra_masks: Further (R, R) masks (e.g. eyes/mouth priority), transformed like the target.
    """

    input: np.ndarray
    target: np.ndarray
    target_mask: np.ndarray
    extra_masks: tuple[np.ndarray, ...]


def augment_sample(
    face: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    allow_flip: bool = True,
    warp: bool = True,
    hsv_power: float = 0.0,
    color_transfer: ColorTransfer | None = None,
    color_reference: np.ndarray | None = None,
    color_reference_mask: np.ndarray | None = None,
    blur_outside_mask: bool = False,
    extra_masks: Sequence[np.ndarray] = (),
) -> AugmentedSample:
    """Augment one face: what ``sample_batch`` does to each face it draws, in the same order of draws.

    Optional colour transfer (on the raw face), the random transform (face, mask and extra masks),
    optional blur-out of the target's background, the random warp (input only), optional HSV shift
    (input only).

    Args:
        face: (R, R, 3) uint8 BGR.
        mask: (R, R) uint8.
        rng: The generator; equal seeds give equal samples.
        allow_flip: Let the random transform flip the face horizontally.
        warp: Randomly warp the input.
        hsv_power: ``random_hsv`` power for the input; 0 for none.
        color_transfer: Recolour the face to ``color_reference``'s colours with this tasks.color
            method; None or "none" for no transfer.
        color_reference: (R, R, 3) uint8 face to take colours from; needed with a colour transfer.
        color_reference_mask: Optional (R, R) uint8 mask of the reference face (see ``recolour_face``).
        blur_outside_mask: Blur the target's background (``blur_out_mask``).
        extra_masks: (R, R) masks to transform like the face mask.

    Returns:
        The augmented sample.

    Raises:
        ValueError: A colour transfer without a reference face.
    """
    size = face.shape[0]
    if color_transfer not in (None, "none"):
        if color_reference is None:
            raise ValueError(f"color_transfer {color_transfer!r} needs a reference face to take colours from")
        face = recolour_face(face, mask, color_reference, color_reference_mask, color_transfer)
    params = random_transform_params(rng, size, allow_flip=allow_flip)
    transformed = apply_transform(face, params, size)
    target_mask = apply_transform(mask, params, size)
    extras = tuple(apply_transform(extra, params, size) for extra in extra_masks)
    target = blur_out_mask(transformed, target_mask) if blur_outside_mask else transformed
    network_input = random_warp(transformed, rng) if warp else transformed
    if hsv_power > 0:
        network_input = random_hsv(network_input, rng, hsv_power)
    return AugmentedSample(network_input, target, target_mask, extras)


def sample_batch(
    faces: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    batch_size: int,
    allow_flip: bool = True,
    warp: bool = True,
    weights: np.ndarray | None = None,
    hsv_power: float = 0.0,
    color_transfer: ColorTransfer | None = None,
    color_reference: np.ndarray | None = None,
    color_reference_masks: np.ndarray | None = None,
    blur_outside_mask: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a training batch with replacement and augment each face (see ``augment_sample``).

    The faces are drawn from ``rng``; face k of the batch is augmented with the k-th of ``batch_size``
    generators spawned from ``rng`` (``Generator.spawn``), so any part of a batch can be computed
    without the rest (``tasks.loader`` splits a batch across data-parallel processes that way).

    Args:
        faces: (N, R, R, 3) uint8 faces at the model resolution.
        masks: (N, R, R) uint8 masks.
        rng: The generator; equal seeds give equal batches.
        batch_size: Faces to draw.
        allow_flip, warp, hsv_power, blur_outside_mask: As ``augment_sample``.
        weights: Optional (N,) sampling weights (e.g. ``yaw_balanced_weights``); uniform when None.
        color_transfer: Recolour each face to a random reference face's colours (see ``augment_sample``).
        color_reference: (M, R, R, 3) uint8 faces to take colours from (the dst faces); needed
            with a colour transfer.
        color_reference_masks: Optional (M, R, R) uint8 masks of the reference faces; with them the
            colours are measured where the two faces' masks overlap, else over the whole crops.

    Returns:
        inputs (B, R, R, 3), targets (B, R, R, 3) and target masks (B, R, R); all uint8.

    Raises:
        ValueError: Bad weights, or a colour transfer without reference faces.
    """
    transfer = color_transfer not in (None, "none")
    if transfer and (color_reference is None or len(color_reference) == 0):
        raise ValueError(f"color_transfer {color_transfer!r} needs color_reference faces to take colours from; "
                         "pass the dst faces or set color_transfer to none")
    if weights is None:
        indices = rng.integers(0, len(faces), size=batch_size)
    else:
        indices = rng.choice(len(faces), size=batch_size, p=check_probabilities(weights, len(faces)))
    samples = []
    for index, sample_rng in zip(indices, rng.spawn(batch_size), strict=True):
        reference = reference_mask = None
        if transfer:
            position = int(sample_rng.integers(0, len(color_reference)))
            reference = color_reference[position]
            reference_mask = None if color_reference_masks is None else color_reference_masks[position]
        samples.append(augment_sample(faces[index], masks[index], sample_rng, allow_flip, warp, hsv_power,
                                      color_transfer if transfer else None, reference, reference_mask,
                                      blur_outside_mask))
    return (np.stack([sample.input for sample in samples]), np.stack([sample.target for sample in samples]),
            np.stack([sample.target_mask for sample in samples]))
