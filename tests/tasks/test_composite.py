"""Pasting faces back into real frames: round trips, locality, resolution, blend modes and bad inputs."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import dlib
import numpy as np
import pytest

from tasks.blend import (BLEND_MODE_CHOICES, BLEND_MODES, BlendError, MotionBlur, blur_along_motion, match_histograms,
                         sharpen_face)
from tasks.color import ColorTransferError, transfer_color
from tasks.composite import CompositeError, CompositeOptions, composite_face, paste_face
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


def paste(dst: AlignedFace, face: np.ndarray, mask: np.ndarray, matrix: np.ndarray | None = None, motion=None,
          **options: Any) -> np.ndarray:
    """composite_face into the dst photo with CompositeOptions(**options)."""
    matrix = dst.matrix if matrix is None else matrix
    return composite_face(dst.image, matrix, face, mask, dst.crop, CompositeOptions(**options), motion)


def as_face(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def test_round_trip_changes_little_and_only_inside_the_face(dst: AlignedFace) -> None:
    frame_before = dst.image.copy()

    result = paste(dst, as_face(dst.crop), dst.hull, color_transfer="rct", erode=0, blur=16)

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
    predicted = as_face(src.crop)
    result = paste(dst, predicted, dst.hull * src.hull, color_transfer="rct", erode=-10, blur=40)

    # Reference: the same steps over the whole frame, no bounding box.
    mask = refine_mask(dst.hull * src.hull, erode=-10, blur=40)
    face = transfer_color("rct", predicted, dst.crop, mask)
    height, width = dst.image.shape[:2]
    inverse = cv2.WARP_INVERSE_MAP
    frame_face = cv2.warpAffine(face * 255.0, dst.matrix, (width, height), flags=cv2.INTER_CUBIC | inverse,
                                borderMode=cv2.BORDER_REPLICATE)
    frame_mask = cv2.warpAffine(mask, dst.matrix, (width, height), flags=cv2.INTER_LINEAR | inverse,
                                borderMode=cv2.BORDER_CONSTANT)[..., None]
    expected = np.clip(np.rint(dst.image * (1.0 - frame_mask) + frame_face * frame_mask), 0, 255)

    assert np.abs(result - expected).max() <= 1.0


def test_pasting_faces_in_place_equals_compositing_whole_frame_copies(dst: AlignedFace, src: AlignedFace) -> None:
    # Two faces of one frame, the second overlapping the first: the merger pastes both into one copy,
    # each inside its own box, where composite_face copies the whole frame for every face.
    face_width = np.ptp(dst.landmarks[:, 0])
    shift = np.array([[1.0, 0.0, -0.4 * face_width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # the face lands 0.4 of its width right
    matrices = [dst.matrix, dst.matrix @ shift]
    options = CompositeOptions(color_transfer="rct", erode=-6, blur=32)
    chained = dst.image
    for matrix in matrices:
        chained = composite_face(chained, matrix, as_face(src.crop), dst.hull * src.hull, dst.crop, options)

    in_place = dst.image.copy()
    boxes = [paste_face(in_place, matrix, as_face(src.crop), dst.hull * src.hull, dst.crop, options) for matrix in matrices]

    np.testing.assert_array_equal(in_place, chained)
    changed = np.any(in_place != dst.image, axis=2)
    inside = np.zeros_like(changed)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
    assert changed.sum() > 1000 and not np.any(changed & ~inside), "only the faces' boxes are written"
    assert boxes[0][0] < boxes[1][0] < boxes[0][2], "the two boxes overlap"
    zeros = np.zeros((CROP_SIDE, CROP_SIDE), dtype=np.float32)
    assert paste_face(in_place, dst.matrix, as_face(src.crop), zeros, dst.crop, options) is None


def test_prediction_at_model_resolution_is_scaled_to_the_crop(dst: AlignedFace) -> None:
    resolution = 64
    predicted = as_face(cv2.resize(dst.crop, (resolution, resolution), interpolation=cv2.INTER_AREA))
    small_hull = cv2.resize(dst.hull, (resolution, resolution), interpolation=cv2.INTER_AREA)[..., None]

    result = paste(dst, predicted, small_hull, color_transfer="none", erode=4, blur=16)

    difference = np.abs(result.astype(np.int16) - dst.image).max(axis=2)
    assert np.all(difference[~frame_face_region(dst, grow=16)] == 0)
    # Blurrier than the frame (upscaled from 64 px) but in the right place: small mean change.
    assert difference[frame_face_region(dst, grow=0)].mean() < 12.0


def inner_face(dst: AlignedFace) -> np.ndarray:
    """(H, W) bool: the dst face's hull shrunk by 12 px, well inside any feather."""
    return cv2.erode(hull_mask(dst.landmarks, dst.image.shape[:2]), np.ones((25, 25), np.uint8)) > 0


