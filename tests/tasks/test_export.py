"""Exporting tiny DF and LIAE-UD models as .dfm (fp32 and fp16), checked on real faces against torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto

from model.config import ModelConfig
from model.networks import SwapAutoencoder, build_model
from tasks.dfm_check import DFM_INPUT_NAME, DFM_OUTPUT_NAMES, TOLERANCES, DfmError, check_dfm
from tasks.export import ExportError, export_dfm, load_face_crops

RESOLUTION = 32
ARCHITECTURES = ["df", "liae-ud"]
PHOTOS = ["photos/identities/barack_obama/obama.jpg", "photos/identities/joe_biden/biden.jpg"]


def build_tiny_model(archi: str, seed: int = 0, resolution: int = RESOLUTION) -> SwapAutoencoder:
    torch.manual_seed(seed)
    return build_model(ModelConfig(archi=archi, resolution=resolution, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=8))


def declared_shape(value_info: onnx.ValueInfoProto) -> list[int | str]:
    dims = value_info.type.tensor_type.shape.dim
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in dims]


@pytest.fixture(scope="module")
def faces(media_dir: Path) -> np.ndarray:
    """Two real whole-face crops, aligned from dlib landmarks, (2, 32, 32, 3) BGR in [0, 1]."""
    return load_face_crops([media_dir / photo for photo in PHOTOS], "whole_face", RESOLUTION)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(request: pytest.FixtureRequest, faces: np.ndarray, tmp_path_factory: pytest.TempPathFactory):
    """(model, fp32 report, fp16 report) for one architecture, each file exported and checked on the faces."""
    model = build_tiny_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    fp32 = export_dfm(model, folder / "tiny.dfm", faces=faces, threads=1)
    fp16 = export_dfm(model, folder / "tiny-fp16.dfm", fp16=True, faces=faces, threads=1)
    return model, fp32, fp16


def test_faces_are_real_aligned_crops(faces: np.ndarray) -> None:
    assert faces.shape == (2, RESOLUTION, RESOLUTION, 3) and faces.dtype == np.float32
    assert 0 <= faces.min() and faces.max() <= 1 and faces.std() > 0.1
    assert not np.allclose(faces[0], faces[1])


def test_export_follows_the_dfm_contract(exported) -> None:
    model, report, _ = exported
    graph = onnx.load(str(report.path)).graph

    assert [value.name for value in graph.input] == [DFM_INPUT_NAME]
    assert declared_shape(graph.input[0]) == ["batch", RESOLUTION, RESOLUTION, 3]
    assert [value.name for value in graph.output] == list(DFM_OUTPUT_NAMES)
    assert [declared_shape(value) for value in graph.output] == [["batch", RESOLUTION, RESOLUTION, channels]
                                                                 for channels in (1, 3, 1)]
    assert all(value.type.tensor_type.elem_type == TensorProto.FLOAT for value in [*graph.input, *graph.output])
    assert report.real_faces and report.face_count == 2 and report.precision == "fp32"
    assert report.metadata["archi"] == model.config.archi and report.metadata["face_type"] == "whole_face"
    assert model.training, "export must leave the model in the mode it found it"
    assert sorted(entry.name for entry in report.path.parent.iterdir()) == ["tiny-fp16.dfm", "tiny.dfm"], \
        "temporary file left behind"


@pytest.mark.parametrize("batch_size", [1, 2])
def test_onnx_runtime_matches_torch_on_real_faces(exported, faces: np.ndarray, batch_size: int) -> None:
    model, report, _ = exported
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    exported_outputs = session.run(None, {DFM_INPUT_NAME: faces[:batch_size]})

    model.eval()
    try:
        with torch.inference_mode():
            expected = model.swap(torch.from_numpy(faces[:batch_size]).permute(0, 3, 1, 2))  # NCHW in, NCHW out
    finally:
        model.train()
    for name, got, want in zip(DFM_OUTPUT_NAMES, exported_outputs, expected, strict=True):
        want_nhwc = want.numpy().transpose(0, 2, 3, 1)
        assert got.shape == want_nhwc.shape, name
        np.testing.assert_allclose(got, want_nhwc, atol=1e-3, err_msg=name)
        assert 0.0 <= got.min() and got.max() <= 1.0
    assert 0.0 <= report.max_abs_diff <= 1e-3


def test_fp16_export_halves_the_file_and_stays_close(exported) -> None:
    model, fp32, fp16 = exported
    model_proto = onnx.load(str(fp16.path))
    weight_types = {initializer.data_type for initializer in model_proto.graph.initializer if initializer.dims}

    assert fp16.precision == "fp16" and fp16.metadata["precision"] == "fp16"
    assert TensorProto.FLOAT16 in weight_types and TensorProto.FLOAT not in weight_types
    assert [tensor.element_type for tensor in (*fp16.inputs, *fp16.outputs)] == ["float32"] * 4, \
        "DeepFaceLive feeds and reads float32"
    assert fp16.file_bytes < 0.55 * fp32.file_bytes
    assert 1e-6 < fp16.max_abs_diff <= TOLERANCES["fp16"], "really computed in float16, and close to torch"
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters()), "the model itself stays float32"


def test_check_catches_a_different_model(exported, faces: np.ndarray) -> None:
    model, report, _ = exported
    other = build_tiny_model(model.config.archi, seed=1)
    with pytest.raises(DfmError, match=r"tiny\.dfm: output '.*' differs from the torch model by"):
        check_dfm(report.path, faces, other, threads=1)


def test_check_catches_a_resolution_mismatch(exported) -> None:
    _, report, _ = exported
    with pytest.raises(DfmError, match=r"tiny\.dfm is 32px but the model is 64px"):
        check_dfm(report.path, model=build_tiny_model("df", resolution=64), threads=1)


def test_a_broken_model_is_not_written(faces: np.ndarray, tmp_path: Path) -> None:
    model = build_tiny_model("df")
    with torch.no_grad():
        model.decoder_src.face_out.bias.fill_(float("nan"))  # a collapsed model paints NaN
    expected = r"so .*nan\.dfm was not written: .*nan\.dfm: output 'out_celeb_face:0' holds \d+ NaN"
    with pytest.raises(ExportError, match=expected):
        export_dfm(model, tmp_path / "nan.dfm", faces=faces, threads=1)
    assert list(tmp_path.iterdir()) == [], "neither the file nor its temporary may be left"


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"folder .*no_such_folder does not exist"):
        export_dfm(build_tiny_model("df"), tmp_path / "no_such_folder" / "model.dfm")


def test_face_crops_come_from_videos_and_photos_without_faces_are_named(media_dir: Path) -> None:
    crops = load_face_crops([media_dir / "videos" / "talking_head_a.mp4"], "full", 16, count=2)
    assert crops.shape == (2, 16, 16, 3) and crops.dtype == np.float32
    with pytest.raises(DfmError, match=r"no face found in .*dogs\.jpg"):
        load_face_crops([media_dir / "photos" / "misc" / "dogs.jpg"], "full", 16)
