"""Tracks: box-overlap linking, and following faces through real clips with refits between detections."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tasks.detect import DlibAnalyzer
from tasks.smoothing import interocular_distance
from tasks.tracking import FaceFollower, FaceTracker, TrackIdentities, intersection_over_union
from tasks.video import iter_frames


def test_iou():
    assert intersection_over_union((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert intersection_over_union((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert abs(intersection_over_union((0, 0, 10, 10), (5, 0, 15, 10)) - 50 / 150) < 1e-9


def test_tracks_follow_moving_faces_and_split_on_jumps():
    tracker = FaceTracker()
    first = tracker.assign([(0, 0, 100, 100), (300, 0, 400, 100)])
    second = tracker.assign([(305, 2, 405, 102), (5, 3, 105, 103)])  # order swapped, small motion
    assert second == [first[1], first[0]]
    third = tracker.assign([(900, 900, 1000, 1000)])  # a new face far away
    assert third[0] not in first


def test_track_survives_short_gaps_only():
    tracker = FaceTracker(max_gap=2)
    (track,) = tracker.assign([(0, 0, 100, 100)])
    tracker.assign([])
    assert tracker.assign([(2, 2, 102, 102)]) == [track]
    for _ in range(3):
        tracker.assign([])
    assert tracker.assign([(2, 2, 102, 102)]) != [track]


# ---- following faces on real clips: detection every few frames, landmark refits in between ----

@pytest.fixture(scope="module")
def analyzer():
    return DlibAnalyzer(min_size=40)


@pytest.fixture(scope="module")
def talking_head(media_dir):
    """Every frame of a frontal talking head (259 frames, 512x388)."""
    return [frame for _, _, frame in iter_frames(media_dir / "videos" / "talking_head_a.mp4")]


def test_follower_keeps_one_stable_track_on_a_talking_head(talking_head, analyzer):
    follower = FaceFollower(analyzer, detect_every=5, max_faces=1)
    followed = [follower.follow(frame) for frame in talking_head]
    found = sum(bool(faces) for faces in followed)
    assert found >= 0.98 * len(talking_head), f"face in only {found}/{len(talking_head)} frames"
    assert len({item.track_id for faces in followed for item in faces}) == 1, "a steady face keeps one track id"
    assert follower.detections <= len(talking_head) / 4, "the detector runs on about one frame in five"
    detected = [index for index, faces in enumerate(followed) if faces[0].detected]
    assert detected[0] == 0 and max(np.diff(detected)) <= 5, "refits never run longer than detect_every - 1 frames"


def test_refitted_landmarks_stay_close_to_a_full_detection(talking_head, analyzer):
    follower = FaceFollower(analyzer, detect_every=5, max_faces=1)
    errors = []
    for frame in talking_head[:60]:
        (item,) = follower.follow(frame)
        if not item.detected:
            (detected,) = analyzer.detect(frame)
            errors.append(np.linalg.norm(item.face.landmarks - detected.landmarks, axis=1).mean())
    assert len(errors) >= 40, "most frames are refits"
    interocular = interocular_distance(item.face.landmarks)
    assert np.median(errors) < 2.0 and max(errors) < 4.0, (
        f"refits drift from detection: median {np.median(errors):.2f} px, max {max(errors):.2f} px "
        f"(inter-ocular distance {interocular:.0f} px)")


def test_two_faces_keep_two_separate_tracks(media_dir, analyzer):
    frames = itertools.islice(iter_frames(media_dir / "videos" / "two_faces_vertical.mp4"), 40)
    follower = FaceFollower(analyzer, detect_every=5, max_faces=0)
    followed = [follower.follow(frame) for _, _, frame in frames]
    tracks = {item.track_id for faces in followed for item in faces}
    assert len(tracks) == 2, f"two people, two tracks; got {tracks}"
    assert sum(len(faces) == 2 for faces in followed) >= 0.9 * len(followed)
    for faces in followed:
        if len(faces) == 2:
            assert intersection_over_union(faces[0].face.bbox, faces[1].face.bbox) == 0.0
    # the two people sit left and right of the frame's middle (x = 360): each track stays on one side
    sides = {(item.track_id, bool(item.face.landmarks[:, 0].mean() > 360)) for faces in followed for item in faces}
    assert len(sides) == 2 and {side for _, side in sides} == {False, True}, f"tracks swapped people: {sides}"


def test_track_identities_are_computed_on_a_budget_and_shared(talking_head, analyzer):
    follower = FaceFollower(analyzer, detect_every=5, max_faces=1)
    identities = TrackIdentities(analyzer, every=10)
    descriptors = []
    for frame in talking_head[:25]:
        faces = follower.follow(frame)
        descriptors.extend(identities.describe(frame, faces))
    assert len(descriptors) == 25 and identities.computed == 3, "faces 0, 10 and 20 are described"
    assert all(descriptor is descriptors[0] for descriptor in descriptors[:10])
    assert descriptors[10] is not descriptors[0] and descriptors[10] is descriptors[19]
    assert np.linalg.norm(descriptors[0] - descriptors[20]) < 0.4, "the same person"


def test_follower_rejects_bad_settings(analyzer):
    with pytest.raises(ValueError, match="detect_every"):
        FaceFollower(analyzer, detect_every=0)
    with pytest.raises(ValueError, match="embed_every"):
        TrackIdentities(analyzer, every=-1)


class DetectOnly:
    """The dlib analyzer seen through the plain FaceAnalyzer interface (no landmark refits)."""

    name = "detect-only"

    def __init__(self, analyzer):
        self.detect, self.embed = analyzer.detect, analyzer.embed


def test_an_analyzer_without_refits_detects_on_every_frame(talking_head, analyzer):
    follower = FaceFollower(DetectOnly(analyzer), detect_every=5, max_faces=1)
    followed = [follower.follow(frame) for frame in talking_head[:8]]
    assert follower.detections == 8 and all(faces and faces[0].detected for faces in followed)


def test_a_vanished_face_is_dropped_at_once_and_found_again(talking_head, analyzer):
    blank = np.full_like(talking_head[0], 128)
    frames = talking_head[:12] + [blank] * 4 + talking_head[16:24]
    follower = FaceFollower(analyzer, detect_every=5, max_faces=1)
    followed = [follower.follow(frame) for frame in frames]
    assert [bool(faces) for faces in followed] == [True] * 12 + [False] * 4 + [True] * 8, (
        "no refit rides on a frame without the face, and the first frame it is back in re-detects it")
    assert followed[16][0].detected


def test_coarse_redetection_of_a_large_face_agrees_with_full_detection(talking_head, analyzer):
    for frame in talking_head[::60]:
        (full,) = analyzer.detect(frame)
        side = min(full.bbox[2] - full.bbox[0], full.bbox[3] - full.bbox[1])
        (coarse,) = analyzer.detect_at_least(frame, side / 1.5)
        assert np.linalg.norm(coarse.landmarks - full.landmarks, axis=1).mean() < 3.0
        assert analyzer.upsample == 1, "the configured upsampling is restored"
