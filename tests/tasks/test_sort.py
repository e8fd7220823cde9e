"""Sort methods on a real faces table: a talking-head clip plus photos with known oddities."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import get_args

import cv2
import numpy as np
import pyarrow as pa
import pytest

from tasks import sort_images
from tasks.extract import FaceOptions, SideOptions, create_face_analyzer, extract_folder
from tasks.faceset import (
    FACES_SCHEMA,
    FacesetError,
    create_empty_table,
    open_faces,
    write_table,
)
from tasks.pose import YAW_EDGES, pose_bins
from tasks.sort import (
    SORT_DESCRIPTIONS,
    SORT_METHODS,
    SortError,
    SortMethod,
    sort_faces,
)

FACES = FaceOptions(size=96)
SIDE = SideOptions(embeddings=True, fps=3, max_faces=0)
PHOTOS = {
    "obama.jpg": "identities/barack_obama/obama.jpg",
    "biden.jpg": "identities/joe_biden/biden.jpg",
    "blur.jpg": "misc/blur.jpg",
    "two_people.jpg": "misc/two_people.jpg",
    "left_face.jpeg": "misc/left_face.jpeg",
}


@pytest.fixture(scope="module")
def table(tmp_path_factory, media_dir) -> Path:
    """The demo clip at 3 fps, five photos, a motion-smeared copy and a copy cut by a black bar."""
    root = tmp_path_factory.mktemp("sort")
    raw = root / "raw"
    raw.mkdir()
    shutil.copy(media_dir / "demo" / "src_pexels_8136210.mp4", raw / "clip.mp4")
    for name, source in PHOTOS.items():
        shutil.copy(media_dir / "photos" / source, raw / name)
    smear = np.zeros((21, 21), np.float32)
    smear[10, :] = 1 / 21  # horizontal motion of 21 px
    photo = cv2.imread(str(media_dir / "photos" / "identities" / "barack_obama" / "obama2.jpg"))
    cv2.imwrite(str(raw / "obama_motion.png"), cv2.filter2D(photo, -1, smear))
    photo = cv2.imread(str(media_dir / "photos" / "identities" / "barack_obama" / "obama1.jpg"))
    photo[:, 800:] = 0  # a black pillarbox bar over the right part of the face
    cv2.imwrite(str(raw / "obama_cut.png"), photo)
    path = root / "faces.lance"
    analyzer = create_face_analyzer(FACES, SIDE)
    extract_folder(raw, path, FACES, SIDE, root, analyzer)
    return path


@pytest.fixture(scope="module")
def rows(table) -> dict[str, dict]:
    columns = [field.name for field in FACES_SCHEMA if field.name != "image"]
    return {row["face_id"]: row for row in open_faces(table).to_table(columns=columns).to_pylist()}


def ids_from(rows, name: str) -> list[str]:
    return [face_id for face_id, row in rows.items() if Path(row["source_path"]).name == name]


def video_ids(rows) -> set[str]:
    return set(ids_from(rows, "clip.mp4"))


def test_registry_and_descriptions_cover_every_method():
    assert set(SORT_METHODS) == set(get_args(SortMethod)) == set(SORT_DESCRIPTIONS)


@pytest.mark.parametrize("method", get_args(SortMethod))
def test_every_method_returns_a_permutation_with_a_score_each(table, rows, method):
    result = sort_faces(table, method, target_count=5)
    assert sorted(result.face_ids) == sorted(rows) and len(rows) >= 35
    assert len(result.scores) == len(result.face_ids)
    assert result.method == method and result.description and "\n" not in result.description


@pytest.mark.parametrize("method", ["blur", "blur_fft"])
def test_sharpness_methods_put_the_blurred_photo_last(table, rows, method):
    result = sort_faces(table, method)
    assert result.face_ids[-1] == ids_from(rows, "blur.jpg")[0]
    assert result.scores == sorted(result.scores, reverse=True)


def test_motion_blur_puts_the_smeared_face_last(table, rows):
    result = sort_faces(table, "motion_blur")
    assert result.face_ids[-1] == ids_from(rows, "obama_motion.png")[0]
    stored = sort_faces(table, "blur")
    assert stored.face_ids.index(result.face_ids[-1]) < len(rows) // 2, "the Laplacian alone misses motion blur"


@pytest.mark.parametrize("method", ["yaw", "pitch", "roll", "brightness", "hue", "blur"])
def test_stored_columns_order_monotonically(table, rows, method):
    result = sort_faces(table, method)
    values = [rows[face_id][method] for face_id in result.face_ids]
    assert np.allclose(result.scores, values)
    descending = method in ("brightness", "blur")
    assert values == sorted(values, reverse=descending)


def test_face_size_orders_by_the_source_box(table, rows):
    result = sort_faces(table, "face_size")
    boxes = [rows[face_id]["bbox"] for face_id in result.face_ids]
    sides = [math.sqrt((x1 - x0) * (y1 - y0)) for x0, y0, x1, y1 in boxes]
    assert np.allclose(result.scores, sides, rtol=1e-5) and sides == sorted(sides, reverse=True)


def test_black_pixels_puts_the_face_cut_by_a_black_bar_last(table, rows):
    result = sort_faces(table, "black_pixels")
    assert result.face_ids[-1] == ids_from(rows, "obama_cut.png")[0] and result.scores[-1] > 0.2
    assert all(score < 0.05 for face_id, score in zip(result.face_ids, result.scores) if face_id in video_ids(rows))


def test_original_filename_sorts_by_path_frame_and_face(table, rows):
    result = sort_faces(table, "original_filename")
    keys = [(rows[face_id]["source_path"], rows[face_id]["frame_index"], rows[face_id]["face_index"]) for face_id in result.face_ids]
    assert keys == sorted(keys)


def test_one_face_puts_the_two_person_photo_last(table, rows):
    result = sort_faces(table, "one_face")
    pair = ids_from(rows, "two_people.jpg")
    assert len(pair) == 2 and set(result.face_ids[-2:]) == set(pair) and result.scores[-2:] == [2.0, 2.0]
    assert set(result.scores[:-2]) == {1.0}


def test_identity_distance_puts_other_people_after_the_video_person(table, rows):
    result = sort_faces(table, "identity_distance")
    others = set(rows) - video_ids(rows)
    assert set(result.face_ids[-len(others):]) == others


def test_identity_distance_to_references_finds_the_same_person_first(table, rows):
    obama = ids_from(rows, "obama.jpg")[0]
    references = np.asarray([rows[obama]["embedding"]], dtype=np.float32)
    result = sort_faces(table, "identity_distance", references=references)
    assert result.face_ids[0] == obama and result.scores[0] < 1e-4
    assert ids_from(rows, "obama_motion.png")[0] in result.face_ids[:4]


def copy_with_embeddings(table: Path, target: Path, keep) -> Path:
    """A copy of the table where the embeddings of the faces ``keep`` rejects are null."""
    data = open_faces(table).to_table()
    embeddings = [value if keep(face_id) else None for face_id, value in zip(data["face_id"].to_pylist(), data["embedding"].to_pylist(), strict=True)]
    data = data.set_column(data.schema.get_field_index("embedding"), FACES_SCHEMA.field("embedding"), pa.array(embeddings, FACES_SCHEMA.field("embedding").type))
    write_table(target, data.to_batches(), FACES_SCHEMA)
    return target


def test_identity_distance_puts_faces_without_a_descriptor_last(table, rows, tmp_path):
    missing = ids_from(rows, "clip.mp4")[0]
    result = sort_faces(copy_with_embeddings(table, tmp_path / "faces.lance", lambda face_id: face_id != missing), "identity_distance")
    assert result.face_ids[-1] == missing and math.isnan(result.scores[-1])
    with pytest.raises(SortError, match="embeddings: true"):
        sort_faces(copy_with_embeddings(table, tmp_path / "none.lance", lambda face_id: False), "identity_distance")


def yaw_bins(rows, face_ids) -> set[int]:
    return set(pose_bins(np.array([rows[face_id]["yaw"] for face_id in face_ids]), YAW_EDGES).tolist())


@pytest.mark.parametrize("method", ["best_faces", "best_faces_fast"])
def test_best_faces_cover_more_head_turns_than_the_sharpest(table, rows, method):
    target = 5
    result = sort_faces(table, method, target_count=target)
    picked = result.face_ids[:target]
    sharpest = sort_faces(table, "blur").face_ids[:target]
    assert len(set(picked)) == target
    assert len(yaw_bins(rows, picked)) == target > len(yaw_bins(rows, sharpest))
    assert ids_from(rows, "blur.jpg")[0] not in picked


def test_best_faces_rank_the_cut_and_the_blurred_face_last(table, rows):
    result = sort_faces(table, "best_faces", target_count=3)
    assert set(result.face_ids[-2:]) == {ids_from(rows, "blur.jpg")[0], ids_from(rows, "obama_cut.png")[0]}


def test_pixel_difference_puts_near_duplicates_last(table, rows):
    result = sort_faces(table, "pixel_difference")
    video = video_ids(rows)
    assert not video & set(result.face_ids[:5]), "the photos differ most"
    assert np.mean([rank for rank, face_id in enumerate(result.face_ids) if face_id in video]) > len(rows) / 2
    # biden.jpg is a crop of two_people.jpg: whichever of the two comes second is a near-duplicate
    later = max(result.face_ids.index(ids_from(rows, "biden.jpg")[0]), result.face_ids.index(ids_from(rows, "two_people.jpg")[0]))
    assert later >= len(rows) - 5


def test_histogram_similarity_chains_similar_faces(table, rows):
    result = sort_faces(table, "histogram_similarity")
    dataset = open_faces(table)
    positions = {face_id: index for index, face_id in enumerate(result.face_ids)}
    histograms = sort_images.measure_crops(dataset, positions, sort_images.colour_histogram, 128).astype(np.float64)
    chained = np.linalg.norm(np.diff(histograms, axis=0), axis=1)
    assert np.allclose(chained, result.scores[1:], atol=1e-4) and math.isnan(result.scores[0])
    canonical = [positions[face_id] for face_id in sort_faces(table, "original_filename").face_ids]
    assert chained.sum() < 0.8 * np.linalg.norm(np.diff(histograms[canonical], axis=0), axis=1).sum()


def test_histogram_dissimilarity_puts_unusual_faces_first(table, rows):
    result = sort_faces(table, "histogram_dissimilarity")
    assert not video_ids(rows) & set(result.face_ids[:5]) and result.face_ids[-1] in video_ids(rows)
    assert result.scores == sorted(result.scores, reverse=True)


def test_errors_name_the_problem(table, tmp_path):
    with pytest.raises(SortError, match="histogram_similarity"):
        sort_faces(table, "sharpness")  # type: ignore[arg-type]
    with pytest.raises(FacesetError, match="does not exist"):
        sort_faces(tmp_path / "missing.lance", "blur")
    empty = tmp_path / "empty.lance"
    create_empty_table(empty, FACES_SCHEMA)
    assert sort_faces(empty, "pixel_difference").face_ids == []
