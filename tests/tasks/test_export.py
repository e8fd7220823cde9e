"""Exporting a (tiny) swap model as .dfm and checking .dfm files, good and broken."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

from model.config import ModelConfig
from model.networks import SwapAutoencoder, build_model
from tasks.export import DFM_INPUT_NAME, DFM_OUTPUT_NAMES, ExportError, check_dfm, export_dfm

TINY = ModelConfig(archi="df", resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=8)


def build_tiny_model(seed: int) -> SwapAutoencoder:
    torch.manual_seed(seed)
    return build_model(TINY)


@pytest.fixture(scope="module")
def model() -> SwapAutoencoder:
    return build_tiny_model(seed=0)


@pytest.fixture(scope="module")
def dfm_path(model: SwapAutoencoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_dfm(model, tmp_path_factory.mktemp("export") / "tiny.dfm")


def declared_shape(value_info: onnx.ValueInfoProto) -> list[int | str]:
    dims = value_info.type.tensor_type.shape.dim
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in dims]


def write_fake_dfm(path: Path, input_name: str = DFM_INPUT_NAME, face_gain: float = 1.0) -> Path:
    """A hand-made 8px .dfm: mask = mean colour, celeb face = input * face_gain."""
    faces = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 8, 8, 3])
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 8, 8, channels])
        for name, channels in zip(DFM_OUTPUT_NAMES, (1, 3, 1), strict=True)
    ]
    gain = helper.make_tensor("gain", TensorProto.FLOAT, [], [face_gain])
    nodes = [
        helper.make_node("ReduceMean", [input_name], [DFM_OUTPUT_NAMES[0]], axes=[3], keepdims=1),
        helper.make_node("Mul", [input_name, "gain"], [DFM_OUTPUT_NAMES[1]]),
        helper.make_node("Identity", [DFM_OUTPUT_NAMES[0]], [DFM_OUTPUT_NAMES[2]]),
    ]
    graph = helper.make_graph(nodes, "fake_dfm", [faces], outputs, initializer=[gain])
    # IR 8 is what opset 17 needs; helper.make_model would otherwise stamp its newest IR.
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_export_follows_the_dfm_contract(dfm_path: Path, model: SwapAutoencoder) -> None:
    graph = onnx.load(str(dfm_path)).graph

    assert [value.name for value in graph.input] == [DFM_INPUT_NAME]
    assert declared_shape(graph.input[0]) == ["batch", 32, 32, 3]
    assert [value.name for value in graph.output] == list(DFM_OUTPUT_NAMES)
    assert [declared_shape(value) for value in graph.output] == [
        ["batch", 32, 32, 1],
        ["batch", 32, 32, 3],
        ["batch", 32, 32, 1],
    ]
    assert all(value.type.tensor_type.elem_type == TensorProto.FLOAT for value in [*graph.input, *graph.output])
    assert model.training, "export must leave the model in the mode it found it"
    assert [entry.name for entry in dfm_path.parent.iterdir()] == ["tiny.dfm"], "temporary file left behind"


def test_check_reports_resolution_and_parity(dfm_path: Path, model: SwapAutoencoder) -> None:
    report = check_dfm(dfm_path, model)
    assert report["resolution"] == 32
    assert report["outputs"] == list(DFM_OUTPUT_NAMES)
    assert 0.0 <= report["max_abs_diff"] <= 1e-3
    assert check_dfm(dfm_path)["max_abs_diff"] is None


@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnx_runtime_matches_torch(dfm_path: Path, model: SwapAutoencoder, batch_size: int) -> None:
    faces = np.random.default_rng(batch_size).random((batch_size, 32, 32, 3), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(dfm_path), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == list(DFM_OUTPUT_NAMES)

    exported = session.run(None, {DFM_INPUT_NAME: faces})

    model.eval()
    try:
        with torch.inference_mode():
            expected = model.swap(torch.from_numpy(faces).permute(0, 3, 1, 2))  # NCHW in, NCHW out
    finally:
        model.train()
    for name, got, want in zip(DFM_OUTPUT_NAMES, exported, expected, strict=True):
        want_nhwc = want.numpy().transpose(0, 2, 3, 1)
        assert got.shape == want_nhwc.shape, name
        np.testing.assert_allclose(got, want_nhwc, atol=1e-3, err_msg=name)
        assert 0.0 <= got.min() and got.max() <= 1.0


def test_check_catches_a_different_model(dfm_path: Path) -> None:
    with pytest.raises(ExportError, match=r"tiny\.dfm: output '.*' differs from the torch model"):
        check_dfm(dfm_path, build_tiny_model(seed=1))


def test_check_catches_a_resolution_mismatch(dfm_path: Path) -> None:
    torch.manual_seed(0)
    larger = build_model(ModelConfig(resolution=48, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=8))
    with pytest.raises(ExportError, match=r"tiny\.dfm is 32px but the model is 48px"):
        check_dfm(dfm_path, larger)


def test_check_accepts_a_hand_made_dfm(tmp_path: Path) -> None:
    report = check_dfm(write_fake_dfm(tmp_path / "fake.dfm"))
    assert report["resolution"] == 8 and report["max_abs_diff"] is None


def test_check_catches_a_renamed_input(tmp_path: Path) -> None:
    path = write_fake_dfm(tmp_path / "renamed.dfm", input_name="input_face")
    expected = r"renamed\.dfm: inputs are \['input_face'\], expected exactly \['in_face:0'\]"
    with pytest.raises(ExportError, match=expected):
        check_dfm(path)


def test_check_catches_swapped_outputs(dfm_path: Path, tmp_path: Path) -> None:
    model_proto = onnx.load(str(dfm_path))
    outputs = list(model_proto.graph.output)
    del model_proto.graph.output[:]
    model_proto.graph.output.extend([outputs[1], outputs[0], outputs[2]])
    path = tmp_path / "swapped.dfm"
    onnx.save(model_proto, str(path))
    with pytest.raises(ExportError, match=r"swapped\.dfm: outputs are \['out_celeb_face:0', 'out_face_mask:0'"):
        check_dfm(path)


def test_check_catches_a_fixed_batch(tmp_path: Path) -> None:
    model_proto = onnx.load(str(write_fake_dfm(tmp_path / "fixed.dfm")))
    model_proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model_proto, str(tmp_path / "fixed.dfm"))
    with pytest.raises(ExportError, match=r"fixed\.dfm: tensor 'in_face:0' has a fixed batch of 1"):
        check_dfm(tmp_path / "fixed.dfm")


def test_check_catches_outputs_out_of_range(tmp_path: Path) -> None:
    path = write_fake_dfm(tmp_path / "bright.dfm", face_gain=3.0)
    with pytest.raises(ExportError, match=r"bright\.dfm: output 'out_celeb_face:0' spans .* expected \[0, 1\]"):
        check_dfm(path)


def test_check_catches_a_truncated_file(dfm_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.dfm"
    path.write_bytes(dfm_path.read_bytes()[: dfm_path.stat().st_size // 2])
    with pytest.raises(ExportError, match=r"truncated\.dfm is not a readable ONNX file"):
        check_dfm(path)


def test_missing_files_and_folders_are_named(model: SwapAutoencoder, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"absent\.dfm does not exist"):
        check_dfm(tmp_path / "absent.dfm")
    with pytest.raises(ExportError, match=r"folder .*no_such_folder does not exist"):
        export_dfm(model, tmp_path / "no_such_folder" / "model.dfm")
