"""tasks/images.py: odd image modes, odd paths and media listing, from real photos."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from PIL import Image

from tasks.images import IMAGE_SUFFIXES, ImageError, list_media, read_image
from tasks.video import VIDEO_SUFFIXES

PHOTO = "photos/identities/barack_obama/obama_small.jpg"


@pytest.fixture(scope="module")
def reference(media_dir) -> np.ndarray:
    return read_image(media_dir / PHOTO)


@pytest.fixture(scope="module")
def photo(media_dir) -> Image.Image:
    with Image.open(media_dir / PHOTO) as image:
        return image.convert("RGB")


def as_gray_bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def mean_difference(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first.astype(int) - second.astype(int)).mean())


def test_reads_a_jpeg_as_bgr(reference, photo):
    assert reference.shape == (240, 320, 3) and reference.dtype == np.uint8
    assert np.array_equal(reference, np.asarray(photo)[:, :, ::-1])


def test_grayscale_becomes_three_equal_channels(reference, photo, tmp_path):
    photo.convert("L").save(tmp_path / "gray.png")
    image = read_image(tmp_path / "gray.png")
    assert image.shape == reference.shape
    assert np.array_equal(image[:, :, 0], image[:, :, 2])
    assert mean_difference(image, as_gray_bgr(reference)) < 1


def test_sixteen_bit_grayscale_is_scaled_not_clipped(reference, tmp_path):
    gray16 = cv2.cvtColor(reference, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "deep.png"), gray16)
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8
    assert mean_difference(image, as_gray_bgr(reference)) < 1


def test_alpha_is_composited_onto_black(reference, photo, tmp_path):
    rgba = photo.convert("RGBA")
    alpha = np.full(reference.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "cutout.png")
    image = read_image(tmp_path / "cutout.png")
    assert image.shape == reference.shape
    assert not image[:, :100].any()
    assert np.array_equal(image[:, 100:], reference[:, 100:])


def test_cmyk_jpeg_keeps_its_colours(reference, photo, tmp_path):
    photo.convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    image = read_image(tmp_path / "print.jpg")
    assert image.shape == reference.shape
    assert mean_difference(image, reference) < 3
    assert mean_difference(image, reference[:, :, ::-1]) > 10  # channel order really is BGR


def test_unicode_and_spaces_in_path(media_dir, reference, tmp_path):
    folder = tmp_path / "Gesichter für Ära 顔 folder"
    folder.mkdir()
    path = folder / "Ōbama – photo 1 ✓.jpg"
    path.write_bytes((media_dir / PHOTO).read_bytes())
    assert np.array_equal(read_image(path), reference)


def test_exif_orientation_is_applied(photo, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display by turning 90 degrees clockwise
    photo.save(tmp_path / "sideways.jpg", quality=95, exif=exif)
    stored = cv2.imread(str(tmp_path / "sideways.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    image = read_image(tmp_path / "sideways.jpg")
    assert image.shape == (320, 240, 3)
    assert mean_difference(image, cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE)) < 1
    assert mean_difference(image, cv2.rotate(stored, cv2.ROTATE_90_COUNTERCLOCKWISE)) > 10


@pytest.mark.parametrize("name, content", [
    ("empty.jpg", b""),
    ("notes.png", b"not an image at all\n"),
])
def test_unreadable_files_raise_naming_the_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError, match=name):
        read_image(tmp_path / name)


def test_truncated_and_missing_images_raise(media_dir, tmp_path):
    data = (media_dir / PHOTO).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match="absent.jpg"):
        read_image(tmp_path / "absent.jpg")


def test_list_media_finds_every_file_of_the_manifest(media_dir):
    with open(media_dir / "MANIFEST.csv", newline="") as manifest:
        rows = list(csv.DictReader(manifest))
    expected_videos = sorted(media_dir / row["file"] for row in rows if row["kind"] == "video")
    expected_images = sorted(media_dir / row["file"] for row in rows if row["kind"] == "photo")
    videos, images = list_media(media_dir)
    assert videos == expected_videos
    assert images == expected_images
    assert all(path.suffix.lower() in VIDEO_SUFFIXES for path in videos)
    assert all(path.suffix.lower() in IMAGE_SUFFIXES for path in images)


def test_list_media_skips_hidden_and_other_files(tmp_path):
    for name in ["b/clip.MOV", "a/z.JPG", "a/deeper/y.webp", "x.mkv", ".hidden.jpg", ".cache/frame.png",
                 "notes.txt", "a/.DS_Store"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    videos, images = list_media(tmp_path)
    assert videos == [tmp_path / "b/clip.MOV", tmp_path / "x.mkv"]
    assert images == [tmp_path / "a/deeper/y.webp", tmp_path / "a/z.JPG"]
    with pytest.raises(ImageError, match="nowhere"):
        list_media(tmp_path / "nowhere")
