"""The eyes/mouth priority mask on a real aligned face."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tasks.align import compute_alignment, transform_points, warp_to_crop
from tasks.detect import DlibAnalyzer
from tasks.eyes_mouth import eyes_mouth_mask
from tasks.images import read_image
from tasks.masks import MaskError

FRONTAL = "photos/identities/barack_obama/obama.jpg"


@pytest.fixture(scope="module")
def aligned(media_dir) -> tuple[np.ndarray, np.ndarray]:
    """A 256 px whole-face crop of a real photo and its 68 landmarks in crop pixels."""
    image = read_image(media_dir / FRONTAL)
    landmarks = DlibAnalyzer().detect(image)[0].landmarks
    matrix = compute_alignment(landmarks, "whole_face", 256)
    return warp_to_crop(image, matrix, 256), transform_points(landmarks, matrix).astype(np.float64)


def hull_area(points: np.ndarray) -> float:
    return cv2.contourArea(cv2.convexHull(points.astype(np.float32)))


def covered(mask: np.ndarray, point: np.ndarray) -> int:
    return int(mask[int(round(point[1])), int(round(point[0]))])


def test_mask_covers_the_eyes_and_mouth_only(aligned) -> None:
    _, landmarks = aligned
    mask = eyes_mouth_mask(landmarks, 256)
    assert mask.shape == (256, 256) and mask.dtype == np.uint8
    for part in (slice(36, 42), slice(42, 48), slice(48, 60)):
        assert covered(mask, landmarks[part].mean(axis=0)) > 240  # an eye is only ~7 px tall: feathered a bit
        assert all(covered(mask, point) > 0 for point in landmarks[part])  # the outline is inside, dilated
    elsewhere = {"nose tip": landmarks[30], "chin": landmarks[8], "right cheek": landmarks[2],
                 "left cheek": landmarks[14], "brow": landmarks[19], "forehead": landmarks[27] * 2 - landmarks[30]}
    for name, point in elsewhere.items():
        assert covered(mask, point) == 0, f"the {name} is not part of the eyes/mouth mask"
    parts_area = hull_area(landmarks[36:42]) + hull_area(landmarks[42:48]) + hull_area(landmarks[48:60])
    assert parts_area < np.count_nonzero(mask > 127) < 2.5 * parts_area
    assert np.count_nonzero(mask) < 0.12 * mask.size


def test_feathering_softens_only_the_edges(aligned) -> None:
    _, landmarks = aligned
    hard = eyes_mouth_mask(landmarks, 256, feather=False)
    soft = eyes_mouth_mask(landmarks, 256)
    assert set(np.unique(hard)) == {0, 255}
    assert np.count_nonzero((soft > 0) & (soft < 255)) > 0.5 * np.count_nonzero(hard)
    assert np.abs(soft.astype(int) - hard).mean() < 10


def test_mask_follows_the_face_in_a_smaller_crop_and_a_mirror(aligned) -> None:
    _, landmarks = aligned
    large = eyes_mouth_mask(landmarks, 256)
    small = eyes_mouth_mask(landmarks * 0.5, 128)
    downsized = cv2.resize(large, (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - downsized).mean() < 6
    mirrored_landmarks = landmarks.copy()
    mirrored_landmarks[:, 0] = 255 - mirrored_landmarks[:, 0]  # the parts swap sides, their hulls do not care
    mirrored = eyes_mouth_mask(mirrored_landmarks, 256, feather=False)
    expected = eyes_mouth_mask(landmarks, 256, feather=False)[:, ::-1]
    overlap = np.count_nonzero(mirrored & expected) / np.count_nonzero(mirrored | expected)
    assert overlap > 0.95


def test_mask_marks_the_darkest_details_of_the_face(aligned) -> None:
    crop, landmarks = aligned
    mask = eyes_mouth_mask(landmarks, 256, feather=False) > 0
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float64)
    cheeks = np.zeros_like(mask)
    for point in (landmarks[2] * 0.6 + landmarks[30] * 0.4, landmarks[14] * 0.6 + landmarks[30] * 0.4):
        cv2.circle(cheeks.view(np.uint8), (int(point[0]), int(point[1])), 8, 1, -1)
    # Pupils, lashes and lips are darker and more varied than bare cheek skin.
    assert grey[mask].mean() < grey[cheeks].mean()
    assert grey[mask].std() > grey[cheeks].std()


def test_mask_rejects_unusable_landmarks(aligned) -> None:
    _, landmarks = aligned
    with pytest.raises(MaskError, match=r"\(68, 2\)"):
        eyes_mouth_mask(landmarks[:10], 128)
    broken = landmarks.copy()
    broken[40] = np.nan
    with pytest.raises(MaskError, match="NaN"):
        eyes_mouth_mask(broken, 128)
    with pytest.raises(MaskError, match="positive"):
        eyes_mouth_mask(landmarks, 0)
