"""XSeg training on real faces labelled with their hull masks, the batched masker and the mask stage's xseg rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.faceset import decode_png, open_faces, open_masks
from tasks.mask_table import MaskOptions, build_masks
from tasks.xseg_labels import check_labels, decode_crop, load_labelled_faces
from tasks.xseg_masks import XsegMasker, predict_xseg_sources, uses_xseg
from tasks.xseg_train import LabelledFaces, XsegOptions, intersection_over_union, sample_xseg_batch, train_xseg
from tests.tasks.xseg_faces import CROP_SIZE, GROUP_PHOTOS, extract_photos, write_hull_labels

RESOLUTION = 64
OPTIONS = XsegOptions(resolution=RESOLUTION, dims=8, iterations=120, batch_size=8, learning_rate=2e-3, seed=0)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, media_dir):
    """(faces table, labelled faces at 64 px): about 60 faces of group photos, each labelled with its hull."""
    work = tmp_path_factory.mktemp("xseg-train")
    table = extract_photos(media_dir, GROUP_PHOTOS, work / "faces.lance", work)
    write_hull_labels(table, work / "labels")
    labels = check_labels(work / "labels", table)
    faces, masks = load_labelled_faces(table, labels, RESOLUTION)
    return table, LabelledFaces([label.face_id for label in labels], faces, masks)


@pytest.fixture(scope="module")
def trained(labelled):
    return train_xseg(labelled[1], OPTIONS, "whole_face")


def test_training_generalises_to_held_out_faces(labelled, trained):
    metrics = trained.metrics()
    assert metrics["train_faces"] + metrics["holdout_faces"] == len(labelled[1].face_ids) >= 50
    assert metrics["holdout_faces"] >= 2
    assert metrics["iou"] >= metrics["iou_all_ones"] + 0.2, metrics  # a trivial all-face mask is the baseline
    untrained = train_xseg(labelled[1], XsegOptions(**{**OPTIONS.__dict__, "iterations": 1}), "whole_face")
    assert trained.final_loss < 0.6 * untrained.final_loss
    assert not trained.model.training and trained.model.config.face_type == "whole_face"


def test_batches_augment_faces_and_labels_alike(labelled):
    data = labelled[1]
    faces, masks = sample_xseg_batch(data, np.random.default_rng(3), 6)
    again, again_masks = sample_xseg_batch(data, np.random.default_rng(3), 6)
    assert faces.shape == (6, RESOLUTION, RESOLUTION, 3) and masks.shape == (6, RESOLUTION, RESOLUTION)
    assert np.array_equal(faces, again) and np.array_equal(masks, again_masks)
    assert not any(np.array_equal(face, original) for face in faces for original in data.faces), "every input is changed"
    assert 0.2 < (masks >= 128).mean() < 0.8


def test_same_seed_same_network_other_seed_other_network(labelled):
    options = XsegOptions(resolution=RESOLUTION, dims=8, iterations=3, batch_size=4, learning_rate=1e-3, seed=5)
    first, second = (train_xseg(labelled[1], options, "whole_face").model.state_dict() for _ in range(2))
    other = train_xseg(labelled[1], XsegOptions(**{**options.__dict__, "seed": 6}), "whole_face").model.state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_masker_returns_masks_at_each_crops_size(labelled, trained):
    table, data = labelled
    rows = open_faces(table).to_table(columns=["image"], limit=3).to_pylist()
    crops = [decode_crop(row["image"]) for row in rows]  # uint8 at the 128-px crop size
    masker = XsegMasker(trained.model, device="cpu", batch_size=2)
    masks = masker.predict(crops + [data.faces[0].astype(np.float32) / 255.0])  # and one float crop at 64 px
    assert [mask.shape for mask in masks] == [(CROP_SIZE, CROP_SIZE)] * 3 + [(RESOLUTION, RESOLUTION)]
    assert all(mask.dtype == np.float32 and 0 <= mask.min() and mask.max() <= 1 for mask in masks)
    assert intersection_over_union(masks[3][None], data.masks[:1]) > 0.6
    assert masker.predict([]) == []
    with pytest.raises(ValueError, match="square"):
        masker.predict([np.zeros((64, 32, 3), np.uint8)])


def test_mask_stage_writes_xseg_rows_that_follow_the_labels(labelled, trained, tmp_path):
    table, _ = labelled
    masker = XsegMasker(trained.model, device="cpu")
    count = build_masks(table, tmp_path / "masks.lance", MaskOptions(kind="xseg"), masker=masker)
    rows = open_masks(tmp_path / "masks.lance").to_table().to_pylist()
    assert count == len(rows) == open_faces(table).count_rows()
    assert {row["kind"] for row in rows} == {"xseg"}
    masks = np.stack([decode_png(row["mask"]) for row in rows])
    build_masks(table, tmp_path / "hulls.lance", MaskOptions(kind="hull"))
    hulls = np.stack([decode_png(row["mask"]) for row in open_masks(tmp_path / "hulls.lance").to_table().to_pylist()])
    assert masks.shape == (count, CROP_SIZE, CROP_SIZE)
    assert intersection_over_union(masks.astype(np.float32) / 255, hulls) > 0.7  # it learned the hull labels
    with pytest.raises(ValueError, match="needs a trained XSeg"):
        build_masks(table, tmp_path / "none.lance", MaskOptions(kind="xseg"))


def test_merge_sources_are_the_masks_of_dst_crops_and_predicted_faces(labelled, trained):
    _, data = labelled
    masker = XsegMasker(trained.model, device="cpu")
    dst, predicted = list(data.faces[:2]), data.faces[2:4].astype(np.float32) / 255.0  # stand-ins for a merge's faces
    both = predict_xseg_sources(masker, "learned_xseg_all", dst, predicted)
    assert set(both) == {"xseg_dst", "xseg_predicted"} and [len(masks) for masks in both.values()] == [2, 2]
    expected = masker.predict(dst + list(predicted))
    assert all(np.allclose(got, want, atol=1e-5) for got, want in zip(both["xseg_dst"] + both["xseg_predicted"], expected))
    assert set(predict_xseg_sources(masker, "xseg_dst", dst, predicted)) == {"xseg_dst"}
    assert predict_xseg_sources(masker, "hull", dst, predicted) == {}
    assert uses_xseg("xseg_both") and not uses_xseg("hull_learned_both")
