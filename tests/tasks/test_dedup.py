"""Near-duplicate removal on real faces: neighbouring video frames merge, other moments and other people never do."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tasks.align import compute_alignment, warp_to_crop
from tasks.dedup import (
    DEFAULT_PIXEL_THRESHOLD,
    make_thumbnails,
    near_duplicates,
    normalise_thumbnails,
    pixel_differences,
)
from tasks.analyzers import create_analyzer
from tasks.images import list_media, read_image
from tasks.scores import blur_score
from tasks.video import iter_frames

# six moments 1.5 s apart (different expression and head pose), each with the very next frame
MOMENTS = [0, 45, 90, 135, 180, 225]
FRAMES = sorted(MOMENTS + [moment + 1 for moment in MOMENTS])


@pytest.fixture(scope="module")
def analyzer():
    return create_analyzer("dlib")


def describe_face(analyzer, image):
    """(aligned 128 px whole-face crop as JPEG bytes, descriptor) of the largest face."""
    face = analyzer.detect(image)[0]
    crop = warp_to_crop(image, compute_alignment(face.landmarks, "whole_face", 128), 128)
    return cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), analyzer.embed(image, face)


@pytest.fixture(scope="module")
def video_faces(media_dir, analyzer):
    """(JPEG crops, descriptors) of FRAMES of talking_head_a.mp4, in frame order."""
    described = [describe_face(analyzer, frame) for index, _, frame in iter_frames(media_dir / "videos" / "talking_head_a.mp4")
                 if index in FRAMES]
    assert len(described) == len(FRAMES)
    return [jpeg for jpeg, _ in described], np.stack([descriptor for _, descriptor in described])


def sharpest_first(jpegs):
    return np.argsort([-blur_score(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)) for jpeg in jpegs],
                      kind="stable")


def test_neighbouring_frames_are_duplicates_and_other_moments_are_not(video_faces):
    jpegs, descriptors = video_faces
    thumbnails = make_thumbnails(jpegs)
    assert thumbnails.shape == (len(FRAMES), 32, 32) and thumbnails.dtype == np.uint8
    order = sharpest_first(jpegs)
    for embeddings in (descriptors, None):
        keep, duplicate_of = near_duplicates(thumbnails, embeddings, order)
        assert keep.sum() == len(MOMENTS), "one face per moment"
        for dropped, kept in duplicate_of.items():
            assert keep[kept] and not keep[dropped]
            assert abs(FRAMES[dropped] - FRAMES[kept]) == 1, "only the neighbouring frame is a duplicate"
        rank = np.argsort(order)
        assert all(rank[kept] < rank[dropped] for dropped, kept in duplicate_of.items()), "the sharper face is kept"
    reversed_keep, _ = near_duplicates(thumbnails, descriptors, order[::-1])
    assert np.array_equal(reversed_keep, ~keep), "walking the other way keeps the other face of each pair"


def test_a_brightness_change_is_still_a_duplicate(video_faces):
    jpegs, _ = video_faces
    thumbnails = make_thumbnails(jpegs[:1])
    brighter = np.clip(thumbnails.astype(np.float32) * 1.25 + 20, 0, 255).astype(np.uint8)
    rows = normalise_thumbnails(np.concatenate([thumbnails, brighter]))
    assert pixel_differences(rows[:1], rows[1:])[0, 0] < DEFAULT_PIXEL_THRESHOLD / 2
    keep, duplicate_of = near_duplicates(np.concatenate([thumbnails, brighter]), None, np.array([1, 0]))
    assert keep.tolist() == [False, True] and duplicate_of == {0: 1}


def test_distinct_people_are_never_duplicates_and_a_resized_copy_is(media_dir, analyzer):
    people = ["barack_obama", "joe_biden", "angelina_jolie", "jennifer_aniston", "katy_perry", "mark_zuckerberg",
              "matt_damon", "jack_dorsey", "rob_lowe", "sundar_pichai"]
    photos = [list_media(media_dir / "photos" / "identities" / person)[1][0] for person in people]
    photos.append(media_dir / "photos" / "identities" / "barack_obama" / "obama_small.jpg")  # obama.jpg at 320x240
    assert photos[0].name == "obama.jpg"
    described = [describe_face(analyzer, read_image(photo)) for photo in photos]
    thumbnails = make_thumbnails([jpeg for jpeg, _ in described])
    descriptors = np.stack([descriptor for _, descriptor in described])
    for embeddings in (descriptors, None):
        keep, duplicate_of = near_duplicates(thumbnails, embeddings, np.arange(len(photos)))
        assert duplicate_of == {len(photos) - 1: 0}, "only the resized copy of obama.jpg is dropped"
    # far looser than the default still merges no two people
    keep, _ = near_duplicates(thumbnails[:-1], None, np.arange(len(people)), pixel_threshold=2 * DEFAULT_PIXEL_THRESHOLD)
    assert keep.all()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="face crop 1 of 2"):
        make_thumbnails([cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes(), b"not a jpeg"])
    with pytest.raises(ValueError, match="permutation"):
        near_duplicates(np.zeros((3, 8, 8), np.uint8), None, np.array([0, 0, 1]))


def test_blocks_give_the_same_answer_as_one_pass(video_faces):
    jpegs, descriptors = video_faces
    thumbnails = make_thumbnails(jpegs)
    order = sharpest_first(jpegs)
    whole = near_duplicates(thumbnails, descriptors, order)
    for block_size in (1, 5):
        blocked = near_duplicates(thumbnails, descriptors, order, block_size=block_size)
        assert np.array_equal(blocked[0], whole[0]) and blocked[1] == whole[1]
