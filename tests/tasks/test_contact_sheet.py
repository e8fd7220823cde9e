"""Contact sheets of real photos: grid geometry, legible label bands, paging."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tasks.contact_sheet import render_contact_sheet, save_contact_sheet
from tasks.images import read_image


@pytest.fixture(scope="module")
def photos(media_dir) -> list[np.ndarray]:
    folder = media_dir / "photos" / "identities" / "barack_obama"
    return [read_image(path) for path in sorted(folder.glob("*.jpg"))]


def test_grid_has_one_tile_per_image_and_a_band_under_each(photos):
    images = photos * 3  # 12 images, 5 columns: 3 rows
    blank = render_contact_sheet(images, [""] * 12, columns=5, tile=64)
    assert blank.dtype == np.uint8 and blank.shape[1] == 5 * 64 and blank.shape[2] == 3
    band = (blank.shape[0] - 3 * 64) // 3
    assert band > 0 and blank.shape[0] == 3 * (64 + band)
    titled = render_contact_sheet(images, [""] * 12, columns=5, tile=64, title="by yaw")
    assert titled.shape[0] > blank.shape[0] and np.array_equal(titled[titled.shape[0] - blank.shape[0]:], blank)
    two_lines = render_contact_sheet(images, ["1: 0.5\nclip f3"] * 12, columns=5, tile=64)
    assert two_lines.shape[0] > blank.shape[0], "two-line labels get a taller band"
    first_tile = cv2.resize(photos[0], (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(blank[:64, :64].astype(int) - first_tile).mean() < 1
    assert render_contact_sheet(photos[:2], ["a", "b"], columns=8, tile=64).shape[1] == 2 * 64


def test_labels_change_only_their_own_band(photos):
    images = photos[:4]
    blank = render_contact_sheet(images, [""] * 4, columns=4, tile=96)
    labelled = render_contact_sheet(images, ["", "42: 0.5", "", ""], columns=4, tile=96)
    changed = np.any(blank != labelled, axis=2)
    rows, columns = np.nonzero(changed)
    assert changed.sum() > 50, "the label is drawn"
    assert rows.min() >= 96 and columns.min() >= 96 and columns.max() < 192, "inside the second tile's band"
    text = labelled[96:, 96:192].max(axis=2)
    assert text.max() > 200 and np.median(blank[96:, 96:192]) < 60, "light text on a dark band"


def test_long_labels_are_fitted_to_the_tile(photos):
    sheet = render_contact_sheet(photos[:2], ["x" * 200, "short"], columns=2, tile=64)
    blank = render_contact_sheet(photos[:2], ["", "short"], columns=2, tile=64)
    changed = np.nonzero(np.any(sheet != blank, axis=2))[1]
    assert changed.size and changed.max() < 64, "a long label stays inside its own tile"


def test_wrong_inputs_are_refused(photos):
    with pytest.raises(ValueError, match="at least one image"):
        render_contact_sheet([], [])
    with pytest.raises(ValueError, match="one label per image"):
        render_contact_sheet(photos[:2], ["a"])


def test_long_orders_are_paged_and_stale_pages_removed(photos, tmp_path):
    path = tmp_path / "review" / "sort-yaw.png"
    images = [photos[index % len(photos)] for index in range(25)]
    labels = [str(index) for index in range(25)]
    written = save_contact_sheet(path, images, labels, columns=5, tile=32, title="yaw", tiles_per_page=10)
    assert [target.name for target in written] == ["sort-yaw_001.png", "sort-yaw_002.png", "sort-yaw_003.png"]
    last = cv2.imread(str(written[-1]))
    assert last is not None and last.shape[1] == 5 * 32
    assert cv2.imread(str(written[0])).shape[0] > last.shape[0], "the last page holds 5 tiles, one row"
    assert not path.exists()

    assert save_contact_sheet(path, images[:8], labels[:8], columns=5, tile=32, tiles_per_page=10) == [path]
    assert cv2.imread(str(path)).shape[1] == 5 * 32
    assert sorted(item.name for item in path.parent.iterdir()) == ["sort-yaw.png"], "old pages and temporaries are gone"
