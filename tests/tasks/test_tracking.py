from tasks.tracking import FaceTracker, intersection_over_union


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
