import pytest

from tasks.decisions import DecisionsError, load_rejects, save_rejects


def test_round_trip_and_missing_file(tmp_path):
    path = tmp_path / "rejects.yaml"
    assert load_rejects(path) == {}
    save_rejects(path, {"b-000002-00": "eyes closed", "a-000001-00": "not him"})
    assert load_rejects(path) == {"a-000001-00": "not him", "b-000002-00": "eyes closed"}
    text = path.read_text()
    assert text.startswith("# Faces rejected by hand") and text.index("a-000001-00") < text.index("b-000002-00")


@pytest.mark.parametrize("body", ["rejects: [a, b]\n", "reject: {}\n", "rejects: {a: b\n"])
def test_malformed_files_are_named(tmp_path, body):
    path = tmp_path / "rejects.yaml"
    path.write_text(body)
    with pytest.raises(DecisionsError, match="rejects.yaml"):
        load_rejects(path)


def test_empty_reason_gets_a_default(tmp_path):
    path = tmp_path / "rejects.yaml"
    path.write_text("rejects:\n  a-000001-00:\n")
    assert load_rejects(path) == {"a-000001-00": "rejected by hand"}


def test_landmark_overrides_parse_boxes_and_points(tmp_path):
    import numpy as np

    from tasks.decisions import LANDMARKS_HEADER, load_landmark_overrides, overrides_key

    path = tmp_path / "landmarks.yaml"
    path.write_text(LANDMARKS_HEADER)
    assert load_landmark_overrides(path) == {}
    points = [[float(i), float(i + 1)] for i in range(68)]
    path.write_text(f"faces:\n  data/raw/src/a b.mp4:\n    12:\n      - box: [1, 2, 30, 40]\n      - landmarks: {points}\n")
    overrides = load_landmark_overrides(path)
    faces = overrides["data/raw/src/a b.mp4"][12]
    assert faces[0] == {"box": [1.0, 2.0, 30.0, 40.0]} and np.array_equal(faces[1]["landmarks"], np.asarray(points, np.float32))
    assert overrides_key(overrides["data/raw/src/a b.mp4"]) != overrides_key({12: faces[:1]}) and overrides_key({}) is None


@pytest.mark.parametrize("body", [
    "faces:\n  a.mp4:\n    3:\n      - box: [10, 10, 5, 20]\n",
    "faces:\n  a.mp4:\n    3:\n      - landmarks: [[1, 2], [3, 4]]\n",
    "faces:\n  a.mp4:\n    3:\n      - centre: [1, 2]\n",
    "faces: [a.mp4]\n",
])
def test_malformed_overrides_are_named(tmp_path, body):
    from tasks.decisions import load_landmark_overrides

    path = tmp_path / "landmarks.yaml"
    path.write_text(body)
    with pytest.raises(DecisionsError, match="landmarks.yaml"):
        load_landmark_overrides(path)
