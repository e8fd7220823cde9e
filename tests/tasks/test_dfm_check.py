"""Checking .dfm files: hand-made good ones pass, each kind of broken one fails naming the file and the fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tasks.dfm_check import (DEFAULT_MORPH_VALUE, DFM_INPUT_NAME, DFM_OUTPUT_NAMES, MORPH_INPUT_NAME, DfmError,
                             check_dfm, check_dfm_graph)
from tasks.onnx_damage import explain_unreadable_onnx

SIZE = 8


def write_fake_dfm(path: Path, input_name: str = DFM_INPUT_NAME, face_gain: float = 1.0, channels_first: bool = False,
                   input_type: int = TensorProto.FLOAT, morph: bool = False, batch: int | str = "batch",
                   mask_axis: int | None = None, mask_shape: list | None = None, mix_batch: bool = False) -> Path:
    """A hand-made .dfm: mask = mean colour, celeb face = input * face_gain (* morph value), celeb mask = mask.

    The keyword arguments each break one part of the contract (or, for `morph`, use an optional part of it).
    """
    channel_axis = 1 if channels_first else 3
    face_dims = [batch, 3, SIZE, SIZE] if channels_first else [batch, SIZE, SIZE, 3]
    mask_dims = [batch, 1, SIZE, SIZE] if channels_first else [batch, SIZE, SIZE, 1]
    inputs = [helper.make_tensor_value_info(input_name, input_type, face_dims)]
    nodes = [helper.make_node("Cast", [input_name], ["faces"], to=TensorProto.FLOAT)]
    initializers = [helper.make_tensor("gain", TensorProto.FLOAT, [], [face_gain])]
    nodes.append(helper.make_node("Mul", ["faces", "gain"], ["scaled"]))
    if morph:
        inputs.append(helper.make_tensor_value_info(MORPH_INPUT_NAME, TensorProto.FLOAT, [1]))
        nodes.append(helper.make_node("Mul", ["scaled", MORPH_INPUT_NAME], ["morphed"]))
    if mix_batch:  # each face brightened to at least the batch's mean face: it depends on the other faces
        nodes.append(helper.make_node("ReduceMean", ["faces"], ["batch_mean"], axes=[0], keepdims=1))
        nodes.append(helper.make_node("Max", ["scaled", "batch_mean"], ["mixed"]))
    nodes.append(helper.make_node("Identity", ["morphed" if morph else "mixed" if mix_batch else "scaled"],
                                  [DFM_OUTPUT_NAMES[1]]))
    nodes += [
        helper.make_node("ReduceMean", ["faces"], [DFM_OUTPUT_NAMES[0]], axes=[mask_axis or channel_axis], keepdims=1),
        helper.make_node("Identity", [DFM_OUTPUT_NAMES[0]], [DFM_OUTPUT_NAMES[2]]),
    ]
    mask_shape = mask_shape or mask_dims
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
               for name, shape in zip(DFM_OUTPUT_NAMES, (mask_shape, face_dims, mask_shape), strict=True)]
    graph = helper.make_graph(nodes, "fake_dfm", inputs, outputs, initializer=initializers)
    # IR 8 is what opset 17 needs; helper.make_model would otherwise stamp its newest IR.
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def check_fails(path: Path, pattern: str) -> None:
    with pytest.raises(DfmError, match=pattern):
        check_dfm(path, threads=1)


def test_a_hand_made_dfm_passes_with_a_report(tmp_path: Path) -> None:
    report = check_dfm(write_fake_dfm(tmp_path / "fake.dfm"), threads=1)

    assert report.resolution == SIZE and report.precision == "fp32" and report.path == tmp_path / "fake.dfm"
    assert [str(tensor) for tensor in report.inputs] == ["in_face:0 float32 [batch, 8, 8, 3]"]
    assert [tensor.name for tensor in report.outputs] == list(DFM_OUTPUT_NAMES)
    assert report.face_count == 2 and not report.real_faces and report.max_abs_diff is None and report.tolerance is None
    assert all(0 <= low <= high <= 1 for low, high in report.output_ranges.values())
    assert report.milliseconds_per_face > 0 and report.file_bytes == (tmp_path / "fake.dfm").stat().st_size


def test_a_morph_input_is_accepted_and_fed_as_deepfacelive_does(tmp_path: Path) -> None:
    report = check_dfm(write_fake_dfm(tmp_path / "amp.dfm", morph=True), threads=1)
    assert [tensor.name for tensor in report.inputs] == [DFM_INPUT_NAME, MORPH_INPUT_NAME]
    low, high = report.output_ranges["out_celeb_face:0"]
    assert 0.5 < high <= DEFAULT_MORPH_VALUE, "the celeb face is the input scaled by the morph value"


def test_real_faces_are_used_when_given(tmp_path: Path) -> None:
    faces = np.full((3, SIZE, SIZE, 3), 0.25, dtype=np.float32)
    report = check_dfm(write_fake_dfm(tmp_path / "fake.dfm"), faces, threads=1)
    assert report.face_count == 3 and report.real_faces
    assert report.output_ranges["out_celeb_face:0"] == pytest.approx((0.25, 0.25))
    with pytest.raises(ValueError, match=r"must be float32 \(N, 8, 8, 3\), got float32 \(3, 8, 3, 8\)"):
        check_dfm(tmp_path / "fake.dfm", faces.transpose(0, 1, 3, 2))


def test_a_renamed_input_is_named(tmp_path: Path) -> None:
    path = write_fake_dfm(tmp_path / "renamed.dfm", input_name="input_face")
    check_fails(path, r"renamed\.dfm: inputs are \['input_face'\], expected \['in_face:0'\]")


def test_swapped_outputs_are_named(tmp_path: Path) -> None:
    model_proto = onnx.load(str(write_fake_dfm(tmp_path / "swapped.dfm")))
    outputs = list(model_proto.graph.output)
    del model_proto.graph.output[:]
    model_proto.graph.output.extend([outputs[1], outputs[0], outputs[2]])
    onnx.save(model_proto, str(tmp_path / "swapped.dfm"))
    check_fails(tmp_path / "swapped.dfm",
                r"swapped\.dfm: outputs are \['out_celeb_face:0', 'out_face_mask:0'.* in that order")


def test_a_channels_first_layout_is_called_nchw(tmp_path: Path) -> None:
    path = write_fake_dfm(tmp_path / "nchw.dfm", channels_first=True)
    check_fails(path, r"nchw\.dfm: tensor 'in_face:0' has shape \['batch', 3, 8, 8\]: channels first \(NCHW\)")


def test_a_float16_input_is_refused(tmp_path: Path) -> None:
    path = write_fake_dfm(tmp_path / "half.dfm", input_type=TensorProto.FLOAT16)
    check_fails(path, r"half\.dfm: tensor 'in_face:0' is float16, expected float32")


def test_a_fixed_batch_is_refused(tmp_path: Path) -> None:
    path = write_fake_dfm(tmp_path / "fixed.dfm", batch=1)
    check_fails(path, r"fixed\.dfm: tensor 'in_face:0' has a fixed batch of 1")


def test_a_declared_output_size_must_match_the_input(tmp_path: Path) -> None:
    path = write_fake_dfm(tmp_path / "sizes.dfm", mask_shape=["batch", 16, 16, 1])
    check_fails(path, r"sizes\.dfm fails ONNX validation .*Inferred shape and existing shape differ")
    # Where shape inference cannot see it (e.g. a shape computed at run time), the graph check still does.
    with pytest.raises(DfmError, match=r"sizes\.dfm: output 'out_face_mask:0' has shape \['batch', 16, 16, 1\], "
                                       r"expected \(N, 8, 8, 1\)"):
        check_dfm_graph(onnx.load(str(path)), path)


def test_an_undeclared_output_shape_is_checked_by_running(tmp_path: Path) -> None:
    # The mask averages over the width, (N, 8, 1, 3), and its declared dims are all symbolic.
    path = write_fake_dfm(tmp_path / "width.dfm", mask_axis=2, mask_shape=["batch", "height", "width", "channels"])
    check_fails(path, r"width\.dfm: output 'out_face_mask:0' came back float32 \(2, 8, 1, 3\) for 2 faces, "
                      r"expected float32 \(2, 8, 8, 1\)")


def test_faces_mixed_across_the_batch_are_refused(tmp_path: Path) -> None:
    path = write_fake_dfm(tmp_path / "mixing.dfm", mix_batch=True)
    check_fails(path, r"mixing\.dfm: output 'out_celeb_face:0' for a batch of 2 faces differs from one face at a time")


def test_outputs_out_of_range_are_refused(tmp_path: Path) -> None:
    path = write_fake_dfm(tmp_path / "bright.dfm", face_gain=3.0)
    check_fails(path, r"bright\.dfm: output 'out_celeb_face:0' spans \[.*\], expected \[0, 1\]")


def test_a_file_that_is_not_onnx_is_named(tmp_path: Path, media_dir: Path) -> None:
    path = tmp_path / "photo.dfm"
    path.write_bytes((media_dir / "photos/identities/barack_obama/obama.jpg").read_bytes())
    check_fails(path, r"photo\.dfm is not a readable ONNX file: it is not an ONNX model \(it starts with b'\\xff\\xd8")
    (tmp_path / "notes.dfm").write_text("hello\n")
    check_fails(tmp_path / "notes.dfm", r"notes\.dfm is not a readable ONNX file: it is not an ONNX model")


def test_a_truncated_file_is_called_truncated(tmp_path: Path) -> None:
    whole = write_fake_dfm(tmp_path / "whole.dfm").read_bytes()
    for cut in (len(whole) // 2, len(whole) - 1, 3):
        (tmp_path / "cut.dfm").write_bytes(whole[:cut])
        check_fails(tmp_path / "cut.dfm",
                    rf"cut\.dfm is not a readable ONNX file: it is truncated: .*(\({cut} bytes in all\)| of {cut};)")


def test_empty_missing_and_invalid_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty.dfm").write_bytes(b"")
    check_fails(tmp_path / "empty.dfm", r"empty\.dfm is not a readable ONNX file: the file is empty \(0 bytes\)")
    check_fails(tmp_path / "absent.dfm", r"absent\.dfm does not exist")
    model_proto = onnx.load(str(write_fake_dfm(tmp_path / "dangling.dfm")))
    model_proto.graph.node[1].input[1] = "no_such_tensor"
    onnx.save(model_proto, str(tmp_path / "dangling.dfm"))
    check_fails(tmp_path / "dangling.dfm", r"dangling\.dfm fails ONNX validation")


def test_explanations_tell_the_kinds_of_unreadable_bytes_apart() -> None:
    assert "empty" in explain_unreadable_onnx(b"")
    assert "not an ONNX model" in explain_unreadable_onnx(b"\x00" * 16)
    assert "truncated" in explain_unreadable_onnx(b"\x08\x08\x3a\x10abc")  # ir_version 8, then a cut graph record
