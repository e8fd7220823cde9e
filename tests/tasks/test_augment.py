"""Tests for tasks/augment.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tasks.augment import (
    apply_transform,
    random_transform_params,
    random_warp,
    resize_faceset,
    resize_square,
    sample_batch,
)


@pytest.fixture(scope="module")
def face(media_dir: Path) -> np.ndarray:
    """A real 150x150 BGR face crop."""
    image = cv2.imread(str(media_dir / "photos" / "tight_crops" / "penny1.png"))
    assert image is not None and image.shape == (150, 150, 3)
    return image


def identity_params(size: int) -> dict:
    return {"size": size, "rotation": 0.0, "scale": 1.0, "shift": (0.0, 0.0), "flip": False}


def test_transform_params_are_deterministic_and_in_range() -> None:
    first = [random_transform_params(np.random.default_rng(5), 64) for _ in range(2)]
    assert first[0] == first[1]
    rng = np.random.default_rng(0)
    draws = [random_transform_params(rng, 64) for _ in range(200)]
    assert all(-10 <= draw["rotation"] <= 10 for draw in draws)
    assert all(0.95 <= draw["scale"] <= 1.05 for draw in draws)
    assert all(abs(shift) <= 0.05 * 64 for draw in draws for shift in draw["shift"])
    assert {draw["flip"] for draw in draws} == {True, False}
    assert len({draw["rotation"] for draw in draws}) == 200
    no_flip = [random_transform_params(rng, 64, allow_flip=False) for _ in range(50)]
    assert not any(draw["flip"] for draw in no_flip)


def test_identity_transform_is_a_plain_resize(face: np.ndarray) -> None:
    result = apply_transform(face, identity_params(64), 64)
    assert result.shape == (64, 64, 3) and result.dtype == np.uint8
    np.testing.assert_array_equal(result, resize_square(face, 64))
    flipped = apply_transform(face, {**identity_params(64), "flip": True}, 64)
    np.testing.assert_array_equal(flipped, result[:, ::-1])


def test_transform_moves_face_and_mask_together(face: np.ndarray) -> None:
    # A mask made from the face itself must still match the transformed face.
    mask = np.where(face[..., 1] > 128, 255, 0).astype(np.uint8)
    params = random_transform_params(np.random.default_rng(3), 96)
    assert abs(params["rotation"]) > 1  # a real transform, not nearly the identity
    moved_face = apply_transform(face, params, 96)
    moved_mask = apply_transform(mask, params, 96)
    assert moved_mask.shape == (96, 96) and moved_mask.dtype == np.uint8
    expected = moved_face[..., 1] > 128
    agreement = np.mean((moved_mask > 128) == expected)
    assert agreement > 0.97
    untransformed = resize_square(mask, 96) > 128
    assert np.mean(untransformed == expected) < agreement  # the transform did move things


def test_transform_rejects_params_for_another_size(face: np.ndarray) -> None:
    with pytest.raises(ValueError, match="size 64, not 32"):
        apply_transform(face, identity_params(64), 32)


def test_random_warp_is_deterministic_and_changes_the_image(face: np.ndarray) -> None:
    first = random_warp(face, np.random.default_rng(11))
    second = random_warp(face, np.random.default_rng(11))
    other = random_warp(face, np.random.default_rng(12))
    assert first.shape == face.shape and first.dtype == face.dtype
    np.testing.assert_array_equal(first, second)
    assert np.abs(first.astype(int) - face).mean() > 3
    assert np.abs(first.astype(int) - other).mean() > 3
    # A warp displaces, it does not repaint: the overall brightness stays close.
    assert abs(float(first.mean()) - float(face.mean())) < 5


@pytest.mark.parametrize("shape,dtype", [((48, 48), np.uint8), ((40, 56, 3), np.float32), ((32, 32, 1), np.uint8)])
def test_random_warp_keeps_shape_and_dtype(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(0)
    image = (rng.random(shape) * 255).astype(dtype)
    warped = random_warp(image, np.random.default_rng(1))
    assert warped.shape == image.shape and warped.dtype == image.dtype
    assert not np.array_equal(warped, image)


def test_random_warp_with_zero_strength_is_the_identity(face: np.ndarray) -> None:
    np.testing.assert_array_equal(random_warp(face, np.random.default_rng(0), strength=0.0), face)


def test_random_warp_rejects_bad_arguments(face: np.ndarray) -> None:
    with pytest.raises(ValueError, match="grid_cells"):
        random_warp(face, np.random.default_rng(0), grid_cells=1)
    with pytest.raises(ValueError, match="strength"):
        random_warp(face, np.random.default_rng(0), strength=-1.0)


def test_resize_faceset_resizes_faces_and_masks(face: np.ndarray) -> None:
    faces, masks = np.stack([face, face]), np.stack([face[..., 0], face[..., 0]])
    small_faces, small_masks = resize_faceset(faces, masks, 48)
    assert small_faces.shape == (2, 48, 48, 3) and small_masks.shape == (2, 48, 48)
    np.testing.assert_array_equal(small_masks[1], resize_square(face[..., 0], 48))
    same_faces, _ = resize_faceset(small_faces, small_masks, 48)
    assert same_faces is small_faces


def test_sample_batch_is_deterministic_and_warps_only_the_input(face: np.ndarray) -> None:
    faces = np.stack([resize_square(np.roll(face, shift, axis=1), 32) for shift in (0, 20, 40)])
    masks = np.stack([resize_square(np.where(face[..., 1] > 100, 255, 0).astype(np.uint8), 32)] * 3)
    inputs, targets, target_masks = sample_batch(faces, masks, np.random.default_rng(1), batch_size=5)
    assert inputs.shape == targets.shape == (5, 32, 32, 3) and target_masks.shape == (5, 32, 32)
    assert inputs.dtype == targets.dtype == target_masks.dtype == np.uint8
    again = sample_batch(faces, masks, np.random.default_rng(1), batch_size=5)
    for first, second in zip((inputs, targets, target_masks), again, strict=True):
        np.testing.assert_array_equal(first, second)
    assert not np.array_equal(inputs, targets)
    unwarped, targets_unwarped, _ = sample_batch(faces, masks, np.random.default_rng(1), batch_size=5, warp=False)
    np.testing.assert_array_equal(unwarped, targets_unwarped)
