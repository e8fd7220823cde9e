"""Tests for tasks/augment.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tasks.augment import (
    apply_transform,
    blur_out_mask,
    random_hsv,
    random_transform_params,
    random_warp,
    resize_faceset,
    resize_square,
    sample_batch,
    yaw_balanced_weights,
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


def read_colour_face(media_dir: Path, name: str, box: tuple[int, int, int], size: int = 64) -> np.ndarray:
    """A square uint8 BGR face crop of a colour photo; `box` is (x, y, side) of the face in it."""
    image = cv2.imread(str(media_dir / "photos" / "identities" / name))
    assert image is not None, f"could not read photo {name}"
    x, y, side = box
    return cv2.resize(image[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def colour_faces(media_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Two real colour faces of different skin tones (src-like, dst-like), 64 px."""
    return (read_colour_face(media_dir, "eric_clapton/clapton-2.jpg", (194, 95, 151)),
            read_colour_face(media_dir, "jennifer_aniston/img12.jpg", (211, 112, 150)))


def central_mask(size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.ellipse(mask, (size // 2, size // 2), (size // 3, size * 2 // 5), 0, 0, 360, 255, thickness=-1)
    return mask


def test_random_hsv_is_deterministic_and_shifts_the_colours(colour_faces) -> None:
    face, _ = colour_faces
    first = random_hsv(face, np.random.default_rng(4), 0.3)
    assert first.shape == face.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, random_hsv(face, np.random.default_rng(4), 0.3))
    assert not np.array_equal(first, random_hsv(face, np.random.default_rng(5), 0.3))
    changes = [np.abs(random_hsv(face, np.random.default_rng(seed), 0.3).astype(int) - face).mean() for seed in range(8)]
    assert np.mean(changes) > 5
    weak = [np.abs(random_hsv(face, np.random.default_rng(seed), 0.05).astype(int) - face).mean() for seed in range(8)]
    assert np.mean(weak) < np.mean(changes)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(random_hsv(face, rng, 0.0), face)
    assert rng.random() == np.random.default_rng(0).random()  # power 0 draws nothing
    floats = random_hsv(face.astype(np.float32) / 255, np.random.default_rng(4), 0.3)
    assert floats.dtype == np.float32
    assert np.abs(floats * 255 - first).max() <= 1.0
    with pytest.raises(ValueError, match="power"):
        random_hsv(face, np.random.default_rng(0), 1.5)


def test_blur_out_mask_blurs_only_the_background(colour_faces) -> None:
    face, _ = colour_faces
    mask = central_mask(64)
    result = blur_out_mask(face, mask, sigma=2.0)
    assert result.shape == face.shape and result.dtype == np.uint8
    inside, outside = mask == 255, mask == 0
    np.testing.assert_array_equal(result[inside], face[inside])

    def detail(image: np.ndarray) -> float:
        return float(np.abs(cv2.Laplacian(image.astype(np.float32), cv2.CV_32F))[outside].mean())

    assert detail(result) < 0.6 * detail(face)
    default = blur_out_mask(face, mask)  # sigma 64 / 128: barely any blur
    assert detail(result) < detail(default) < detail(face)


def test_blur_out_mask_does_not_smear_the_face_outwards() -> None:
    image = np.zeros((64, 64, 3), dtype=np.float32)
    mask = central_mask(64)
    image[mask == 255] = (0.0, 0.0, 1.0)  # a red face on a black background
    result = blur_out_mask(image, mask[..., None], sigma=4.0)
    assert result.dtype == np.float32
    assert float(result[mask == 0].max()) < 1e-5  # a plain blur would spread red over the edge
    with pytest.raises(ValueError, match="does not match"):
        blur_out_mask(image, mask[:32])


def test_yaw_balanced_weights_make_each_bin_equally_likely() -> None:
    yaws = np.concatenate([np.random.default_rng(0).uniform(1, 10, 90), np.full(9, 45.0), [np.nan]])
    weights = yaw_balanced_weights(yaws, bins=16)
    assert weights.shape == (100,) and weights.sum() == pytest.approx(1.0)
    assert weights[90:99].sum() == pytest.approx(0.5)  # two bins: 0..11.25 degrees (with the NaN), 45
    assert weights[95] > 5 * weights[0]
    uniform = yaw_balanced_weights(np.linspace(-80, 80, 16), bins=16)
    np.testing.assert_allclose(uniform, 1 / 16)
    assert yaw_balanced_weights(np.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="bins"):
        yaw_balanced_weights(yaws, bins=0)


def flat_faceset(count: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Faces of one flat grey level each (10, 20, ...), so a target's mean tells which face it was."""
    faces = np.stack([np.full((size, size, 3), 10 * (index + 1), dtype=np.uint8) for index in range(count)])
    return faces, np.stack([central_mask(size)] * count)


def test_sample_batch_follows_the_weights() -> None:
    faces, masks = flat_faceset(10)
    yaws = np.array([0.0] * 9 + [60.0])
    _, targets, _ = sample_batch(faces, masks, np.random.default_rng(3), batch_size=400,
                                 weights=yaw_balanced_weights(yaws), warp=False)
    drawn = np.round(targets.reshape(400, -1).mean(axis=1) / 10).astype(int) - 1
    assert 0.4 < np.mean(drawn == 9) < 0.6  # one face in ten, drawn half the time
    only_third = np.eye(10)[2]
    _, targets, _ = sample_batch(faces, masks, np.random.default_rng(3), batch_size=20, weights=only_third)
    assert np.all(targets == 30)
    with pytest.raises(ValueError, match="10 finite values"):
        sample_batch(faces, masks, np.random.default_rng(3), batch_size=2, weights=np.ones(3))
    with pytest.raises(ValueError, match="all zero"):
        sample_batch(faces, masks, np.random.default_rng(3), batch_size=2, weights=np.zeros(10))


def test_sample_batch_defaults_keep_the_plain_draw_order(face: np.ndarray) -> None:
    faces = np.stack([resize_square(face, 32)] * 2)
    masks = np.stack([central_mask(32)] * 2)
    inputs, targets, _ = sample_batch(faces, masks, np.random.default_rng(8), batch_size=3)
    rng = np.random.default_rng(8)
    indices = rng.integers(0, 2, size=3)
    for index, sample_rng, input_image, target in zip(indices, rng.spawn(3), inputs, targets, strict=True):
        expected_target = apply_transform(faces[index], random_transform_params(sample_rng, 32), 32)
        np.testing.assert_array_equal(target, expected_target)
        np.testing.assert_array_equal(input_image, random_warp(expected_target, sample_rng))


def test_sample_batch_hsv_and_blur_change_only_their_part(colour_faces) -> None:
    faces = np.stack([colour_faces[0]])
    masks = np.stack([central_mask(64)])
    plain = sample_batch(faces, masks, np.random.default_rng(2), batch_size=1)
    shifted = sample_batch(faces, masks, np.random.default_rng(2), batch_size=1, hsv_power=0.3)
    np.testing.assert_array_equal(shifted[1], plain[1])  # targets untouched
    assert np.abs(shifted[0].astype(int) - plain[0]).mean() > 2  # inputs recoloured
    blurred = sample_batch(faces, masks, np.random.default_rng(2), batch_size=1, blur_outside_mask=True)
    np.testing.assert_array_equal(blurred[0], plain[0])  # inputs untouched
    face_area = blurred[2][0] == 255
    np.testing.assert_array_equal(blurred[1][0][face_area], plain[1][0][face_area])
    assert not np.array_equal(blurred[1], plain[1])


def test_sample_batch_color_transfer_takes_the_reference_colours(colour_faces) -> None:
    source, reference = colour_faces
    faces, masks = np.stack([source]), np.stack([central_mask(64)])
    inside = central_mask(64) == 255
    source_mean = source[inside].mean(axis=0)
    reference_mean = reference[inside].mean(axis=0)
    assert np.abs(source_mean - reference_mean).max() > 25
    for kind in ("rct", "lct", "sot"):
        inputs, targets, _ = sample_batch(faces, masks, np.random.default_rng(1), batch_size=4, allow_flip=False,
                                          warp=False, color_transfer=kind, color_reference=np.stack([reference]),
                                          color_reference_masks=masks)
        np.testing.assert_array_equal(inputs, targets)  # input and target recoloured alike
        recoloured_mean = targets[:, 16:48, 20:44].reshape(-1, 3).mean(axis=0)
        plain_mean = sample_batch(faces, masks, np.random.default_rng(1), batch_size=4, allow_flip=False,
                                  warp=False)[1][:, 16:48, 20:44].reshape(-1, 3).mean(axis=0)
        assert np.abs(recoloured_mean - reference_mean).max() < 0.35 * np.abs(plain_mean - reference_mean).max(), kind
    again = sample_batch(faces, masks, np.random.default_rng(1), batch_size=4, color_transfer="idt",
                         color_reference=np.stack([reference, source]))
    repeat = sample_batch(faces, masks, np.random.default_rng(1), batch_size=4, color_transfer="idt",
                          color_reference=np.stack([reference, source]))
    for first, second in zip(again, repeat, strict=True):
        np.testing.assert_array_equal(first, second)
    with pytest.raises(ValueError, match="color_reference"):
        sample_batch(faces, masks, np.random.default_rng(1), batch_size=1, color_transfer="rct")
