"""The training loader on real faces: faceset readers over Lance tables and deterministic batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tasks.align import compute_alignment, warp_to_crop
from tasks.augment import sample_batch
from tasks.extract import FaceOptions, SideOptions, extract_folder
from tasks.faceset import MASKS_SCHEMA, open_faces, open_masks, write_table
from tasks.faceset_reader import ArrayFaceset, LanceFaceset
from tasks.images import read_image
from tasks.loader import (
    BatchOptions,
    Shard,
    batch_to_device,
    compute_sampling_weights,
    iterate_batches,
    make_batch,
)
from tasks.mask_table import MaskOptions, build_masks
from tasks.masks import hull_mask
from tasks.preview import images_to_tensor
from tasks.selection import Selection
from tasks.training_data import load_side

PHOTO = Path("photos") / "misc" / "obama-480p.jpg"
OPTIONS = BatchOptions(batch_size=4)


@pytest.fixture(scope="module")
def tables(media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A whole_face 128 px faces table (one photo, a clip at 2 fps) with hull masks; and the photo's path."""
    root = tmp_path_factory.mktemp("faceset")
    raw = root / "raw"
    raw.mkdir()
    shutil.copy(media_dir / PHOTO, raw / "photo.jpg")
    shutil.copy(media_dir / "videos" / "talking_head_a.mp4", raw / "clip.mp4")
    extract_folder(raw, root / "faces.lance", FaceOptions(size=128), SideOptions(embeddings=False, fps=2.0), root)
    build_masks(root / "faces.lance", root / "masks.lance", MaskOptions())
    return root / "faces.lance", root / "masks.lance", raw / "photo.jpg"


def overlap(first: np.ndarray, second: np.ndarray) -> float:
    """Intersection over union of two masks thresholded at half."""
    first, second = first > 127, second > 127
    return float((first & second).sum() / max((first | second).sum(), 1))


def soften(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0)


def test_lance_reader_matches_load_side_and_knows_its_landmarks(tables) -> None:
    faces_path, masks_path, _ = tables
    reader = LanceFaceset(faces_path, masks_path, None, 64)
    faces, masks = load_side(faces_path, masks_path, None, 64)
    assert len(reader) == len(faces) > 10 and reader.resolution == 64
    read_faces, read_masks = reader.read_many(range(len(reader)))
    assert np.array_equal(read_faces, faces) and np.array_equal(read_masks, masks)
    face, mask = reader.read(3)
    assert face.shape == (64, 64, 3) and face.dtype == np.uint8 and np.array_equal(mask, masks[3])
    assert reader.yaw.shape == (len(faces),) and np.all(np.abs(reader.yaw) < 45)
    assert reader.landmarks.shape == (len(faces), 68, 2)
    # The masks are hulls of the crop landmarks: the reader's landmarks must redraw them at 64 px.
    assert min(overlap(hull_mask(reader.landmarks[index], 64), masks[index]) for index in range(len(faces))) > 0.9


def test_selection_picks_faces_in_table_order(tables, tmp_path: Path) -> None:
    faces_path, masks_path, _ = tables
    table_ids = open_faces(faces_path).to_table(columns=["face_id"])["face_id"].to_pylist()
    selection_path = tmp_path / "selection.json"
    Selection(kept=[table_ids[5], table_ids[2]], rejected={}, options={}).save(selection_path)
    reader = LanceFaceset.from_selection(faces_path, masks_path, selection_path, 64)
    assert reader.face_ids == (table_ids[2], table_ids[5])
    everything = LanceFaceset(faces_path, masks_path, None, 64)
    assert np.array_equal(reader.read(1)[0], everything.read(5)[0])


