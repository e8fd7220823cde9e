"""Per-face sort scores computed once at extraction and stored in the faces table."""

from __future__ import annotations

import cv2
import numpy as np


def central_region(crop: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """The middle ``fraction`` of an aligned crop: the face itself, little background."""
    height, width = crop.shape[:2]
    top, left = int(height * (1 - fraction) / 2), int(width * (1 - fraction) / 2)
    return crop[top : height - top, left : width - left]


def blur_score(crop: np.ndarray) -> float:
    """Variance of the Laplacian over the face centre, at a fixed 128 px scale; higher = sharper."""
    gray = cv2.cvtColor(central_region(crop), cv2.COLOR_BGR2GRAY)
    gray = cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


def score_crop(crop: np.ndarray) -> dict[str, float]:
    """Blur, brightness (mean HSV value, 0..255) and circular mean hue (degrees) of an aligned crop."""
    centre = central_region(crop)
    hsv = cv2.cvtColor(centre, cv2.COLOR_BGR2HSV)
    angles = hsv[..., 0].astype(np.float32) * (2 * np.pi / 180)  # OpenCV hue is 0..179
    hue = float(np.degrees(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360)
    return {"blur": blur_score(crop), "brightness": float(hsv[..., 2].mean()), "hue": hue}
