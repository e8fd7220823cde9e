"""exports/xseg.onnx: DeepFaceLive's layout, dynamic batch, and ONNX Runtime parity with torch on real faces."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from model.xseg import XsegConfig, build_xseg
from tasks.export import ExportError, load_face_crops
from tasks.xseg_export import XSEG_INPUT_NAME, XSEG_OUTPUT_NAME, XSEG_TOLERANCE, export_xseg_onnx

RESOLUTION = 64
PHOTOS = ["photos/identities/barack_obama/obama.jpg", "photos/identities/joe_biden/biden.jpg"]


def shape_of(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def faces(media_dir):
    """Two real whole-face crops, (2, 64, 64, 3) BGR in [0, 1]."""
    return load_face_crops([media_dir / photo for photo in PHOTOS], "whole_face", RESOLUTION)


def test_export_matches_torch_with_a_dynamic_batch(faces, tmp_path):
    torch.manual_seed(0)
    model = build_xseg(XsegConfig(resolution=RESOLUTION, dims=8)).train()
    report = export_xseg_onnx(model, tmp_path / "xseg.onnx", faces=faces, threads=1)
    assert model.training, "the network's mode is restored"
    assert report.real_faces and report.face_count == 2 and report.max_abs_diff <= XSEG_TOLERANCE
    assert [path.name for path in tmp_path.iterdir()] == ["xseg.onnx"], "no temporary file is left"

    graph = onnx.load(str(report.path)).graph
    assert [value.name for value in graph.input] == [XSEG_INPUT_NAME]
    assert [value.name for value in graph.output] == [XSEG_OUTPUT_NAME]
    assert shape_of(graph.input[0]) == ["batch", RESOLUTION, RESOLUTION, 3]
    assert shape_of(graph.output[0]) == ["batch", RESOLUTION, RESOLUTION, 1]

    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    batch = np.concatenate([faces, faces[::-1], faces])  # six faces: the batch size is free
    (masks,) = session.run(None, {XSEG_INPUT_NAME: batch})
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(batch).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert masks.shape == (6, RESOLUTION, RESOLUTION, 1) and masks.dtype == np.float32
    assert np.abs(masks - expected).max() <= XSEG_TOLERANCE
    assert 0 <= masks.min() and masks.max() <= 1 and masks.std() > 0


def test_noise_check_and_refusals_name_the_file(tmp_path):
    model = build_xseg(XsegConfig(resolution=RESOLUTION, dims=8))
    report = export_xseg_onnx(model, tmp_path / "noise.onnx", threads=1)
    assert not report.real_faces and report.max_abs_diff <= XSEG_TOLERANCE
    with pytest.raises(ExportError, match="missing/xseg.onnx: folder .* does not exist"):
        export_xseg_onnx(model, tmp_path / "missing" / "xseg.onnx")
    with pytest.raises(ExportError, match=r"must be \(N, 64, 64, 3\)"):
        export_xseg_onnx(model, tmp_path / "bad.onnx", faces=np.zeros((1, 32, 32, 3), np.float32))
    assert not (tmp_path / "bad.onnx").exists()