def test_batches_are_sample_batch_draws_and_a_pure_function_of_seed_and_step(tables) -> None:
    faces_path, masks_path, _ = tables
    faces, masks = load_side(faces_path, masks_path, None, 64)
    readers = {"dst": ArrayFaceset(faces[8:], masks[8:]), "src": ArrayFaceset(faces, masks)}
    batch = make_batch(readers, OPTIONS, seed=3, step=7)
    assert list(batch) == ["src", "dst"]
    rng = np.random.default_rng([3, 7])  # how the trainer draws step 7 from whole arrays
    expected = {side: sample_batch(faces[start:], masks[start:], rng, 4, True, True)
                for side, start in (("src", 0), ("dst", 8))}
    for side in ("src", "dst"):
        inputs, targets, target_masks = batch[side]
        assert inputs.shape == targets.shape == (4, 64, 64, 3) and target_masks.shape == (4, 64, 64)
        assert inputs.dtype == targets.dtype == target_masks.dtype == np.uint8
        assert all(np.array_equal(made, drawn) for made, drawn in zip(batch[side], expected[side], strict=True))
        assert not np.array_equal(inputs, targets), "random warp distorts the inputs only"
    table_ids = open_faces(faces_path).to_table(columns=["face_id"])["face_id"].to_pylist()
    lance_readers = {"src": LanceFaceset(faces_path, masks_path, table_ids, 64),
                     "dst": LanceFaceset(faces_path, masks_path, table_ids[8:], 64)}
    from_tables = make_batch(lance_readers, OPTIONS, 3, 7)
    assert all(np.array_equal(made, read) for side in batch for made, read in zip(batch[side], from_tables[side]))
    other_step = make_batch(readers, OPTIONS, seed=3, step=8)
    assert not np.array_equal(other_step["src"][1], batch["src"][1])

    tensors = batch_to_device(batch, "cpu")
    inputs, targets, target_masks = tensors["src"]
    assert inputs.shape == (4, 3, 64, 64) and target_masks.shape == (4, 1, 64, 64) and inputs.dtype == torch.float32
    assert float(inputs.min()) >= 0.0 and float(inputs.max()) <= 1.0 and float(target_masks.max()) == 1.0
    assert bool((target_masks == images_to_tensor(batch["src"][2])).all())


def test_workers_give_the_same_batches_as_in_process(tables) -> None:
    faces_path, masks_path, _ = tables
    table_ids = open_faces(faces_path).to_table(columns=["face_id"])["face_id"].to_pylist()
    reader = LanceFaceset(faces_path, masks_path, None, 64, face_type="full")
    readers = {"src": reader, "dst": LanceFaceset(faces_path, masks_path, table_ids[::2], 64, "full")}
    options = BatchOptions(batch_size=3, uniform_yaw=True)
    assert reader.yaw is not None and reader.__getstate__()["_tables"] is None, "open handles must not be pickled"
    in_process = list(iterate_batches(readers, options, seed=11, start_step=5, stop_step=11))
    with_workers = list(iterate_batches(readers, options, seed=11, start_step=5, stop_step=11, workers=2))
    assert [step for step, _ in with_workers] == [step for step, _ in in_process] == list(range(5, 11))
    for (_, made), (_, expected) in zip(with_workers, in_process, strict=True):
        for side in ("src", "dst"):
            assert all(bool((a == b).all()) for a, b in zip(made[side], expected[side], strict=True))
    assert not bool((in_process[0][1]["src"][0] == in_process[1][1]["src"][0]).all())


def test_shards_of_a_batch_are_its_slices_in_order(tables) -> None:
    faces_path, masks_path, _ = tables
    faces, masks = load_side(faces_path, masks_path, None, 64)
    readers = {"src": ArrayFaceset(faces, masks), "dst": ArrayFaceset(faces[5:], masks[5:])}
    options = BatchOptions(batch_size=4, color_transfer="rct", hsv_power=0.2)
    whole = make_batch(readers, {"src": options, "dst": BatchOptions(batch_size=4)}, seed=2, step=9)
    parts = [make_batch(readers, {"src": options, "dst": BatchOptions(batch_size=4)}, seed=2, step=9, shard=Shard(k, 2))
             for k in range(2)]
    for side in ("src", "dst"):
        for array, first, second in zip(whole[side], parts[0][side], parts[1][side], strict=True):
            assert first.shape[0] == second.shape[0] == 2
            np.testing.assert_array_equal(np.concatenate([first, second]), array)
    assert not np.array_equal(parts[0]["src"][1], parts[1]["src"][1])
    with pytest.raises(ValueError, match="multiple of the process count"):
        next(iterate_batches(readers, BatchOptions(batch_size=3), seed=2, start_step=1, stop_step=2, shard=Shard(1, 2)))
    with pytest.raises(ValueError, match="does not exist"):
        Shard(2, 2)


