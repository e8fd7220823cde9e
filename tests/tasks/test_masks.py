"""Hull masks from real faces' landmarks, and mask erosion/feathering."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest

from tasks.masks import FOREHEAD_LIFT, MaskError, hull_mask, refine_mask

PHOTOS = ["barack_obama/obama_small.jpg", "eric_clapton/clapton-2.jpg", "jennifer_aniston/img12.jpg"]


@pytest.fixture(scope="module")
def find_landmarks():
    """A function image -> (68, 2) landmarks of its first face (dlib HOG + 68-point predictor)."""
    package = importlib.util.find_spec("face_recognition_models")
    assert package is not None and package.submodule_search_locations, "face_recognition_models is not installed"
    model_path = Path(package.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    predictor = dlib.shape_predictor(str(model_path))
    detector = dlib.get_frontal_face_detector()

    def find(image: np.ndarray) -> np.ndarray:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        faces = detector(rgb, 0)
        assert len(faces) >= 1, "no face found in a photo that has one"
        shape = predictor(rgb, faces[0])
        return np.array([[point.x, point.y] for point in shape.parts()], dtype=np.float64)

    return find


def read_photo(media_dir: Path, name: str) -> np.ndarray:
    image = cv2.imread(str(media_dir / "photos" / "identities" / name))
    assert image is not None, f"could not read photo {name}"
    return image


@pytest.fixture(scope="module")
def obama(media_dir: Path, find_landmarks) -> tuple[np.ndarray, np.ndarray]:
    image = read_photo(media_dir, "barack_obama/obama_small.jpg")
    return image, find_landmarks(image)


@pytest.mark.parametrize("name", PHOTOS)
def test_hull_covers_every_landmark(media_dir: Path, find_landmarks, name: str) -> None:
    image = read_photo(media_dir, name)
    landmarks = find_landmarks(image)

    mask = hull_mask(landmarks, image.shape[:2])

    assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    columns = np.clip(np.round(landmarks[:, 0]).astype(int), 0, image.shape[1] - 1)
    rows = np.clip(np.round(landmarks[:, 1]).astype(int), 0, image.shape[0] - 1)
    assert np.all(mask[rows, columns] == 255)
    # A whole face, not the frame: a few times the landmarks' own hull, far less than the photo.
    landmark_hull_area = cv2.contourArea(cv2.convexHull(landmarks.astype(np.float32)))
    assert landmark_hull_area * 1.05 < np.count_nonzero(mask) < landmark_hull_area * 1.6
    assert np.count_nonzero(mask) < 0.5 * mask.size


def test_hull_reaches_over_the_forehead_but_not_past_it(obama) -> None:
    image, landmarks = obama
    mask = hull_mask(landmarks, image.shape[:2])
    brow_centre = landmarks[17:27].mean(axis=0)
    up = brow_centre - landmarks[8]  # chin -> brows, as long as the lower face

    def covered(point: np.ndarray) -> bool:
        return mask[int(round(point[1])), int(round(point[0]))] == 255

    assert covered(brow_centre + 0.5 * FOREHEAD_LIFT * up)
    assert not covered(brow_centre + 1.5 * FOREHEAD_LIFT * up)
    assert not covered(landmarks[8] - 0.1 * up)  # below the chin


def test_hull_follows_a_rolled_face(obama) -> None:
    image, landmarks = obama
    height, width = image.shape[:2]
    # Rotating the photo 90 degrees clockwise maps pixel (x, y) to (height - 1 - y, x).
    rotated_landmarks = np.stack([height - 1 - landmarks[:, 1], landmarks[:, 0]], axis=1)

    rotated_mask = hull_mask(rotated_landmarks, (width, height))
    expected = cv2.rotate(hull_mask(landmarks, (height, width)), cv2.ROTATE_90_CLOCKWISE)

    overlap = np.count_nonzero(rotated_mask & expected) / np.count_nonzero(rotated_mask | expected)
    assert overlap > 0.97


def test_hull_size_is_height_then_width(obama) -> None:
    _, landmarks = obama
    assert hull_mask(landmarks, (240, 320)).shape == (240, 320)
    assert hull_mask(landmarks, 300).shape == (300, 300)


def test_hull_rejects_unusable_landmarks(obama) -> None:
    _, landmarks = obama
    with pytest.raises(MaskError, match=r"\(68, 2\).*\(5, 2\)"):
        hull_mask(landmarks[:5], 100)
    broken = landmarks.copy()
    broken[3] = np.nan
    with pytest.raises(MaskError, match="NaN"):
        hull_mask(broken, 100)
    with pytest.raises(MaskError, match="positive"):
        hull_mask(landmarks, (0, 100))


def test_erode_shrinks_by_the_given_pixels_and_negative_grows(obama) -> None:
    image, landmarks = obama
    mask = hull_mask(landmarks, image.shape[:2])
    inside_distance = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    outside_distance = cv2.distanceTransform(255 - mask, cv2.DIST_L2, 5)

    eroded = refine_mask(mask, erode=6, blur=0)
    dilated = refine_mask(mask, erode=-6, blur=0)

    assert eroded.dtype == np.float32 and eroded.shape == mask.shape
    assert np.count_nonzero(eroded) < np.count_nonzero(mask) < np.count_nonzero(dilated)
    assert np.all(eroded[inside_distance > 8] == 1.0) and np.all(eroded[inside_distance < 5] == 0.0)
    assert np.all(dilated[outside_distance < 5] == 1.0) and np.all(dilated[outside_distance > 8] == 0.0)


def test_blur_softens_edges_over_the_feather_width() -> None:
    step = np.zeros((200, 200), dtype=np.float32)
    step[:, 100:] = 1.0

    hard = refine_mask(step, erode=0, blur=0)
    soft = refine_mask(step, erode=0, blur=20)

    assert set(np.unique(hard)) == {0.0, 1.0}
    ramp = soft[100, 50:150]  # across the step, away from the crop border
    soft_pixels = np.count_nonzero((ramp > 0.05) & (ramp < 0.95))
    assert 14 <= soft_pixels <= 24  # about the 20 px asked for
    assert abs(ramp[50] - 0.5) < 0.1  # centred on the original edge


def test_border_never_stays_hard() -> None:
    full = np.full((128, 128, 1), 255, dtype=np.uint8)
    for blur in (0, 8, 32):
        refined = refine_mask(full, erode=0, blur=blur)
        border = np.concatenate([refined[0], refined[-1], refined[:, 0], refined[:, -1]])
        assert border.max() < 0.1, f"blur {blur} leaves the crop border at {border.max():.2f}"
        assert refined[64, 64] > 0.99


def test_refine_clamps_oversized_values_and_rejects_bad_input() -> None:
    mask = np.ones((32, 32), dtype=np.float32)
    assert refine_mask(mask, erode=1000, blur=0).max() == 0.0
    assert refine_mask(mask, erode=0, blur=1000).shape == (32, 32)
    with pytest.raises(MaskError, match="cannot be negative"):
        refine_mask(mask, erode=0, blur=-1)
    with pytest.raises(MaskError, match=r"\(H, W\).*\(32, 32, 3\)"):
        refine_mask(np.ones((32, 32, 3), dtype=np.float32), erode=0, blur=0)
