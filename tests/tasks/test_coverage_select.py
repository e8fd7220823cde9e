"""Best-N selection on the poses of a real faceset: every pose kept before any gets a second face."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.align import compute_alignment, warp_to_crop
from tasks.coverage_select import coverage, pose_cells, select_best
from tasks.analyzers import create_analyzer
from tasks.images import read_image
from tasks.pose import estimate_pose
from tasks.scores import blur_score
from tasks.video import iter_frames

VIDEOS = [("videos/webcam_streamer.mp4", 3.0), ("demo/dst_pexels_7154235.mp4", 6.0), ("videos/talking_head_b_audio.mp4", 3.0)]
PHOTOS = ["photos/misc/left_face.jpeg", "photos/misc/rise_face.jpeg"]


@pytest.fixture(scope="module")
def faceset(media_dir):
    """(yaw, pitch, quality) of the faces of three clips and two turned-head photos.

    Quality is the crop's sharpness damped by how far the head is turned, as when the frontal
    faces are the sharp, well-lit ones: ranking by it alone keeps frontal faces.
    """
    analyzer = create_analyzer("dlib")
    frames = [frame for path, fps in VIDEOS for _, _, frame in iter_frames(media_dir / path, fps=fps)]
    frames += [read_image(media_dir / path) for path in PHOTOS]
    yaw, pitch, quality = [], [], []
    for frame in frames:
        faces = analyzer.detect(frame)
        if not faces:
            continue
        face_yaw, face_pitch, _ = estimate_pose(faces[0].landmarks, frame.shape[:2])
        crop = warp_to_crop(frame, compute_alignment(faces[0].landmarks, "whole_face", 128), 128)
        yaw.append(face_yaw)
        pitch.append(face_pitch)
        quality.append(blur_score(crop) / (1.0 + (abs(face_yaw) + abs(face_pitch)) / 5.0))
    assert len(yaw) > 60
    return np.array(yaw), np.array(pitch), np.array(quality)


def occupied(yaw, pitch):
    return int((coverage(yaw, pitch) > 0).sum())


def test_every_occupied_cell_is_represented_first(faceset):
    yaw, pitch, quality = faceset
    cells = occupied(yaw, pitch)
    assert cells >= 8, "the faceset spans several poses"
    for count in (cells, cells + 5):
        chosen = select_best(yaw, pitch, quality, count)
        assert len(chosen) == len(set(chosen.tolist())) == count
        assert occupied(yaw[chosen], pitch[chosen]) == cells
    chosen = select_best(yaw, pitch, quality, cells)
    yaw_cell, pitch_cell = pose_cells(yaw, pitch)
    for index in chosen:
        same_cell = (yaw_cell == yaw_cell[index]) & (pitch_cell == pitch_cell[index])
        assert quality[index] == quality[same_cell].max(), "each cell gives its best face first"


def test_beats_top_quality_on_pose_coverage(faceset):
    yaw, pitch, quality = faceset
    cells = occupied(yaw, pitch)
    for count in (cells // 2, cells, 2 * cells):
        top = np.argsort(-quality, kind="stable")[:count]
        chosen = select_best(yaw, pitch, quality, count)
        assert occupied(yaw[chosen], pitch[chosen]) == min(count, cells)
        assert occupied(yaw[chosen], pitch[chosen]) > occupied(yaw[top], pitch[top])
    # what top-N gives up is little quality: its best faces are all kept in the first round
    assert quality[select_best(yaw, pitch, quality, cells)].max() == quality.max()


def test_selection_is_deterministic_and_count_beyond_size_keeps_all(faceset):
    yaw, pitch, quality = faceset
    first = select_best(yaw, pitch, quality, 20)
    assert np.array_equal(first, select_best(yaw.copy(), pitch.copy(), quality.copy(), 20))
    assert sorted(select_best(yaw, pitch, quality, len(yaw) + 10).tolist()) == list(range(len(yaw)))
    assert len(select_best(yaw, pitch, quality, 0)) == 0
    # equal qualities: ties go to the lower index
    flat = np.zeros(6)
    assert select_best(np.zeros(6), np.zeros(6), flat, 3).tolist() == [0, 1, 2]


def test_coverage_histogram_and_edges():
    yaw = np.array([-120.0, -90.0, 0.0, 0.1, 89.9, 150.0, np.nan])
    pitch = np.array([0.0, -60.0, 0.0, 0.0, 44.0, 80.0, 0.0])
    grid = coverage(yaw, pitch)
    assert grid.shape == (18, 12) and grid.sum() == len(yaw), "10-degree cells over yaw +-90 and pitch +-60"
    assert grid[0, 6] == 1 and grid[0, 0] == 1, "beyond the range falls into the edge cells"
    assert grid[9, 6] == 3 and grid[17, 10] == 1 and grid[17, 11] == 1, "NaN yaw counts as frontal"
    with pytest.raises(ValueError, match="one value per face"):
        select_best(yaw, pitch, np.zeros(3), 2)


def test_curation_coverage_and_the_report_share_one_grid():
    from tasks.coverage_report import compare_coverage
    from tasks.sort import spread_over_yaw

    rng = np.random.default_rng(0)
    yaw, pitch = rng.uniform(-100, 100, 300), rng.uniform(-70, 70, 300)
    report = compare_coverage(yaw, pitch, yaw, pitch)
    grid = coverage(yaw, pitch)
    assert report.axes[0].src_counts.tolist() == grid.sum(axis=1).tolist()
    assert report.axes[1].src_counts.tolist() == grid.sum(axis=0).tolist()
    first_round = spread_over_yaw(yaw, np.ones(300), 18)[:18]
    assert sorted(pose_cells(yaw[first_round], pitch[first_round])[0].tolist()) == list(range(18))
