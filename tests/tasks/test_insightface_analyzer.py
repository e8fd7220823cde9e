"""tasks/insightface_analyzer.py without insightface or its weights: errors, pack discovery, mappings.

The pack tests build tiny ONNX graphs with the input and output shapes of each kind of model in a
real pack, so the discovery runs on real ONNX Runtime sessions.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tasks.analyzers import create_analyzer
from tasks.detect import DetectedFace
from tasks.images import read_image
from tasks.insightface_analyzer import (
    EMBEDDING_SIZE,
    InsightFaceAnalyzer,
    InsightFaceMissingError,
    ModelPackError,
    classify_model,
    find_pack_models,
    five_points,
    normalize_embedding,
    order_faces,
    to_detected_face,
)


def write_model(path, side, output_widths):
    """An ONNX file taking a (1, 3, side, side) image and giving one (1, width) output per width."""
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, side, side])
    nodes = [helper.make_node("GlobalAveragePool", ["input.1"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"])]
    outputs, weights = [], []
    for index, width in enumerate(output_widths):
        weight = helper.make_tensor(f"w{index}", TensorProto.FLOAT, [3, width], np.zeros(3 * width, np.float32))
        weights.append(weight)
        nodes.append(helper.make_node("MatMul", ["flat", f"w{index}"], [f"out{index}"]))
        outputs.append(helper.make_tensor_value_info(f"out{index}", TensorProto.FLOAT, [1, width]))
    graph = helper.make_graph(nodes, path.stem, [image], outputs, initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


PACK = {  # file -> (input side, output widths), shaped like buffalo_l's models
    "det_10g.onnx": (640, [1, 4, 10] * 3),  # scores, boxes, keypoints at three strides
    "1k3d68.onnx": (192, [3309]),
    "2d106det.onnx": (192, [212]),
    "genderage.onnx": (96, [3]),
    "w600k_r50.onnx": (112, [512]),
}


def write_pack(folder, files=PACK):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (side, widths) in files.items():
        write_model(folder / name, side, widths)
    return folder


def test_pack_files_are_found_by_role_not_by_name(tmp_path):
    pack = write_pack(tmp_path / "buffalo_l")
    assert find_pack_models(pack) == {
        "detection": pack / "det_10g.onnx",
        "landmark_3d_68": pack / "1k3d68.onnx",
        "landmark_2d_106": pack / "2d106det.onnx",
        "genderage": pack / "genderage.onnx",
        "recognition": pack / "w600k_r50.onnx",
    }
    renamed = write_pack(tmp_path / "mine", {"a.onnx": PACK["w600k_r50.onnx"], "b.onnx": PACK["1k3d68.onnx"],
                                              "c.onnx": PACK["det_10g.onnx"]})
    assert find_pack_models(renamed) == {"recognition": renamed / "a.onnx", "landmark_3d_68": renamed / "b.onnx",
                                         "detection": renamed / "c.onnx"}


def test_classify_model_reads_shapes():
    image = lambda side: [("input.1", [1, 3, side, side])]
    assert classify_model([("input.1", [1, 3, "?", "?"])], [(f"o{i}", [1, 1]) for i in range(9)]) == "detection"
    assert classify_model(image(112), [("683", ["None", 512])]) == "recognition"
    assert classify_model(image(192), [("fc1", [1, 3309])]) == "landmark_3d_68"
    assert classify_model(image(192), [("fc1", [1, 212])]) == "landmark_2d_106"
    assert classify_model(image(96), [("fc1", [1, 3])]) == "genderage"
    assert classify_model(image(224), [("fc1", [1, 1000])]) is None


def test_missing_pack_folder_says_where_to_put_which_files(tmp_path):
    folder = tmp_path / "models" / "buffalo_l"
    with pytest.raises(ModelPackError) as caught:
        find_pack_models(folder)
    message = str(caught.value)
    assert str(folder) in message and "not found" in message
    for expected in ("det_10g.onnx", "scrfd", "1k3d68.onnx", "w600k_r50.onnx", "glintr100.onnx", "buffalo_l.zip"):
        assert expected in message


def test_incomplete_pack_names_the_missing_role(tmp_path):
    pack = write_pack(tmp_path / "pack", {name: PACK[name] for name in ("det_10g.onnx", "w600k_r50.onnx")})
    with pytest.raises(ModelPackError, match=r"(?s)no landmark_3d_68 model \(found det_10g.onnx \(detection\), "
                                             r"w600k_r50.onnx \(recognition\)\).*1k3d68.onnx"):
        find_pack_models(pack)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelPackError, match="no detection / landmark_3d_68 / recognition model"):
        find_pack_models(empty)


def test_broken_or_doubled_files_are_named(tmp_path):
    pack = write_pack(tmp_path / "pack")
    (pack / "glintr100.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelPackError, match="glintr100.onnx: not a readable ONNX model"):
        find_pack_models(pack)
    write_model(pack / "glintr100.onnx", 112, [512])
    with pytest.raises(ModelPackError, match="both glintr100.onnx and w600k_r50.onnx are recognition models"):
        find_pack_models(pack)


@pytest.mark.skipif(importlib.util.find_spec("insightface") is not None, reason="insightface is installed here")
def test_missing_package_says_what_to_install(tmp_path):
    with pytest.raises(InsightFaceMissingError, match=r"pip install insightface.*opencv-python, not opencv-python-headless"):
        InsightFaceAnalyzer(write_pack(tmp_path / "pack"))


def test_options_are_checked_before_anything_loads():
    with pytest.raises(ValueError, match="multiple of 32"):
        InsightFaceAnalyzer(detection_size=500)


def test_detection_rows_become_detected_faces():
    landmarks = np.stack([np.linspace(10, 80, 68), np.linspace(20, 90, 68), np.full(68, -5.0)], axis=1)
    face = to_detected_face(np.array([10.5, 20, 90, 110, 0.87]), landmarks)
    assert face.bbox == (10.5, 20.0, 90.0, 110.0) and face.score == pytest.approx(0.87)
    assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
    np.testing.assert_allclose(face.landmarks, landmarks[:, :2])
    with pytest.raises(ValueError, match=r"\(68, 3\)"):
        to_detected_face(np.zeros(5), np.zeros((106, 2)))


def test_faces_come_largest_first_and_small_ones_are_dropped():
    def face(x0, y0, x1, y1):
        return DetectedFace(bbox=(x0, y0, x1, y1), score=0.9, landmarks=np.zeros((68, 2), np.float32))

    small, large, wide = face(0, 0, 30, 30), face(100, 100, 300, 320), face(0, 0, 400, 35)
    boxes = lambda faces: [face.bbox for face in faces]
    assert boxes(order_faces([small, wide, large])) == boxes([large, wide, small]), "by area, not by width"
    assert boxes(order_faces([small, large, wide], min_size=40)) == boxes([large])


def test_five_points_sit_on_the_eyes_nose_and_mouth(media_dir):
    image = read_image(media_dir / "photos/identities/barack_obama/obama.jpg")
    (face,) = create_analyzer("dlib").detect(image)
    points = five_points(face.landmarks)
    assert points.shape == (5, 2) and points.dtype == np.float32
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < nose[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    eye_distance = right_eye[0] - left_eye[0]
    assert 0.25 * (face.bbox[2] - face.bbox[0]) < eye_distance < 0.6 * (face.bbox[2] - face.bbox[0])


def test_embeddings_are_unit_vectors():
    vector = normalize_embedding(np.arange(1, EMBEDDING_SIZE + 1, dtype=np.float64)[None])
    assert vector.shape == (EMBEDDING_SIZE,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="not all zero"):
        normalize_embedding(np.zeros(EMBEDDING_SIZE))
    with pytest.raises(ValueError, match=r"\(128,\)"):
        normalize_embedding(np.ones(128))


def test_params_reach_the_insightface_backend(tmp_path):
    from tasks.analyzers import ANALYZERS, identity_space
    from tasks.extract import FaceOptions, SideOptions, create_face_analyzer
    from tasks.insightface_analyzer import InsightFaceAnalyzer

    assert ANALYZERS["insightface"] is InsightFaceAnalyzer and identity_space("insightface").embedding_size == 512
    faces = FaceOptions(analyzer="insightface", model_pack=str(tmp_path / "packs" / "buffalo_l"))
    # without the package: what to install; with it but no pack: where to put which files
    with pytest.raises((InsightFaceMissingError, ModelPackError), match="pip install insightface|buffalo_l"):
        create_face_analyzer(faces, SideOptions())