def test_other_face_is_pasted_and_recoloured_to_the_frame(dst: AlignedFace, src: AlignedFace) -> None:
    inner = inner_face(dst)
    original_colour = lab_mean(dst.image[inner])

    pasted = {kind: paste(dst, as_face(src.crop), dst.hull * src.hull, color_transfer=kind, erode=8, blur=24)
              for kind in ("none", "rct")}

    outside = ~frame_face_region(dst, grow=24)
    for result in pasted.values():
        np.testing.assert_array_equal(result[outside], dst.image[outside])
        assert np.abs(result[inner].astype(np.int16) - dst.image[inner]).mean() > 10.0
    raw_error = np.abs(lab_mean(pasted["none"][inner]) - original_colour).sum()
    recoloured_error = np.abs(lab_mean(pasted["rct"][inner]) - original_colour).sum()
    assert recoloured_error < 0.5 * raw_error


@pytest.mark.parametrize("mode", BLEND_MODE_CHOICES)
def test_every_blend_mode_pastes_a_face_into_a_valid_frame(dst: AlignedFace, src: AlignedFace, mode: str) -> None:
    result = paste(dst, as_face(src.crop), dst.hull * src.hull, blend_mode=mode, color_transfer="rct", blur=24,
                   sharpen_mode="gaussian", sharpen_amount=50)

    assert result.shape == dst.image.shape and result.dtype == np.uint8
    inner = inner_face(dst)
    assert np.abs(result[inner].astype(np.int16) - dst.image[inner]).mean() > 5.0, "the face was replaced"
    # Everything beyond the crop's square (raw_rgb pastes all of it) stays as it was.
    crop_corners = cv2.transform(np.array([[[0, 0], [CROP_SIDE, 0], [CROP_SIDE, CROP_SIDE], [0, CROP_SIDE]]], np.float64),
                                 cv2.invertAffineTransform(dst.matrix))
    square = np.zeros(dst.image.shape[:2], np.uint8)
    cv2.fillConvexPoly(square, np.round(crop_corners[0]).astype(np.int32), 1)
    beyond = cv2.dilate(square, np.ones((5, 5), np.uint8)) == 0
    np.testing.assert_array_equal(result[beyond], dst.image[beyond])


