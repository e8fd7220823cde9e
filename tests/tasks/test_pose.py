"""tasks/pose.py on real photos: frontal, turned, raised, rotated and mirrored faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tasks.detect import DlibAnalyzer
from tasks.images import read_image
from tasks.pose import estimate_pose

FRONTAL = "photos/identities/barack_obama/obama.jpg"
TURNED = "photos/misc/left_face.jpeg"  # nose toward the image's left: the face turned to its own right
RAISED = "photos/misc/rise_face.jpeg"


@pytest.fixture(scope="module")
def analyzer() -> DlibAnalyzer:
    return DlibAnalyzer()


@pytest.fixture(scope="module")
def pose_of(analyzer):
    def measure(image: np.ndarray) -> np.ndarray:
        faces = analyzer.detect(image)
        assert len(faces) == 1
        return np.array(estimate_pose(faces[0].landmarks, image.shape[:2]))
    return measure


def rotate_clockwise(image: np.ndarray, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), -degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


def test_frontal_face_is_near_zero(media_dir, pose_of):
    yaw, pitch, roll = pose_of(read_image(media_dir / FRONTAL))
    assert abs(yaw) < 8 and abs(pitch) < 15 and abs(roll) < 5


def test_turned_face_has_large_yaw_whose_sign_follows_the_nose(media_dir, pose_of):
    image = read_image(media_dir / TURNED)
    yaw, _, _ = pose_of(image)
    mirrored_yaw, _, _ = pose_of(np.ascontiguousarray(image[:, ::-1]))
    assert yaw < -30
    assert mirrored_yaw > 30
    assert mirrored_yaw == pytest.approx(-yaw, abs=5)


def test_raised_head_has_positive_pitch(media_dir, pose_of):
    _, raised_pitch, _ = pose_of(read_image(media_dir / RAISED))
    _, frontal_pitch, _ = pose_of(read_image(media_dir / FRONTAL))
    assert raised_pitch > 15
    assert raised_pitch > frontal_pitch + 5


def test_in_plane_rotation_changes_only_roll(media_dir, pose_of):
    image = read_image(media_dir / FRONTAL)
    yaw, pitch, roll = pose_of(image)
    turned_yaw, turned_pitch, turned_roll = pose_of(rotate_clockwise(image, 20))
    assert turned_roll == pytest.approx(roll + 20, abs=2)
    assert turned_yaw == pytest.approx(yaw, abs=3)
    assert turned_pitch == pytest.approx(pitch, abs=3)


def test_quarter_turned_photo_reads_as_roll_90(media_dir, analyzer):
    # r90.jpg is r0.jpg turned 90 degrees clockwise; the frontal detector needs the upright copy
    upright = read_image(media_dir / "photos/misc/r0.jpg")
    quarter = read_image(media_dir / "photos/misc/r90.jpg")
    landmarks = analyzer.detect(np.ascontiguousarray(np.rot90(quarter, 1)))[0].landmarks
    height = upright.shape[0]
    # a pixel (x, y) of the upright copy sits at (height - 1 - y, x) in the quarter-turned photo
    turned = np.stack([height - 1 - landmarks[:, 1], landmarks[:, 0]], axis=1)
    yaw, pitch, roll = estimate_pose(landmarks, upright.shape[:2])
    turned_yaw, turned_pitch, turned_roll = estimate_pose(turned, quarter.shape[:2])
    assert turned_roll == pytest.approx(roll + 90, abs=0.5)
    assert (turned_yaw, turned_pitch) == pytest.approx((yaw, pitch), abs=1)


def test_rejects_wrong_landmark_shape():
    with pytest.raises(ValueError, match="68, 2"):
        estimate_pose(np.zeros((5, 2)), (640, 480))
