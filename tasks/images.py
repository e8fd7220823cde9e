"""Reading still images into the project's image convention, and finding media in a folder.

Every image comes out as numpy uint8 HWC BGR, upright (EXIF orientation applied), whatever its
mode on disk: grayscale, palette, alpha, CMYK or 16-bit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.video import VIDEO_SUFFIXES

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# PIL modes of 16-bit grayscale samples (0..65535)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


class ImageError(Exception):
    """An image cannot be read; the message names the file and what to do."""


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an (H, W, 3) uint8 RGB array."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        gray = np.asarray(image, dtype=np.float64)
        # 32-bit "I"/"F" images usually hold 16-bit data; only a 0..255 range is taken as 8-bit
        top = 65535.0 if image.mode in _SIXTEEN_BIT_MODES or gray.max() > 255 else 255.0
        gray = np.clip(np.rint(gray * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        # transparent areas become black, like the masked-out background elsewhere in the pipeline
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def read_image(path: Path) -> np.ndarray:
    """Read an image file as an upright BGR uint8 array.

    Args:
        path: the image file; any characters in the path are fine.

    Returns:
        (H, W, 3) uint8 BGR array, EXIF orientation applied; alpha composited onto black.

    Raises:
        ImageError: the file is missing, empty, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file; check the path")
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            rgb = _to_rgb_array(upright)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: cannot read image ({error}); re-save it as PNG or JPEG or remove it") from error
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _is_hidden(path: Path, folder: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def list_media(folder: Path) -> tuple[list[Path], list[Path]]:
    """Find the videos and images under a folder, recursively.

    Args:
        folder: the folder to search; files or folders whose names start with "." are skipped.

    Returns:
        (videos, images), each sorted by path; kinds are told apart by suffix, case-insensitively.

    Raises:
        ImageError: `folder` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: media folder not found; create it and put videos or images in it")
    videos, images = [], []
    for path in folder.rglob("*"):
        if not path.is_file() or _is_hidden(path, folder):
            continue
        suffix = path.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            videos.append(path)
        elif suffix in IMAGE_SUFFIXES:
            images.append(path)
    logger.debug("found %d videos and %d images in %s", len(videos), len(images), folder)
    return sorted(videos), sorted(images)
