"""Colour transfer on real face crops: RCT must move the masked Lab statistics onto the target's."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tasks.color import (
    COLOR_TRANSFER_CHOICES,
    COLOR_TRANSFERS,
    ColorTransferError,
    iterative_distribution_transfer,
    linear_color_transfer,
    monge_kantorovich_transfer,
    reinhard_color_transfer,
    sliced_optimal_transport,
    transfer_color,
)

# The transfers added beside rct, each as (source, target, source_mask, target_mask) -> image.
DISTRIBUTION_METHODS = {
    "lct": linear_color_transfer,
    "mkl": monge_kantorovich_transfer,
    "idt": iterative_distribution_transfer,
    "sot": sliced_optimal_transport,
}


CROP_SIDE = 150


def read_face_crop(media_dir: Path, name: str, box: tuple[int, int, int]) -> np.ndarray:
    """A square face crop of a real colour photo, as (150, 150, 3) float32 BGR in [0, 1].

    `box` is (x, y, side) of the face in that photo (found once with dlib's HOG detector).
    The tight_crops photos are greyscale, so colour tests use the identity photos.
    """
    image = cv2.imread(str(media_dir / "photos" / "identities" / name))
    assert image is not None, f"could not read photo {name}"
    x, y, side = box
    crop = cv2.resize(image[y : y + side, x : x + side], (CROP_SIDE, CROP_SIDE), interpolation=cv2.INTER_AREA)
    return crop.astype(np.float32) / 255.0


def central_ellipse(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 mask: a filled ellipse over the middle of a face crop."""
    height, width = shape
    mask = np.zeros((height, width), dtype=np.float32)
    cv2.ellipse(mask, (width // 2, height // 2), (width // 3, height * 2 // 5), 0, 0, 360, 1.0, thickness=-1)
    return mask


def masked_lab_statistics(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)[mask > 0.5].astype(np.float64)
    return lab.mean(axis=0), lab.std(axis=0)


@pytest.fixture(scope="module")
def source(media_dir: Path) -> np.ndarray:
    return read_face_crop(media_dir, "eric_clapton/clapton-2.jpg", (194, 95, 151))


@pytest.fixture(scope="module")
def target(media_dir: Path) -> np.ndarray:
    return read_face_crop(media_dir, "jennifer_aniston/img12.jpg", (211, 112, 150))


def test_registry_matches_choices() -> None:
    assert set(COLOR_TRANSFERS) == set(COLOR_TRANSFER_CHOICES) == {"none", "rct", "lct", "mkl", "idt", "sot"}


def test_rct_moves_masked_lab_statistics_to_target(source: np.ndarray, target: np.ndarray) -> None:
    mask = central_ellipse(source.shape[:2])
    source_mean, _ = masked_lab_statistics(source, mask)
    target_mean, target_std = masked_lab_statistics(target, mask)
    # The two real faces must differ to begin with, or the test proves nothing.
    assert np.abs(source_mean - target_mean).max() > 5.0

    result = transfer_color("rct", source, target, mask)

    assert result.dtype == np.float32 and result.shape == source.shape
    assert result.min() >= 0.0 and result.max() <= 1.0
    result_mean, result_std = masked_lab_statistics(result, mask)
    np.testing.assert_allclose(result_mean, target_mean, atol=1.5)
    np.testing.assert_allclose(result_std, target_std, rtol=0.1)


def test_rct_statistics_ignore_pixels_outside_the_masks(source: np.ndarray, target: np.ndarray) -> None:
    mask = central_ellipse(source.shape[:2])
    outside = mask[..., None] < 0.5
    vandalised_target = np.where(outside, np.float32(1.0), target)  # white outside the face
    vandalised_source = np.where(outside, np.float32(0.0), source)  # black outside the face

    reference = reinhard_color_transfer(source, target, mask, mask)
    result = reinhard_color_transfer(vandalised_source, vandalised_target, mask, mask)

    inside = ~outside[..., 0]
    np.testing.assert_allclose(result[inside], reference[inside], atol=1e-4)
    # Without masks the white/black surroundings shift the statistics visibly.
    unmasked = reinhard_color_transfer(vandalised_source, vandalised_target)
    assert np.abs(unmasked[inside] - reference[inside]).mean() > 0.02


def test_rct_accepts_separate_masks_and_sizes(source: np.ndarray, target: np.ndarray) -> None:
    large_target = cv2.resize(target, (300, 300), interpolation=cv2.INTER_LINEAR)
    source_mask = central_ellipse(source.shape[:2])
    result = reinhard_color_transfer(source, large_target, source_mask, central_ellipse((300, 300))[..., None])
    assert result.shape == source.shape
    result_mean, _ = masked_lab_statistics(result, source_mask)
    target_mean, _ = masked_lab_statistics(large_target, central_ellipse((300, 300)))
    np.testing.assert_allclose(result_mean, target_mean, atol=1.5)


def test_uint8_target_matches_float_target(source: np.ndarray, target: np.ndarray) -> None:
    target_uint8 = np.round(target * 255.0).astype(np.uint8)
    mask = central_ellipse(source.shape[:2])
    np.testing.assert_allclose(
        transfer_color("rct", source, target_uint8, mask), transfer_color("rct", source, target, mask), atol=1e-5
    )


def test_none_returns_an_unchanged_copy(source: np.ndarray, target: np.ndarray) -> None:
    result = transfer_color("none", source, target)
    assert result is not source
    np.testing.assert_array_equal(result, source)


def test_unknown_kind_names_the_choices(source: np.ndarray, target: np.ndarray) -> None:
    with pytest.raises(ColorTransferError, match=r"'sepia'.*none, rct"):
        transfer_color("sepia", source, target)  # type: ignore[arg-type]


def test_empty_mask_is_rejected(source: np.ndarray, target: np.ndarray) -> None:
    with pytest.raises(ColorTransferError, match="no pixels"):
        transfer_color("rct", source, target, np.zeros(source.shape[:2], dtype=np.float32))


def test_mismatched_mask_is_rejected(source: np.ndarray, target: np.ndarray) -> None:
    with pytest.raises(ColorTransferError, match=r"source_mask.*\(10, 10\)"):
        reinhard_color_transfer(source, target, source_mask=np.ones((10, 10), dtype=np.float32))


def test_grey_image_is_rejected(target: np.ndarray) -> None:
    with pytest.raises(ColorTransferError, match="source must be an"):
        transfer_color("rct", np.zeros((CROP_SIDE, CROP_SIDE), dtype=np.float32), target)


def masked_bgr_statistics(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = image[mask > 0.5].astype(np.float64)
    return pixels.mean(axis=0), pixels.std(axis=0)


@pytest.mark.parametrize("kind", list(DISTRIBUTION_METHODS))
def test_transfer_moves_masked_statistics_to_the_target(source: np.ndarray, target: np.ndarray, kind: str) -> None:
    mask = central_ellipse(source.shape[:2])
    source_mean, source_std = masked_bgr_statistics(source, mask)
    target_mean, target_std = masked_bgr_statistics(target, mask)
    assert np.abs(source_mean - target_mean).max() > 0.1  # the faces differ: B/G/R means 0.1..0.23 apart

    result = transfer_color(kind, source, target, mask)  # type: ignore[arg-type]

    assert result.dtype == np.float32 and result.shape == source.shape
    assert result.min() >= 0.0 and result.max() <= 1.0
    result_mean, result_std = masked_bgr_statistics(result, mask)
    assert np.abs(result_mean - target_mean).max() < 0.1 * np.abs(source_mean - target_mean).max()
    np.testing.assert_allclose(result_mean, target_mean, atol=0.01)
    np.testing.assert_allclose(result_std, target_std, rtol=0.06)
    assert np.abs(result_std - target_std).max() < np.abs(source_std - target_std).max()


@pytest.mark.parametrize("kind", ["lct", "mkl"])
def test_linear_transfers_match_the_covariance(source: np.ndarray, target: np.ndarray, kind: str) -> None:
    mask = central_ellipse(source.shape[:2])
    result = DISTRIBUTION_METHODS[kind](source, target, mask, mask)
    result_covariance = np.cov(result[mask > 0.5].T)
    target_covariance = np.cov(target[mask > 0.5].T)
    np.testing.assert_allclose(result_covariance, target_covariance, atol=2e-4)  # entries about 0.02


@pytest.mark.parametrize("kind", ["idt", "sot"])
def test_distribution_transfers_match_the_quantiles_and_reproduce(source: np.ndarray, target: np.ndarray,
                                                                  kind: str) -> None:
    mask = central_ellipse(source.shape[:2])
    method = DISTRIBUTION_METHODS[kind]
    result = method(source, target, mask, mask)
    quantiles = [0.1, 0.5, 0.9]
    result_quantiles = np.quantile(result[mask > 0.5], quantiles, axis=0)
    target_quantiles = np.quantile(target[mask > 0.5], quantiles, axis=0)
    source_quantiles = np.quantile(source[mask > 0.5], quantiles, axis=0)
    assert np.abs(result_quantiles - target_quantiles).max() < 0.03
    assert np.abs(source_quantiles - target_quantiles).max() > 0.2
    np.testing.assert_array_equal(method(source, target, mask, mask), result)  # seeded: reproducible
    other_seed = method(source, target, mask, mask, seed=1)
    assert not np.array_equal(other_seed, result)
    assert np.abs(other_seed - result).mean() < 0.02  # another seed, about the same answer


@pytest.mark.parametrize("kind", list(DISTRIBUTION_METHODS))
def test_transfer_statistics_ignore_pixels_outside_the_masks(source: np.ndarray, target: np.ndarray,
                                                             kind: str) -> None:
    mask = central_ellipse(source.shape[:2])
    outside = mask[..., None] < 0.5
    inside = ~outside[..., 0]
    method = DISTRIBUTION_METHODS[kind]
    reference = method(source, target, mask, mask)
    result = method(np.where(outside, np.float32(0.0), source), np.where(outside, np.float32(1.0), target), mask, mask)
    np.testing.assert_allclose(result[inside], reference[inside], atol=1e-5)
    unmasked = method(np.where(outside, np.float32(0.0), source), np.where(outside, np.float32(1.0), target))
    assert np.abs(unmasked[inside] - reference[inside]).mean() > 0.02


@pytest.mark.parametrize("kind", list(DISTRIBUTION_METHODS))
def test_transfer_accepts_uint8_and_separate_sizes(source: np.ndarray, target: np.ndarray, kind: str) -> None:
    large_target = np.round(cv2.resize(target, (256, 256)) * 255).astype(np.uint8)
    result = DISTRIBUTION_METHODS[kind](np.round(source * 255).astype(np.uint8), large_target,
                                        central_ellipse(source.shape[:2]), central_ellipse((256, 256))[..., None])
    assert result.shape == source.shape and result.dtype == np.float32
    result_mean, _ = masked_bgr_statistics(result, central_ellipse(source.shape[:2]))
    target_mean, _ = masked_bgr_statistics(large_target / 255.0, central_ellipse((256, 256)))
    np.testing.assert_allclose(result_mean, target_mean, atol=0.015)
    with pytest.raises(ColorTransferError, match="no pixels"):
        DISTRIBUTION_METHODS[kind](source, target, np.zeros(source.shape[:2], np.float32))
