"""tasks/align.py: aligned crops of real photos for every face type."""

from __future__ import annotations

from typing import get_args

import cv2
import numpy as np
import pytest

from tasks.align import (FACE_TYPE_FRAMING, FaceType, compute_alignment, invert_matrix, transform_points,
                         warp_to_crop)
from tasks.detect import DlibAnalyzer
from tasks.images import read_image

FRONTAL = "photos/identities/barack_obama/obama.jpg"
SIZE = 256
CENTRE = (SIZE - 1) / 2


@pytest.fixture(scope="module")
def analyzer() -> DlibAnalyzer:
    return DlibAnalyzer()


@pytest.fixture(scope="module")
def frontal(media_dir, analyzer) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(media_dir / FRONTAL)
    return image, analyzer.detect(image)[0].landmarks


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)


@pytest.mark.parametrize("face_type", get_args(FaceType))
def test_eyes_are_level_and_centred(frontal, face_type):
    _, landmarks = frontal
    matrix = compute_alignment(landmarks, face_type, SIZE)
    right_eye, left_eye = eye_centres(transform_points(landmarks, matrix))
    assert abs(right_eye[1] - left_eye[1]) < 2
    assert abs((right_eye[0] + left_eye[0]) / 2 - CENTRE) < 3
    assert right_eye[0] < CENTRE < left_eye[0]


def test_matrix_is_a_similarity(frontal):
    _, landmarks = frontal
    matrix = compute_alignment(landmarks, "full", SIZE)
    assert matrix.shape == (2, 3) and matrix.dtype == np.float32
    assert matrix[0, 0] == pytest.approx(matrix[1, 1], rel=1e-5)
    assert matrix[0, 1] == pytest.approx(-matrix[1, 0], rel=1e-5)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_larger_face_types_show_the_face_smaller(frontal):
    _, landmarks = frontal
    eye_distances = []
    for face_type in get_args(FaceType):
        right_eye, left_eye = eye_centres(transform_points(landmarks, compute_alignment(landmarks, face_type, SIZE)))
        eye_distances.append(left_eye[0] - right_eye[0])
    assert eye_distances == sorted(eye_distances, reverse=True)
    assert len(set(np.round(eye_distances, 1))) == len(eye_distances)


def test_face_types_frame_the_features_they_name(frontal):
    _, landmarks = frontal
    brows_top, chin = landmarks[17:27, 1].min(), landmarks[8, 1]
    half = transform_points(landmarks, compute_alignment(landmarks, "half", SIZE))
    assert half[8, 1] > SIZE  # half: the chin is cut off
    full = transform_points(landmarks, compute_alignment(landmarks, "full", SIZE))
    assert 0 < full[17:27, 1].min() and full[8, 1] < SIZE  # full: brows to chin inside
    assert brows_top < chin
    whole = transform_points(landmarks, compute_alignment(landmarks, "whole_face", SIZE))
    # whole_face: more room above the brows (forehead) than below the chin
    assert whole[17:27, 1].min() > SIZE - whole[8, 1]
    assert set(FACE_TYPE_FRAMING) == set(get_args(FaceType))


def test_transform_points_and_inverse_round_trip(frontal):
    _, landmarks = frontal
    matrix = compute_alignment(landmarks, "whole_face", SIZE)
    in_crop = transform_points(landmarks, matrix)
    np.testing.assert_allclose(in_crop, cv2.transform(landmarks[None].astype(np.float64), matrix)[0], atol=1e-3)
    np.testing.assert_allclose(transform_points(in_crop, invert_matrix(matrix)), landmarks, atol=1e-2)


def test_rotated_photo_aligns_to_the_same_crop(frontal, analyzer):
    image, landmarks = frontal
    height, width = image.shape[:2]
    rotation = cv2.getRotationMatrix2D((width / 2, height / 2), -25, 1.0)
    rotated = cv2.warpAffine(image, rotation, (width, height), borderMode=cv2.BORDER_REPLICATE)
    faces = analyzer.detect(rotated)
    assert len(faces) == 1
    crop = warp_to_crop(image, compute_alignment(landmarks, "full", SIZE), SIZE)
    rotated_matrix = compute_alignment(faces[0].landmarks, "full", SIZE)
    rotated_crop = warp_to_crop(rotated, rotated_matrix, SIZE)
    in_crop = transform_points(landmarks, compute_alignment(landmarks, "full", SIZE))
    assert np.abs(transform_points(faces[0].landmarks, rotated_matrix) - in_crop)[17:].mean() < 2
    difference = np.abs(crop.astype(int) - rotated_crop).mean()
    shifted = np.abs(crop[:, 6:].astype(int) - crop[:, :-6]).mean()  # the same crop 6 px off
    assert difference < shifted / 2


def test_strong_downscale_matches_area_resize_of_a_large_crop(frontal):
    image, landmarks = frontal
    small = warp_to_crop(image, compute_alignment(landmarks, "head", 32), 32)
    large = warp_to_crop(image, compute_alignment(landmarks, "head", 512), 512)
    assert small.shape == (32, 32, 3) and small.dtype == np.uint8
    reference = cv2.resize(large, (32, 32), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - reference).mean() < 1  # a plain bilinear warp is off by ~8


def test_rejects_unknown_face_type_and_degenerate_landmarks(frontal):
    with pytest.raises(ValueError, match="whole_face"):
        compute_alignment(frontal[1], "quarter", SIZE)
    with pytest.raises(ValueError, match="single point"):
        compute_alignment(np.zeros((68, 2), np.float32), "full", SIZE)