def test_uniform_yaw_draws_each_yaw_bin_equally() -> None:
    faces, masks = np.zeros((6, 32, 32, 3), np.uint8), np.zeros((6, 32, 32), np.uint8)
    reader = ArrayFaceset(faces, masks, yaw=np.array([0.5, 1.0, 2.0, 3.0, 40.0, -60.0]))
    weights = compute_sampling_weights({"src": reader}, BatchOptions(uniform_yaw=True))["src"]
    assert np.allclose(weights, [1 / 12] * 4 + [1 / 3, 1 / 3])
    assert compute_sampling_weights({"src": reader}, BatchOptions())["src"] is None
    with pytest.raises(ValueError, match="uniform_yaw needs each face's yaw"):
        make_batch({"src": ArrayFaceset(faces, masks)}, BatchOptions(uniform_yaw=True), 0, 1)
    faces[4] = 255  # the only face in its yaw bin: drawn about a third of the time
    drawn = np.concatenate([make_batch({"src": reader}, BatchOptions(batch_size=16, uniform_yaw=True,
                                                                      random_warp=False), 0, step)["src"][1]
                            for step in range(8)])
    assert 0.2 < (drawn.reshape(len(drawn), -1).max(axis=1) == 255).mean() < 0.47


def test_reframing_whole_face_to_full_matches_aligning_the_photo(tables) -> None:
    faces_path, masks_path, photo = tables
    rows = open_faces(faces_path).to_table(columns=["face_id", "frame_index", "source_path", "landmarks"]).to_pylist()
    photo_row = next(row for row in rows if row["source_path"].endswith("photo.jpg"))
    reader = LanceFaceset(faces_path, masks_path, [photo_row["face_id"]], 64, face_type="full")
    face, mask = reader.read(0)
    landmarks = np.asarray(photo_row["landmarks"], np.float32).reshape(68, 2)
    expected = warp_to_crop(read_image(photo), compute_alignment(landmarks, "full", 64), 64)
    # A light blur evens out the JPEG and the two resamplings; half a pixel of misframing still costs 3+ levels.
    error = np.abs(soften(face) - soften(expected)).mean()
    assert error < 2.0, f"re-framed crop differs from the photo's own full crop by {error:.1f} levels"
    unframed = LanceFaceset(faces_path, masks_path, [photo_row["face_id"]], 64).read(0)[0]
    assert np.abs(soften(unframed) - soften(expected)).mean() > 10 * error, "the test tells framings apart"
    assert overlap(hull_mask(reader.landmarks[0], 64), mask) > 0.9


def test_a_wider_face_type_than_stored_asks_to_re_extract(tables) -> None:
    faces_path, masks_path, _ = tables
    reader = LanceFaceset(faces_path, masks_path, None, 64, face_type="head")
    with pytest.raises(ValueError, match=r"faces\.lance stores whole_face crops.*extract\.faces\.face_type"):
        reader.read(0)


def test_a_face_without_mask_names_the_table_and_face(tables, tmp_path: Path) -> None:
    faces_path, masks_path, _ = tables
    masks = open_masks(masks_path).to_table()
    partial = tmp_path / "partial_masks.lance"
    write_table(partial, masks.slice(1).to_batches(), MASKS_SCHEMA)
    missing = masks["face_id"][0].as_py()
    with pytest.raises(ValueError, match=rf"partial_masks\.lance has no mask for face {missing}.*re-run the mask stage"):
        LanceFaceset(faces_path, partial, None, 64).read(0)
