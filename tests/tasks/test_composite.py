"""Pasting faces back into real frames: round trips, locality, resolution and bad inputs."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import dlib
import numpy as np
import pytest

from tasks.color import ColorTransferError, transfer_color
from tasks.composite import BLEND_MODE_CHOICES, BLEND_MODES, CompositeError, composite_face
from tasks.masks import hull_mask, refine_mask

CROP_SIDE = 256
# Where the eye centres land in a crop, as fractions of its side: a whole-face framing.
EYE_ROW, LEFT_EYE_COLUMN, RIGHT_EYE_COLUMN = 0.42, 0.36, 0.64


@dataclass
class AlignedFace:
    image: np.ndarray  # (H, W, 3) uint8 photo
    landmarks: np.ndarray  # (68, 2) photo px
    matrix: np.ndarray  # (2, 3) photo -> crop
    crop: np.ndarray  # (S, S, 3) uint8
    hull: np.ndarray  # (S, S) float32 [0, 1], the face in crop coordinates


def eye_similarity(landmarks: np.ndarray, side: int) -> np.ndarray:
    """(2, 3) similarity putting the two eye centres at fixed places of a side x side crop."""
    left_eye, right_eye = complex(*landmarks[36:42].mean(axis=0)), complex(*landmarks[42:48].mean(axis=0))
    left_goal = complex(LEFT_EYE_COLUMN * side, EYE_ROW * side)
    right_goal = complex(RIGHT_EYE_COLUMN * side, EYE_ROW * side)
    scale_rotation = (right_goal - left_goal) / (right_eye - left_eye)
    shift = left_goal - scale_rotation * left_eye
    cos_scaled, sin_scaled = scale_rotation.real, scale_rotation.imag
    return np.array([[cos_scaled, -sin_scaled, shift.real], [sin_scaled, cos_scaled, shift.imag]])


@pytest.fixture(scope="module")
def align_photo(media_dir: Path):
    """A function photo name -> AlignedFace (dlib HOG detector + 68-point predictor)."""
    package = importlib.util.find_spec("face_recognition_models")
    assert package is not None and package.submodule_search_locations, "face_recognition_models is not installed"
    model_path = Path(package.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    predictor = dlib.shape_predictor(str(model_path))
    detector = dlib.get_frontal_face_detector()

    def align(name: str) -> AlignedFace:
        image = cv2.imread(str(media_dir / "photos" / "identities" / name))
        assert image is not None, f"could not read photo {name}"
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        faces = detector(rgb, 0)
        assert len(faces) >= 1, f"no face found in {name}"
        landmarks = np.array([[p.x, p.y] for p in predictor(rgb, faces[0]).parts()], dtype=np.float64)
        matrix = eye_similarity(landmarks, CROP_SIDE)
        crop = cv2.warpAffine(image, matrix, (CROP_SIDE, CROP_SIDE), borderMode=cv2.BORDER_REPLICATE)
        crop_landmarks = landmarks @ matrix[:, :2].T + matrix[:, 2]
        hull = hull_mask(crop_landmarks, CROP_SIDE).astype(np.float32) / 255.0
        return AlignedFace(image, landmarks, matrix, crop, hull)

    return align


@pytest.fixture(scope="module")
def dst(align_photo) -> AlignedFace:
    return align_photo("jennifer_aniston/img55.jpg")  # 1200x720 frame


@pytest.fixture(scope="module")
def src(align_photo) -> AlignedFace:
    return align_photo("barack_obama/obama1.jpg")


def frame_face_region(face: AlignedFace, grow: int) -> np.ndarray:
    """(H, W) bool: the face's hull in frame coordinates, grown by `grow` px."""
    hull = hull_mask(face.landmarks, face.image.shape[:2])
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    return cv2.dilate(hull, kernel) > 0


def lab_mean(pixels: np.ndarray) -> np.ndarray:
    """Mean L*a*b* of (N, 3) uint8 BGR pixels."""
    return cv2.cvtColor(pixels.reshape(-1, 1, 3), cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64).mean(axis=0)


def test_round_trip_changes_little_and_only_inside_the_face(dst: AlignedFace) -> None:
    frame_before = dst.image.copy()
    ones = np.ones((CROP_SIDE, CROP_SIDE), dtype=np.float32)

    result = composite_face(
        dst.image, dst.matrix, dst.crop.astype(np.float32) / 255.0, ones, dst.hull, dst.crop, "rct", erode=0, blur=16
    )

    assert result.shape == dst.image.shape and result.dtype == np.uint8
    assert result is not dst.image
    np.testing.assert_array_equal(dst.image, frame_before)  # input left alone
    difference = np.abs(result.astype(np.int16) - dst.image).max(axis=2)
    # The feather (8 px at crop scale, ~10 px in this frame) may reach a little past the hull.
    assert np.all(difference[~frame_face_region(dst, grow=16)] == 0)
    face = frame_face_region(dst, grow=0)
    assert np.count_nonzero(difference[face]) > 0.5 * np.count_nonzero(face)  # it did paste something
    assert difference[face].mean() < 5.0  # ... that is nearly the frame itself


