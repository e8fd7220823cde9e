"""Export a trained swap model as a DeepFaceLive-compatible .dfm file (ONNX), and check one.

The .dfm contract that live-swapping apps load:
    input   "in_face:0"             float32 (N, R, R, 3) BGR in [0, 1], N dynamic, R fixed
    outputs "out_face_mask:0"       float32 (N, R, R, 1)  the dst face's own mask
            "out_celeb_face:0"      float32 (N, R, R, 3)  the dst face painted as the src identity
            "out_celeb_face_mask:0" float32 (N, R, R, 1)  the mask of that painted face
all in [0, 1], outputs in exactly this order (the apps read them by position as well as name).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from model.networks import SwapAutoencoder

logger = logging.getLogger(__name__)

DFM_INPUT_NAME = "in_face:0"
DFM_OUTPUT_NAMES = ("out_face_mask:0", "out_celeb_face:0", "out_celeb_face_mask:0")
DFM_OUTPUT_CHANNELS = {"out_face_mask:0": 1, "out_celeb_face:0": 3, "out_celeb_face_mask:0": 1}
BATCH_AXIS_NAME = "batch"
CHECK_BATCH_SIZE = 2
CHECK_SEED = 0
LEGACY_EXPORTER_NOTICES = r"(You are using the legacy TorchScript-based ONNX export|The feature will be removed)"
# Sigmoid outputs can overshoot [0, 1] by float rounding only.
RANGE_TOLERANCE = 1e-5


class ExportError(Exception):
    """A .dfm file could not be written, or a written one breaks the .dfm contract."""


class DfmModule(nn.Module):
    """The model's swap path with the .dfm layout: NHWC in, three NHWC tensors out."""

    def __init__(self, model: SwapAutoencoder) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # a fresh wrapper would otherwise claim training mode

    def forward(self, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        images = faces.permute(0, 3, 1, 2)  # (N, R, R, 3) -> (N, 3, R, R)
        dst_mask, celeb_face, celeb_mask = self.model.swap(images)
        # (N, C, R, R) -> (N, R, R, C)
        return dst_mask.permute(0, 2, 3, 1), celeb_face.permute(0, 2, 3, 1), celeb_mask.permute(0, 2, 3, 1)


def export_dfm(model: SwapAutoencoder, path: Path, opset: int = 17) -> Path:
    """Write `model`'s swap path to `path` as a .dfm (ONNX) file.

    The file appears atomically: it is written beside `path` under a temporary name, checked
    for the .dfm names and layout, then moved into place. The model's train/eval mode is
    restored afterwards.

    Args:
        model: the trained autoencoder; its config.resolution fixes the file's resolution.
        path: where to write, conventionally ending in ".dfm"; its folder must exist.
        opset: the ONNX opset to target.

    Returns:
        `path`.

    Raises:
        ExportError: if the folder is missing, or the exporter fails or yields a file that
            breaks the .dfm contract.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    resolution = model.config.resolution
    device = next(model.parameters()).device
    example = torch.rand((1, resolution, resolution, 3), generator=torch.Generator().manual_seed(CHECK_SEED))
    example = example.to(device)
    dynamic_axes = {name: {0: BATCH_AXIS_NAME} for name in (DFM_INPUT_NAME, *DFM_OUTPUT_NAMES)}

    # A hidden name beside the target, so os.replace stays on one file system.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter (dynamo=False) is chosen on purpose: it writes one
            # self-contained file in a fraction of a second; its deprecation notices are known.
            warnings.filterwarnings("ignore", message=LEGACY_EXPORTER_NOTICES, category=DeprecationWarning)
            torch.onnx.export(
                DfmModule(model),
                (example,),
                str(temporary),
                input_names=[DFM_INPUT_NAME],
                output_names=list(DFM_OUTPUT_NAMES),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
            )
        model_proto = onnx.load(str(temporary))
        pin_output_shapes(model_proto, resolution)
        onnx.save(model_proto, str(temporary))
        check_dfm_graph(load_onnx(temporary, shown_as=path), shown_as=path)
        os.replace(temporary, path)
    except ExportError:
        raise
    except Exception as error:
        raise ExportError(f"exporting the model to {path} failed: {error}") from error
    finally:
        temporary.unlink(missing_ok=True)  # only still there when something failed
        model.train(was_training)
    logger.info("exported %dpx model to %s (opset %d)", resolution, path, opset)
    return path


def pin_output_shapes(model_proto: onnx.ModelProto, resolution: int) -> None:
    """Declare every output as (batch, R, R, C) in place.

    The TorchScript exporter leaves the spatial dims of the permuted outputs symbolic although
    they are fixed; apps size their buffers from these declarations. load_onnx's full check
    re-infers the shapes, so a wrong declaration cannot slip through.
    """
    for output in model_proto.graph.output:
        shape = output.type.tensor_type.shape
        del shape.dim[:]
        shape.dim.add().dim_param = BATCH_AXIS_NAME
        for size in (resolution, resolution, DFM_OUTPUT_CHANNELS[output.name]):
            shape.dim.add().dim_value = size


def load_onnx(path: Path, shown_as: Path | None = None) -> onnx.ModelProto:
    """Read and validate an ONNX file; errors name `shown_as` (default `path`).

    Raises:
        ExportError: if the file is missing, unreadable or fails onnx.checker.
    """
    shown_as = shown_as or path
    if not path.is_file():
        raise ExportError(f"{shown_as} does not exist; export the model first")
    try:
        model_proto = onnx.load(str(path))
    except Exception as error:
        raise ExportError(f"{shown_as} is not a readable ONNX file ({error}); re-export it") from error
    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"{shown_as} fails ONNX validation ({error}); re-export it") from error
    return model_proto


def describe_tensor_type(value_info: onnx.ValueInfoProto) -> tuple[int, list[int | str]]:
    """(element type, dims) of a graph input/output; a dim is an int, a symbolic name, or ''."""
    tensor_type = value_info.type.tensor_type
    dims: list[int | str] = [
        dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in tensor_type.shape.dim
    ]
    return tensor_type.elem_type, dims


def check_tensor_layout(value_info: onnx.ValueInfoProto, channels: int, path: Path) -> int:
    """Check one tensor is float32 (dynamic N, R, R, channels); return R.

    Raises:
        ExportError: naming the file and tensor on any mismatch.
    """
    element_type, dims = describe_tensor_type(value_info)
    name = value_info.name
    if element_type != onnx.TensorProto.FLOAT:
        type_name = onnx.TensorProto.DataType.Name(element_type)
        raise ExportError(f"{path}: tensor {name!r} is {type_name}, expected FLOAT (float32); re-export it")
    if len(dims) != 4:
        raise ExportError(f"{path}: tensor {name!r} has shape {dims}, expected 4 dims (N, R, R, {channels})")
    batch, height, width, depth = dims
    if isinstance(batch, int):
        raise ExportError(f"{path}: tensor {name!r} has a fixed batch of {batch}; the batch axis must be dynamic")
    if not isinstance(height, int) or height <= 0 or height != width or depth != channels:
        raise ExportError(f"{path}: tensor {name!r} has shape {dims}, expected (N, R, R, {channels}) with a fixed R")
    return height


def check_dfm_graph(model_proto: onnx.ModelProto, shown_as: Path) -> int:
    """Check the graph's input/output names, order, dtypes and shapes; return the resolution R.

    Raises:
        ExportError: naming the file and the offending tensor.
    """
    graph = model_proto.graph
    initializers = {initializer.name for initializer in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    input_names = [value.name for value in inputs]
    if input_names != [DFM_INPUT_NAME]:
        raise ExportError(f"{shown_as}: inputs are {input_names}, expected exactly [{DFM_INPUT_NAME!r}]; re-export it")
    output_names = [value.name for value in graph.output]
    if output_names != list(DFM_OUTPUT_NAMES):
        raise ExportError(f"{shown_as}: outputs are {output_names}, expected {list(DFM_OUTPUT_NAMES)} in that order")
    resolution = check_tensor_layout(inputs[0], 3, shown_as)
    for output in graph.output:
        output_resolution = check_tensor_layout(output, DFM_OUTPUT_CHANNELS[output.name], shown_as)
        if output_resolution != resolution:
            raise ExportError(
                f"{shown_as}: output {output.name!r} is {output_resolution}px but the input is {resolution}px"
            )
    return resolution


def run_torch_swap(model: SwapAutoencoder, faces: np.ndarray) -> list[np.ndarray]:
    """The three .dfm outputs computed by torch for (N, R, R, 3) float32 faces, model in eval mode."""
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.inference_mode():
            outputs = DfmModule(model)(torch.from_numpy(faces).to(device))
    finally:
        model.train(was_training)
    return [output.cpu().numpy() for output in outputs]


def check_dfm(path: Path, model: SwapAutoencoder | None = None, atol: float = 1e-3) -> dict[str, Any]:
    """Check that a .dfm file honours the contract, runs, and (optionally) matches the torch model.

    Args:
        path: the .dfm file.
        model: when given, the model the file was exported from; outputs are compared with it.
        atol: the largest absolute difference allowed between ONNX Runtime and torch outputs.

    Returns:
        {"resolution": R, "max_abs_diff": largest difference to torch (None without a model),
         "outputs": the output names in order}.

    Raises:
        ExportError: naming the file and the offending tensor when the file is missing, unreadable,
            invalid, breaks the names/order/shapes/dtypes/dynamic batch, yields values outside [0, 1],
            was exported at another resolution than `model`, or differs from `model` by more than `atol`.
    """
    path = Path(path)
    resolution = check_dfm_graph(load_onnx(path), path)
    if model is not None and model.config.resolution != resolution:
        raise ExportError(f"{path} is {resolution}px but the model is {model.config.resolution}px; re-export it")
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ExportError(f"ONNX Runtime cannot load {path} ({error}); re-export it") from error

    faces = np.random.default_rng(CHECK_SEED).random((CHECK_BATCH_SIZE, resolution, resolution, 3), dtype=np.float32)
    outputs = session.run(list(DFM_OUTPUT_NAMES), {DFM_INPUT_NAME: faces})
    for name, output in zip(DFM_OUTPUT_NAMES, outputs, strict=True):
        expected_shape = (CHECK_BATCH_SIZE, resolution, resolution, DFM_OUTPUT_CHANNELS[name])
        if output.shape != expected_shape or output.dtype != np.float32:
            raise ExportError(
                f"{path}: output {name!r} came back {output.dtype} {output.shape}, expected float32 {expected_shape}"
            )
        if not np.all(np.isfinite(output)) or output.min() < -RANGE_TOLERANCE or output.max() > 1 + RANGE_TOLERANCE:
            raise ExportError(
                f"{path}: output {name!r} spans [{np.nanmin(output):.4g}, {np.nanmax(output):.4g}], expected [0, 1]"
            )

    max_abs_diff: float | None = None
    if model is not None:
        differences = {
            name: float(np.abs(output - reference).max())
            for name, output, reference in zip(DFM_OUTPUT_NAMES, outputs, run_torch_swap(model, faces), strict=True)
        }
        worst = max(differences, key=differences.__getitem__)
        max_abs_diff = differences[worst]
        if max_abs_diff > atol:
            raise ExportError(
                f"{path}: output {worst!r} differs from the torch model by {max_abs_diff:.3g} (> {atol:g}); "
                "the file does not reproduce the model, re-export it"
            )
    logger.info("checked %s: %dpx, max difference to torch %s", path, resolution, max_abs_diff)
    return {"resolution": resolution, "max_abs_diff": max_abs_diff, "outputs": list(DFM_OUTPUT_NAMES)}
