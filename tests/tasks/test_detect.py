"""tasks/detect.py on real photos: who is found, where, and who is who."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.analyzers import ANALYZERS, create_analyzer
from tasks.detect import DetectedFace, DlibAnalyzer
from tasks.images import read_image

OBAMA = "photos/identities/barack_obama/obama.jpg"
OBAMA_OTHERS = ["photos/identities/barack_obama/obama1.jpg", "photos/identities/barack_obama/obama2.jpg"]
BIDEN = "photos/identities/joe_biden/biden.jpg"
OBAMA_AND_BIDEN = "photos/misc/two_people.jpg"


@pytest.fixture(scope="module")
def analyzer() -> DlibAnalyzer:
    return create_analyzer("dlib")


@pytest.fixture(scope="module")
def read(media_dir):
    return lambda name: read_image(media_dir / name)


def only_face(analyzer, image) -> DetectedFace:
    faces = analyzer.detect(image)
    assert len(faces) == 1
    return faces[0]


def distance(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.linalg.norm(first - second))


def test_one_face_with_landmarks_inside_its_box(analyzer, read):
    image = read(OBAMA)
    face = only_face(analyzer, image)
    x0, y0, x1, y1 = face.bbox
    assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
    assert face.score > 0
    assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
    # the detector's box is tight and the jaw line may hang just below it: allow a 20% margin
    margin_x, margin_y = 0.2 * (x1 - x0), 0.2 * (y1 - y0)
    assert np.all(face.landmarks[:, 0] >= x0 - margin_x) and np.all(face.landmarks[:, 0] <= x1 + margin_x)
    assert np.all(face.landmarks[:, 1] >= y0 - margin_y) and np.all(face.landmarks[:, 1] <= y1 + margin_y)
    # the inner face (brows, eyes, nose, mouth) lies inside the box itself
    inner = face.landmarks[17:]
    assert np.all((inner[:, 0] >= x0) & (inner[:, 0] <= x1) & (inner[:, 1] >= y0) & (inner[:, 1] <= y1))
    left_eye, right_eye = face.landmarks[42:48].mean(axis=0), face.landmarks[36:42].mean(axis=0)
    assert right_eye[0] < left_eye[0]  # iBUG order: the face's right eye is on the image's left
    assert face.landmarks[8, 1] > face.landmarks[30, 1] > left_eye[1]  # chin below nose below eyes


def test_two_faces_come_largest_first(analyzer, read):
    faces = analyzer.detect(read(OBAMA_AND_BIDEN))
    assert len(faces) == 2
    areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in (face.bbox for face in faces)]
    assert areas == sorted(areas, reverse=True)


@pytest.mark.parametrize("name", ["photos/misc/dogs.jpg", "photos/misc/view.jpg", "photos/misc/test_frame_04.jpg"])
def test_no_face_in_photos_without_people(analyzer, read, name):
    assert analyzer.detect(read(name)) == []


def test_same_person_is_near_and_different_people_are_far(analyzer, read):
    def describe(name):
        image = read(name)
        return analyzer.embed(image, only_face(analyzer, image))

    obama = describe(OBAMA)
    assert obama.shape == (128,) and obama.dtype == np.float32
    for other in OBAMA_OTHERS:
        assert distance(obama, describe(other)) < 0.6
    biden = describe(BIDEN)
    assert distance(obama, biden) > 0.6
    together = read(OBAMA_AND_BIDEN)
    descriptors = [analyzer.embed(together, face) for face in analyzer.detect(together)]
    to_obama = [distance(obama, descriptor) for descriptor in descriptors]
    to_biden = [distance(biden, descriptor) for descriptor in descriptors]
    obama_index = int(np.argmin(to_obama))
    assert to_obama[obama_index] < 0.6 and to_biden[1 - obama_index] < 0.6
    assert to_biden[obama_index] > 0.6 and to_obama[1 - obama_index] > 0.6


def test_downscaled_detection_maps_back_to_the_full_frame(analyzer, read):
    image = read(OBAMA)
    reference = only_face(analyzer, image)
    small = only_face(DlibAnalyzer(max_side=320, upsample=1), image)
    box, small_box = np.array(reference.bbox), np.array(small.bbox)
    face_width = box[2] - box[0]
    assert np.abs(box - small_box).max() < 0.15 * face_width
    # landmarks are fitted on the full-resolution frame either way
    assert np.abs(reference.landmarks - small.landmarks).mean() < 0.03 * face_width


def test_min_size_drops_small_faces(analyzer, read):
    image = read("photos/misc/kit_with_rose.jpg")  # two faces of different sizes
    faces = analyzer.detect(image)
    assert len(faces) == 2
    smallest = min(min(x1 - x0, y1 - y0) for x0, y0, x1, y1 in (face.bbox for face in faces))
    largest = max(min(x1 - x0, y1 - y0) for x0, y0, x1, y1 in (face.bbox for face in faces))
    assert len(DlibAnalyzer(min_size=int(smallest) + 1).detect(image)) == 1
    assert DlibAnalyzer(min_size=int(largest) + 1).detect(image) == []


def test_cnn_detector_finds_the_face(read):
    analyzer = create_analyzer("dlib", detector="cnn", upsample=0, max_side=320)
    face = only_face(analyzer, read("photos/identities/barack_obama/obama_small.jpg"))
    x0, y0, x1, y1 = face.bbox
    nose = face.landmarks[30]
    assert x0 < nose[0] < x1 and y0 < nose[1] < y1


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="dlib"):
        create_analyzer("retinaface")
    with pytest.raises(ValueError, match="hog.*cnn"):
        DlibAnalyzer(detector="ssd")
    assert ANALYZERS["dlib"] is DlibAnalyzer