def boundary_band(dst: AlignedFace, mask: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) bool: frame pixels where the crop mask, warped into the frame, lies in (low, high)."""
    height, width = dst.image.shape[:2]
    frame_mask = cv2.warpAffine(mask, dst.matrix, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return (frame_mask > low) & (frame_mask < high)


def test_seamless_changes_the_face_edge_less_than_overlay(dst: AlignedFace, src: AlignedFace) -> None:
    # Without colour transfer the other person's skin differs from the frame: overlay shows it at the edge,
    # Poisson blending takes the frame's own colours there.
    mask = dst.hull * src.hull
    results = {mode: paste(dst, as_face(src.crop), mask, blend_mode=mode, color_transfer="none", erode=0, blur=8)
               for mode in ("overlay", "seamless")}

    edge = boundary_band(dst, refine_mask(mask, 0, 8), 0.1, 0.6)
    edge_change = {mode: np.abs(result[edge].astype(np.int16) - dst.image[edge]).mean() for mode, result in results.items()}
    assert edge_change["seamless"] < 0.5 * edge_change["overlay"], edge_change
    inner = inner_face(dst)
    assert np.abs(results["seamless"][inner].astype(np.int16) - dst.image[inner]).mean() > 5.0, "still the other face"


def test_histogram_match_gives_the_face_the_crop_s_tones(dst: AlignedFace, src: AlignedFace) -> None:
    mask = refine_mask(dst.hull * src.hull, 8, 0)
    matched = match_histograms(as_face(src.crop), dst.crop, mask)

    inside = mask > 0.5
    for channel in range(3):
        target = np.percentile(dst.crop[..., channel][inside] / 255.0, [10, 50, 90])
        before = np.percentile(src.crop[..., channel][inside] / 255.0, [10, 50, 90])
        after = np.percentile(matched[..., channel][inside], [10, 50, 90])
        assert np.abs(after - target).max() < 0.02
        assert np.abs(after - target).sum() < 0.3 * np.abs(before - target).sum()
    squeezed = match_histograms(as_face(src.crop), dst.crop, mask, threshold=200)
    assert squeezed[inside].mean() < matched[inside].mean(), "a lower threshold keeps the face darker"


@pytest.mark.parametrize("mode", ["box", "gaussian"])
def test_sharpening_adds_detail_in_proportion_to_the_amount(src: AlignedFace, mode: str) -> None:
    face = as_face(src.crop)

    def detail(image: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_32F).var())

    assert sharpen_face(face, mode, 0) is face  # type: ignore[arg-type]
    assert detail(face) < detail(sharpen_face(face, mode, 50)) < detail(sharpen_face(face, mode, 100))  # type: ignore[arg-type]
    with pytest.raises(BlendError, match="0..100"):
        sharpen_face(face, mode, 150)  # type: ignore[arg-type]
    with pytest.raises(BlendError, match="'laplace'.*gaussian"):
        sharpen_face(face, "laplace", 50)  # type: ignore[arg-type]


@pytest.mark.parametrize("angle, streak_axis", [(0.0, 1), (90.0, 0), (180.0, 1)])
def test_motion_blur_streaks_along_the_motion(angle: float, streak_axis: int) -> None:
    image = np.zeros((41, 41, 3), np.float32)
    image[20, 20] = 1.0
    blurred = blur_along_motion(image, MotionBlur(length=9, angle=angle))[..., 0]

    assert blurred.sum() == pytest.approx(1.0, abs=1e-4)
    lit = np.argwhere(blurred > 0.02)
    spread = np.ptp(lit, axis=0)
    assert spread[streak_axis] >= 6 and spread[1 - streak_axis] <= 1
    diagonal = blur_along_motion(image, MotionBlur(length=9, angle=45.0))[..., 0]
    assert diagonal[23, 23] > 0.02 and diagonal[17, 23] < 0.01, "45 degrees runs towards +x and +y (down-right)"


def test_motion_blur_is_applied_before_pasting(dst: AlignedFace, src: AlignedFace) -> None:
    still = paste(dst, as_face(src.crop), dst.hull * src.hull)
    moving = paste(dst, as_face(src.crop), dst.hull * src.hull, motion=MotionBlur(15, 0.0))
    inner = inner_face(dst)[:, 1:]

    horizontal_detail = [float(np.abs(np.diff(image.astype(np.float32), axis=1))[inner].mean()) for image in (still, moving)]
    assert horizontal_detail[1] < 0.8 * horizontal_detail[0], "a horizontal streak smooths horizontal detail"


def test_unmasked_colour_statistics_differ_from_masked(dst: AlignedFace, src: AlignedFace) -> None:
    masked = paste(dst, as_face(src.crop), dst.hull * src.hull, color_transfer="mkl", color_masked=True)
    whole_crop = paste(dst, as_face(src.crop), dst.hull * src.hull, color_transfer="mkl", color_masked=False)
    inner = inner_face(dst)
    assert np.abs(masked[inner].astype(np.int16) - whole_crop[inner]).mean() > 1.0


def test_empty_mask_leaves_the_frame_untouched(dst: AlignedFace) -> None:
    zeros = np.zeros((CROP_SIDE, CROP_SIDE), dtype=np.float32)
    result = paste(dst, as_face(dst.crop), zeros, blur=8)
    assert result is not dst.image
    np.testing.assert_array_equal(result, dst.image)


def test_face_partly_outside_the_frame(dst: AlignedFace) -> None:
    # Shift the frame->crop transform so the face sits across the frame's left edge.
    face_left = dst.landmarks[:, 0].min()
    shift = np.array([[1.0, 0.0, face_left + 60.0], [0.0, 1.0, 0.0]])
    matrix = dst.matrix @ np.vstack([shift, [0.0, 0.0, 1.0]])  # frame pixel -> shifted -> crop
    ones = np.ones((CROP_SIDE, CROP_SIDE), dtype=np.float32)

    for mode in ("overlay", "seamless"):
        result = paste(dst, as_face(dst.crop), ones * dst.hull, matrix=matrix, blend_mode=mode)
        changed_columns = np.flatnonzero(np.any(result != dst.image, axis=(0, 2)))
        assert changed_columns.size > 0 and changed_columns.min() == 0
        assert changed_columns.max() < 400


def test_blend_registry_matches_choices() -> None:
    assert set(BLEND_MODES) == set(BLEND_MODE_CHOICES)
    assert {"overlay", "hist_match", "seamless", "seamless_hist_match", "raw_rgb", "raw_predict"} <= set(BLEND_MODE_CHOICES)


def test_bad_inputs_are_named(dst: AlignedFace) -> None:
    face = as_face(dst.crop)
    with pytest.raises(CompositeError, match="frame must be uint8"):
        composite_face(dst.image.astype(np.float32), dst.matrix, face, dst.hull, dst.crop)
    with pytest.raises(CompositeError, match="matrix must be an invertible"):
        composite_face(dst.image, np.zeros((2, 3)), face, dst.hull, dst.crop)
    with pytest.raises(CompositeError, match=r"predicted_face .* mask .* square"):
        composite_face(dst.image, dst.matrix, face, dst.hull[:100], dst.crop)
    with pytest.raises(CompositeError, match="crop_face must be a square"):
        composite_face(dst.image, dst.matrix, face, dst.hull, dst.crop[:100])
    with pytest.raises(BlendError, match="'poisson'.*overlay"):
        paste(dst, face, dst.hull, blend_mode="poisson")
    with pytest.raises(ColorTransferError, match="'sepia'"):
        paste(dst, face, dst.hull, color_transfer="sepia")
