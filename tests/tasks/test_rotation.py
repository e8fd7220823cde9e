"""tasks/rotation.py on the same face photographed upright, sideways and upside down."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tasks.align import compute_alignment, transform_points, warp_to_crop
from tasks.analyzers import create_analyzer
from tasks.images import read_image
from tasks.rotation import (
    RotationRetryAnalyzer,
    detect_turned,
    detect_with_rotation,
    detect_with_turn,
    rotate_image,
    turn_matrix,
)

TURNED = {0: "photos/misc/r0.jpg", 90: "photos/misc/r90.jpg", 180: "photos/misc/r180.jpg", 270: "photos/misc/r270.jpg"}
CROP = 128


@pytest.fixture(scope="module")
def analyzer():
    return create_analyzer("dlib")


@pytest.fixture(scope="module")
def turned_faces(analyzer, media_dir):
    """turn -> (image, its one face found with rotation retry, the clockwise turn that found it)."""
    found = {}
    for turn, name in TURNED.items():
        image = read_image(media_dir / name)
        faces, used = detect_with_turn(analyzer, image)
        assert len(faces) == 1, f"{name}: expected one face, found {len(faces)}"
        found[turn] = (image, faces[0], used)
    return found


def aligned_crop(image, face):
    matrix = compute_alignment(face.landmarks, "whole_face", CROP)
    return warp_to_crop(image, matrix, CROP), transform_points(face.landmarks, matrix)


def test_turn_matrix_matches_the_pixels_cv2_moves():
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    points = np.array([[0, 0], [6, 0], [2, 3], [6, 4]], dtype=np.float64)
    for turn in (0, 90, 180, 270):
        turned = rotate_image(image, turn)
        moved = transform_points(points, turn_matrix(turn, 7, 5)).round().astype(int)
        for (x, y), (u, v) in zip(points.astype(int), moved):
            assert np.array_equal(image[y, x], turned[v, u])
    with pytest.raises(ValueError, match="45"):
        rotate_image(image, 45)


def test_upright_photos_need_no_retry_and_sideways_ones_are_found(analyzer, media_dir, turned_faces):
    upright = read_image(media_dir / TURNED[0])
    assert analyzer.detect(read_image(media_dir / TURNED[90])) == [], "the plain detector misses the turned face"
    assert turned_faces[0][2] == 0
    # r90 is r0 turned clockwise: turning it a further 270 degrees makes it upright again
    assert {turn: turned_faces[turn][2] for turn in (90, 180, 270)} == {90: 270, 180: 180, 270: 90}
    assert detect_with_rotation(analyzer, upright)[0].bbox == turned_faces[0][1].bbox


def test_faces_map_back_exactly_to_the_given_image(analyzer, turned_faces):
    image, face, _ = turned_faces[0]
    height, width = image.shape[:2]
    for turn in (90, 180, 270):
        turned = rotate_image(image, turn)
        (mapped,) = detect_with_rotation(analyzer, turned)
        # detection on `turned` turned back is detection on `image` itself: same pixels, same landmarks
        expected = transform_points(face.landmarks, turn_matrix(turn, width, height))
        np.testing.assert_allclose(mapped.landmarks, expected, atol=1e-3)
        x0, y0, x1, y1 = mapped.bbox
        assert (x1 - x0, y1 - y0) == pytest.approx(
            (face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1])[:: 1 if turn == 180 else -1])
        inner = mapped.landmarks[17:]
        assert np.all((inner >= [x0, y0]) & (inner <= [x1, y1]))


def test_aligned_crops_of_every_turn_are_upright_and_alike(analyzer, turned_faces):
    crops = {}
    for turn, (image, face, _) in turned_faces.items():
        crop, points = aligned_crop(image, face)
        eyes_y = points[36:48, 1].mean()
        mouth_y = points[48:68, 1].mean()
        assert eyes_y < mouth_y - 0.15 * CROP, f"r{turn}: crop not upright"
        assert abs(points[36:42, 1].mean() - points[42:48, 1].mean()) < 0.03 * CROP, "eyes level"
        crops[turn] = crop.astype(np.float32)
        cv2.imwrite(f"/tmp/faceflow_rotation_r{turn}.png", crop)
    for turn in (90, 180, 270):
        difference = np.abs(crops[turn] - crops[0]).mean()
        assert difference < 12, f"r{turn}: mean abs difference {difference:.1f} from the upright crop"
    # a crop that was not turned back would differ a lot: the test can tell
    assert np.abs(np.rot90(crops[0]) - crops[0]).mean() > 25


def test_identity_is_the_same_for_every_turn(analyzer, turned_faces):
    descriptors = {turn: analyzer.embed(image, face) for turn, (image, face, _) in turned_faces.items()}
    for turn in (90, 180, 270):
        assert np.linalg.norm(descriptors[turn] - descriptors[0]) < 0.4


def test_no_face_at_any_turn_gives_nothing(analyzer, media_dir):
    assert detect_with_rotation(analyzer, read_image(media_dir / "photos/misc/dogs.jpg")) == []


def test_retry_analyzer_remembers_the_turn_that_worked(analyzer, turned_faces):
    class Counting:
        name = "counting"

        def __init__(self):
            self.calls = 0

        def detect(self, image):
            self.calls += 1
            return analyzer.detect(image)

        def embed(self, image, face):
            return analyzer.embed(image, face)

    counting = Counting()
    retrying = RotationRetryAnalyzer(counting)
    sideways, face, _ = turned_faces[90]
    assert retrying.name == "counting"
    assert retrying.detect(sideways)[0].bbox == face.bbox and counting.calls == 4
    assert retrying.last_turn == 270
    counting.calls = 0
    assert retrying.detect(sideways)[0].bbox == face.bbox and counting.calls == 1, "the known turn goes first"
    counting.calls = 0
    upright = turned_faces[0][0]
    assert len(retrying.detect(upright)) == 1 and counting.calls == 2 and retrying.last_turn == 0
    assert detect_turned(analyzer, upright, 0)[0].bbox == turned_faces[0][1].bbox
    with pytest.raises(ValueError, match="45"):
        RotationRetryAnalyzer(analyzer, turns=(45,))