def test_working_region_gives_the_same_pixels_as_the_whole_frame(dst: AlignedFace, src: AlignedFace) -> None:
    predicted = src.crop.astype(np.float32) / 255.0
    result = composite_face(dst.image, dst.matrix, predicted, src.hull, dst.hull, dst.crop, "rct", erode=-10, blur=40)

    # Reference: the same steps over the whole frame, no bounding box.
    mask = refine_mask(dst.hull * src.hull, erode=-10, blur=40)
    face = transfer_color("rct", predicted, dst.crop, mask)
    height, width = dst.image.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    frame_face = cv2.warpAffine(face * 255.0, dst.matrix, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    frame_mask = cv2.warpAffine(mask, dst.matrix, (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    frame_mask = frame_mask[..., None]
    expected = np.rint(dst.image * (1.0 - frame_mask) + frame_face * frame_mask)

    assert np.abs(result - expected).max() <= 1.0


def test_prediction_at_model_resolution_is_scaled_to_the_crop(dst: AlignedFace) -> None:
    resolution = 64
    predicted = cv2.resize(dst.crop, (resolution, resolution), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    predicted_mask = np.ones((resolution, resolution, 1), dtype=np.float32)

    result = composite_face(
        dst.image, dst.matrix, predicted, predicted_mask, dst.hull, dst.crop, "none", erode=4, blur=16
    )

    difference = np.abs(result.astype(np.int16) - dst.image).max(axis=2)
    assert np.all(difference[~frame_face_region(dst, grow=16)] == 0)
    # Blurrier than the frame (upscaled from 64 px) but in the right place: small mean change.
    assert difference[frame_face_region(dst, grow=0)].mean() < 12.0


def test_other_face_is_pasted_and_recoloured_to_the_frame(dst: AlignedFace, src: AlignedFace) -> None:
    predicted = src.crop.astype(np.float32) / 255.0
    inner_face = cv2.erode(hull_mask(dst.landmarks, dst.image.shape[:2]), np.ones((25, 25), np.uint8)) > 0
    original_colour = lab_mean(dst.image[inner_face])

    pasted = {
        kind: composite_face(dst.image, dst.matrix, predicted, src.hull, dst.hull, dst.crop, kind, erode=8, blur=24)
        for kind in ("none", "rct")
    }

    outside = ~frame_face_region(dst, grow=24)
    for result in pasted.values():
        np.testing.assert_array_equal(result[outside], dst.image[outside])
        assert np.abs(result[inner_face].astype(np.int16) - dst.image[inner_face]).mean() > 10.0
    raw_error = np.abs(lab_mean(pasted["none"][inner_face]) - original_colour).sum()
    recoloured_error = np.abs(lab_mean(pasted["rct"][inner_face]) - original_colour).sum()
    assert recoloured_error < 0.5 * raw_error


def test_empty_mask_leaves_the_frame_untouched(dst: AlignedFace) -> None:
    zeros = np.zeros((CROP_SIDE, CROP_SIDE), dtype=np.float32)
    face = dst.crop.astype(np.float32) / 255.0
    result = composite_face(dst.image, dst.matrix, face, zeros, dst.hull, dst.crop, "rct", 0, 8)
    assert result is not dst.image
    np.testing.assert_array_equal(result, dst.image)


def test_face_partly_outside_the_frame(dst: AlignedFace) -> None:
    # Shift the frame->crop transform so the face sits across the frame's left edge.
    face_left = dst.landmarks[:, 0].min()
    shift = np.array([[1.0, 0.0, face_left + 60.0], [0.0, 1.0, 0.0]])
    matrix = dst.matrix @ np.vstack([shift, [0.0, 0.0, 1.0]])  # frame pixel -> shifted -> crop
    ones = np.ones((CROP_SIDE, CROP_SIDE), dtype=np.float32)

    face = dst.crop.astype(np.float32) / 255.0
    result = composite_face(dst.image, matrix, face, ones, dst.hull, dst.crop, "rct", 0, 16)

    changed_columns = np.flatnonzero(np.any(result != dst.image, axis=(0, 2)))
    assert changed_columns.size > 0 and changed_columns.min() == 0
    assert changed_columns.max() < 400


def test_blend_registry_matches_choices() -> None:
    assert set(BLEND_MODES) == set(BLEND_MODE_CHOICES) == {"overlay"}


def test_bad_inputs_are_named(dst: AlignedFace) -> None:
    face = dst.crop.astype(np.float32) / 255.0
    ones = np.ones((CROP_SIDE, CROP_SIDE), dtype=np.float32)
    with pytest.raises(CompositeError, match="frame must be uint8"):
        composite_face(dst.image.astype(np.float32), dst.matrix, face, ones, dst.hull, dst.crop, "none", 0, 0)
    with pytest.raises(CompositeError, match="matrix must be an invertible"):
        composite_face(dst.image, np.zeros((2, 3)), face, ones, dst.hull, dst.crop, "none", 0, 0)
    with pytest.raises(CompositeError, match=r"predicted_face .* predicted_mask .* same square"):
        composite_face(dst.image, dst.matrix, face, ones[:64, :64], dst.hull, dst.crop, "none", 0, 0)
    with pytest.raises(CompositeError, match="dst_mask"):
        composite_face(dst.image, dst.matrix, face, ones, dst.hull[:100], dst.crop, "none", 0, 0)
    with pytest.raises(CompositeError, match="'poisson'.*overlay"):
        unknown_mode: Any = "poisson"
        composite_face(dst.image, dst.matrix, face, ones, dst.hull, dst.crop, "none", 0, 0, blend_mode=unknown_mode)
    with pytest.raises(ColorTransferError, match="'sepia'"):
        composite_face(dst.image, dst.matrix, face, ones, dst.hull, dst.crop, "sepia", 0, 0)  # type: ignore[arg-type]
