"""Contact sheets: a grid of face thumbnails in a given order, each labelled, for a person to review.

A sheet reads left to right, top to bottom. Each tile has a dark band under it with its label
(one or more lines, e.g. rank and score, then where the face came from); a title band sits on top.
Long orders are split into pages so a single PNG stays viewable.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from tasks.augment import resize_square

logger = logging.getLogger(__name__)

TILES_PER_PAGE = 200
FONT = cv2.FONT_HERSHEY_SIMPLEX
BAND_COLOUR = (32, 32, 32)
TEXT_COLOUR = (235, 235, 235)
TITLE_COLOUR = (255, 255, 255)
MIN_FONT_SCALE = 0.3


def fit_text(text: str, width: int, scale: float) -> tuple[str, float]:
    """Shrink the font (down to MIN_FONT_SCALE), then cut the text, until it fits ``width`` pixels."""
    while scale > MIN_FONT_SCALE and cv2.getTextSize(text, FONT, scale, 1)[0][0] > width:
        scale = max(MIN_FONT_SCALE, scale - 0.05)
    while len(text) > 1 and cv2.getTextSize(text, FONT, scale, 1)[0][0] > width:
        text = text[:-2] + "~"  # "~" marks a cut: cv2's fonts have no ellipsis
    return text, scale


def line_height(tile: int) -> int:
    return max(12, tile // 9)


def draw_lines(canvas: np.ndarray, lines: Sequence[str], origin: tuple[int, int], width: int, height: int, colour) -> None:
    """Draw text lines, each fitted to ``width``, from the top-left ``origin`` in rows of ``height`` px."""
    left, top = origin
    for index, line in enumerate(lines):
        text, scale = fit_text(line, width - 4, height / 30)
        baseline = top + (index + 1) * height - max(2, height // 5)
        cv2.putText(canvas, text, (left + 2, baseline), FONT, scale, colour, 1, cv2.LINE_AA)


def render_contact_sheet(images: Sequence[np.ndarray], labels: Sequence[str], columns: int = 8, tile: int = 128,
                         title: str | None = None) -> np.ndarray:
    """Lay images out in a labelled grid.

    Args:
        images: (H, W, 3) uint8 BGR images (or (H, W) gray), in reading order; each is resized to
            tile x tile.
        labels: One per image; "\\n" separates lines. Each line is shrunk or cut to fit the tile.
        columns: Tiles per row (fewer when there are fewer images).
        tile: Side of a tile in pixels.
        title: Text of a band across the top; None for no band.

    Returns:
        (title band + rows * (tile + label band), min(columns, len(images)) * tile, 3) uint8 BGR.

    Raises:
        ValueError: no images, or images and labels of different lengths.
    """
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; give one label per image")
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    lines_per_label = max(len(label.split("\n")) for label in labels)
    text_height = line_height(tile)
    band = lines_per_label * text_height + 4
    title_band = 2 * text_height + 8 if title else 0
    width = columns * tile
    sheet = np.full((title_band + rows * (tile + band), width, 3), BAND_COLOUR, dtype=np.uint8)
    if title:
        draw_lines(sheet, [title], (4, 4), width - 8, 2 * text_height, TITLE_COLOUR)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        row, column = divmod(index, columns)
        top, left = title_band + row * (tile + band), column * tile
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        sheet[top : top + tile, left : left + tile] = resize_square(image, tile)
        draw_lines(sheet, label.split("\n"), (left, top + tile + 2), tile, text_height, TEXT_COLOUR)
    return sheet


def page_path(path: Path, number: int) -> Path:
    return path.with_name(f"{path.stem}_{number:03d}{path.suffix}")


def remove_stale_pages(path: Path, keep: int) -> None:
    """Delete pages of an earlier, longer sheet at ``path`` (numbers above ``keep``)."""
    pattern = re.compile(rf"{re.escape(path.stem)}_(\d{{3}}){re.escape(path.suffix)}")
    for candidate in path.parent.glob(f"{path.stem}_*{path.suffix}"):
        match = pattern.fullmatch(candidate.name)
        if match and int(match.group(1)) > keep:
            candidate.unlink()


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a PNG through a temporary file beside it, so a reader never sees half a file."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"PNG encoding of {path} failed")
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data.tobytes())
    os.replace(temporary, path)


def save_contact_sheet(path: Path, images: Sequence[np.ndarray], labels: Sequence[str], columns: int = 8,
                       tile: int = 128, title: str | None = None, tiles_per_page: int = TILES_PER_PAGE) -> list[Path]:
    """Render and write a contact sheet, split into pages when it is long.

    Up to ``tiles_per_page`` images go to ``path`` itself; more are written as numbered pages beside
    it (sort-yaw.png -> sort-yaw_001.png, sort-yaw_002.png, ...), each titled with its page number.
    Pages or a single sheet left from an earlier, different-length run at the same path are removed.

    Returns:
        The files written, in order.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(images) <= tiles_per_page:
        remove_stale_pages(path, keep=0)
        write_png(path, render_contact_sheet(images, labels, columns, tile, title))
        logger.info("wrote contact sheet %s (%d faces)", path, len(images))
        return [path]
    pages = math.ceil(len(images) / tiles_per_page)
    written = []
    for number in range(1, pages + 1):
        start = (number - 1) * tiles_per_page
        page_title = f"{title or path.stem}  (page {number}/{pages})"
        chunk = slice(start, start + tiles_per_page)
        target = page_path(path, number)
        write_png(target, render_contact_sheet(images[chunk], labels[chunk], columns, tile, page_title))
        written.append(target)
    remove_stale_pages(path, keep=pages)
    path.unlink(missing_ok=True)
    logger.info("wrote %d contact sheet pages %s .. %s (%d faces)", pages, written[0], written[-1], len(images))
    return written
