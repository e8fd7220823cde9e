import cv2
import numpy as np

from tasks.images import read_image
from tasks.scores import blur_score, score_crop


def test_blur_score_drops_when_blurred(media_dir):
    image = read_image(media_dir / "photos" / "tight_crops" / "penny1.png")
    sharp = blur_score(image)
    blurred = blur_score(cv2.GaussianBlur(image, (0, 0), 3))
    assert blurred < sharp / 3


def test_brightness_and_hue():
    dark = np.full((64, 64, 3), 20, np.uint8)
    light = np.full((64, 64, 3), 220, np.uint8)
    assert score_crop(dark)["brightness"] < score_crop(light)["brightness"]
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 2] = 255
    blue = np.zeros((64, 64, 3), np.uint8)
    blue[..., 0] = 255
    assert abs(score_crop(red)["hue"] - 0) < 2 or abs(score_crop(red)["hue"] - 360) < 2
    assert abs(score_crop(blue)["hue"] - 240) < 2
