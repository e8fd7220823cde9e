"""Check a DeepFaceLive .dfm file (ONNX): names, layout, dtypes, a run on real faces, ranges, parity.

The .dfm contract, as DeepFaceLive's DFMModel reads it:
    input   "in_face:0"             float32 (N, R, R, 3) aligned BGR faces in [0, 1], N dynamic, R fixed
    input   "morph_value:0"         float32 (1,), only in models trained with a morph factor (AMP)
    outputs "out_face_mask:0"       float32 (N, R, R, 1)  the dst face's own mask
            "out_celeb_face:0"      float32 (N, R, R, 3)  the dst face painted as the src identity
            "out_celeb_face_mask:0" float32 (N, R, R, 1)  the mask of that painted face
all in [0, 1]. DeepFaceLive reads R from the input's declared shape, and the outputs by position
(``session.run(None, ...)``), so their order is part of the contract. It feeds float32 and resizes
the outputs with OpenCV, which cannot resize float16, so the input and the outputs stay float32 even
in a file whose weights and arithmetic are float16.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx
import onnxruntime
import torch

from tasks.align import FaceType
from tasks.onnx_damage import explain_unreadable_onnx

if TYPE_CHECKING:
    from model.networks import SwapAutoencoder

logger = logging.getLogger(__name__)

DFM_INPUT_NAME = "in_face:0"
MORPH_INPUT_NAME = "morph_value:0"
DEFAULT_MORPH_VALUE = 0.75  # what DeepFaceLive feeds until the user moves its slider
DFM_OUTPUT_NAMES = ("out_face_mask:0", "out_celeb_face:0", "out_celeb_face_mask:0")
DFM_OUTPUT_CHANNELS = {"out_face_mask:0": 1, "out_celeb_face:0": 3, "out_celeb_face_mask:0": 1}
FACE_TYPE_METADATA_KEY = "face_type"  # written by our exporter; DeepFaceLive ignores metadata
DEFAULT_FACE_TYPE: FaceType = "whole_face"
# Sigmoid outputs can overshoot [0, 1] by float rounding only.
RANGE_TOLERANCE = 1e-5
# Largest |ONNX Runtime - torch| allowed: float32 kernels differ by rounding (~1e-6 measured); a float16 file
# by its 11-bit mantissa (1.3e-3 measured on the trained demo model), so 1e-2 leaves room and still catches a
# file from another model (differences of 0.1 and more). Also the largest allowed batch vs one-face difference.
TOLERANCES = {"fp32": 1e-3, "fp16": 1e-2}
NOISE_FACES = 2
NOISE_SEED = 0
TIMING_RUNS = 5

Precision = Literal["fp32", "fp16"]


class DfmError(Exception):
    """A .dfm file breaks the DeepFaceLive contract or cannot be checked; the message names the file."""


@dataclass(frozen=True)
class TensorSummary:
    """A graph input or output as declared: name, element type and dims (int, symbolic name or '?')."""

    name: str
    element_type: str
    dims: tuple[int | str, ...]

    def __str__(self) -> str:
        return f"{self.name} {self.element_type} [{', '.join(str(dim) for dim in self.dims)}]"


@dataclass(frozen=True)
class DfmReport:
    """What ``check_dfm`` found in a file that passed."""

    path: Path
    resolution: int  # R, the side of the face crops the file takes
    precision: Precision  # "fp16" when the weights are float16
    file_bytes: int
    inputs: tuple[TensorSummary, ...]  # as declared in the graph
    outputs: tuple[TensorSummary, ...]
    face_count: int  # faces the file ran on
    real_faces: bool  # real aligned crops, or seeded noise
    milliseconds_per_face: float  # median one-face run on ONNX Runtime's CPU provider
    output_ranges: dict[str, tuple[float, float]]  # output name -> (min, max) over the faces
    max_abs_diff: float | None  # largest |ONNX Runtime - torch| over outputs and faces; None without a model
    tolerance: float | None  # the largest difference allowed; None without a model
    metadata: dict[str, str]  # the file's metadata_props


def load_onnx(path: Path, shown_as: Path | None = None) -> onnx.ModelProto:
    """Read and validate an ONNX file; errors name `shown_as` (default `path`).

    Raises:
        DfmError: the file is missing, empty, not ONNX, truncated or fails onnx.checker.
    """
    shown_as = shown_as or path
    if not path.is_file():
        raise DfmError(f"{shown_as} does not exist; check the path, or export the model first")
    try:
        model_proto = onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError, or OSError
        reason = explain_unreadable_onnx(path.read_bytes())
        raise DfmError(f"{shown_as} is not a readable ONNX file: {reason} ({error})") from error
    if not model_proto.graph.node and not model_proto.ir_version:
        raise DfmError(f"{shown_as} is not a readable ONNX file: {explain_unreadable_onnx(path.read_bytes())}")
    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise DfmError(f"{shown_as} fails ONNX validation ({error}); re-export it") from error
    return model_proto


def summarize_tensor(value_info: onnx.ValueInfoProto) -> TensorSummary:
    """The declared element type and dims of a graph input or output."""
    tensor_type = value_info.type.tensor_type
    dims = tuple(dim.dim_value if dim.HasField("dim_value") else dim.dim_param or "?" for dim in tensor_type.shape.dim)
    element_type = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else "?"
    return TensorSummary(value_info.name, element_type, dims)


def summarize_graph(graph: onnx.GraphProto) -> tuple[tuple[TensorSummary, ...], tuple[TensorSummary, ...]]:
    """(inputs, outputs) as declared; weights that older exporters also list as inputs are left out."""
    initializers = {initializer.name for initializer in graph.initializer}
    inputs = tuple(summarize_tensor(value) for value in graph.input if value.name not in initializers)
    return inputs, tuple(summarize_tensor(value) for value in graph.output)


def check_layout(tensor: TensorSummary, channels: int, resolution: int | None, path: Path) -> None:
    """Check a tensor is float32 (N, R, R, channels), N dynamic; R must be fixed unless `resolution` is given.

    An output may leave dims undeclared or symbolic (DeepFaceLive only reads the input's); the run checks them.

    Raises:
        DfmError: naming the file and the tensor, and NCHW layouts as such.
    """
    name, dims = tensor.name, tensor.dims
    if tensor.element_type != "float32":
        raise DfmError(f"{path}: tensor {name!r} is {tensor.element_type}, expected float32 (DeepFaceLive feeds and "
                       "reads float32, also in fp16 files); re-export it with float32 inputs and outputs")
    if resolution is not None and not dims:
        return
    if len(dims) != 4:
        raise DfmError(f"{path}: tensor {name!r} has shape {list(dims)}, expected 4 dims (N, R, R, {channels})")
    batch, height, width, depth = dims
    if height == channels and depth != channels and width == depth:
        raise DfmError(f"{path}: tensor {name!r} has shape {list(dims)}: channels first (NCHW); DeepFaceLive uses "
                       f"channels last (NHWC), (N, R, R, {channels}): export the graph with NHWC tensors")
    if isinstance(batch, int):
        raise DfmError(f"{path}: tensor {name!r} has a fixed batch of {batch}; the batch axis must be dynamic")
    if resolution is None:
        if not isinstance(height, int) or height <= 0 or height != width or depth != channels:
            raise DfmError(f"{path}: tensor {name!r} has shape {list(dims)}, expected (N, R, R, {channels}) with a "
                           "fixed R (DeepFaceLive reads the face size from it)")
        return
    for dim, wanted in ((height, resolution), (width, resolution), (depth, channels)):
        if isinstance(dim, int) and dim != wanted:
            raise DfmError(f"{path}: output {name!r} has shape {list(dims)}, expected (N, {resolution}, {resolution}, "
                           f"{channels}) for a {resolution}px input")


def check_dfm_graph(model_proto: onnx.ModelProto, shown_as: Path) -> int:
    """Check the graph's input/output names, order, dtypes and shapes; return the resolution R.

    Raises:
        DfmError: naming the file and the offending tensor.
    """
    inputs, outputs = summarize_graph(model_proto.graph)
    input_names = [tensor.name for tensor in inputs]
    if input_names not in ([DFM_INPUT_NAME], [DFM_INPUT_NAME, MORPH_INPUT_NAME]):
        raise DfmError(f"{shown_as}: inputs are {input_names}, expected [{DFM_INPUT_NAME!r}] (optionally followed by "
                       f"{MORPH_INPUT_NAME!r}); DeepFaceLive finds the face input by that name: re-export it")
    output_names = [tensor.name for tensor in outputs]
    if output_names != list(DFM_OUTPUT_NAMES):
        raise DfmError(f"{shown_as}: outputs are {output_names}, expected {list(DFM_OUTPUT_NAMES)} in that order "
                       "(DeepFaceLive reads them by position)")
    check_layout(inputs[0], 3, None, shown_as)
    resolution = int(inputs[0].dims[1])
    morph = inputs[1] if len(inputs) == 2 else None
    if morph is not None and (morph.element_type != "float32" or len(morph.dims) != 1 or isinstance(morph.dims[0], int)
                              and morph.dims[0] != 1):
        raise DfmError(f"{shown_as}: input {MORPH_INPUT_NAME!r} is {inputs[1]}, expected float32 [1]")
    for output in outputs:
        check_layout(output, DFM_OUTPUT_CHANNELS[output.name], resolution, shown_as)
    return resolution


def open_session(path: Path, threads: int, shown_as: Path) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session; `threads` 0 lets ONNX Runtime choose.

    Raises:
        DfmError: ONNX Runtime cannot load the file.
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: its warnings would interleave with our report
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise DfmError(f"ONNX Runtime cannot load {shown_as} ({error}); re-export it") from error


def run_session(session: onnxruntime.InferenceSession, faces: np.ndarray, shown_as: Path) -> list[np.ndarray]:
    """The three outputs for (N, R, R, 3) float32 faces, fed as DeepFaceLive feeds them.

    Raises:
        DfmError: ONNX Runtime fails to run the file.
    """
    feeds = {DFM_INPUT_NAME: faces}
    if len(session.get_inputs()) == 2:
        feeds[MORPH_INPUT_NAME] = np.float32([DEFAULT_MORPH_VALUE])
    try:
        return session.run(None, feeds)
    except Exception as error:
        message = f"{shown_as} fails to run on {len(faces)} faces in ONNX Runtime ({error}); re-export it"
        raise DfmError(message) from error


def check_outputs(outputs: list[np.ndarray], face_count: int, resolution: int,
                  shown_as: Path) -> dict[str, tuple[float, float]]:
    """Check every output's shape, dtype and [0, 1] range; return name -> (min, max).

    Raises:
        DfmError: naming the file and the output.
    """
    ranges = {}
    for name, output in zip(DFM_OUTPUT_NAMES, outputs, strict=True):
        expected_shape = (face_count, resolution, resolution, DFM_OUTPUT_CHANNELS[name])
        if output.shape != expected_shape or output.dtype != np.float32:
            raise DfmError(f"{shown_as}: output {name!r} came back {output.dtype} {output.shape} for {face_count} "
                           f"faces, expected float32 {expected_shape}")
        not_finite = int(np.count_nonzero(~np.isfinite(output)))
        if not_finite:
            raise DfmError(f"{shown_as}: output {name!r} holds {not_finite} NaN or infinite values of {output.size}, "
                           "expected [0, 1]; the model has diverged: export an earlier checkpoint")
        low, high = float(output.min()), float(output.max())
        if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise DfmError(f"{shown_as}: output {name!r} spans [{low:.4g}, {high:.4g}], expected [0, 1] "
                           "(end the face and masks with a sigmoid)")
        ranges[name] = (low, high)
    return ranges


def measure_milliseconds_per_face(session: onnxruntime.InferenceSession, face: np.ndarray, shown_as: Path) -> float:
    """Median time of a one-face run (DeepFaceLive swaps one face per run), after a warm-up run."""
    run_session(session, face, shown_as)
    times = []
    for _ in range(TIMING_RUNS):
        start = time.perf_counter()
        run_session(session, face, shown_as)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def swap_with_torch(model: SwapAutoencoder, faces: np.ndarray) -> list[np.ndarray]:
    """The three .dfm outputs, (N, R, R, C) each, computed by torch for (N, R, R, 3) faces; the mode is kept."""
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.inference_mode():
            outputs = model.swap(torch.from_numpy(faces).to(device).permute(0, 3, 1, 2))  # NHWC -> NCHW
    finally:
        model.train(was_training)
    return [output.permute(0, 2, 3, 1).float().cpu().numpy() for output in outputs]  # NCHW -> NHWC


def find_largest_difference(outputs: list[np.ndarray], references: list[np.ndarray]) -> tuple[str, float]:
    """(output name, max |output - reference|) for the output that differs most."""
    differences = {name: float(np.abs(output - reference).max())
                   for name, output, reference in zip(DFM_OUTPUT_NAMES, outputs, references, strict=True)}
    worst = max(differences, key=differences.__getitem__)
    return worst, differences[worst]


def check_faces_array(faces: np.ndarray, resolution: int, shown_as: Path) -> None:
    """Raise ValueError unless `faces` is float32 (N >= 1, R, R, 3) in [0, 1]."""
    if faces.dtype != np.float32 or faces.ndim != 4 or faces.shape[1:] != (resolution, resolution, 3) or not len(faces):
        raise ValueError(f"faces to check {shown_as} with must be float32 (N, {resolution}, {resolution}, 3), "
                         f"got {faces.dtype} {faces.shape}")
    if faces.min() < 0 or faces.max() > 1:
        raise ValueError(f"faces to check {shown_as} with must lie in [0, 1], "
                         f"got [{faces.min():.3g}, {faces.max():.3g}]")


def check_dfm(path: Path, faces: np.ndarray | None = None, model: SwapAutoencoder | None = None,
              tolerance: float | None = None, threads: int = 0, shown_as: Path | None = None) -> DfmReport:
    """Check that a .dfm file honours the DeepFaceLive contract, runs, and (optionally) matches its torch model.

    Args:
        path: the .dfm file.
        faces: (N, R, R, 3) float32 BGR faces in [0, 1] at the file's resolution (tasks.export.load_face_crops);
            None runs it on seeded noise, which checks everything but how it treats real faces.
        model: when given, the model the file was exported from; its outputs are compared.
        tolerance: largest |ONNX Runtime - torch| allowed; None takes TOLERANCES of the file's precision.
        threads: ONNX Runtime's intra-op threads; 0 lets it choose.
        shown_as: the name errors and the report give the file (default `path`).

    Returns:
        The report; its max_abs_diff is None without a model.

    Raises:
        DfmError: naming the file and the fault: missing, empty, not ONNX, truncated, invalid, wrong names,
            order, dtypes or layout (NCHW), fixed batch, failed run, faces mixed across the batch, outputs
            outside [0, 1], another resolution than `model`, or farther than `tolerance` from `model`.
        ValueError: `faces` is not (N, R, R, 3) float32 in [0, 1].
    """
    path = Path(path)
    shown_as = Path(shown_as or path)
    model_proto = load_onnx(path, shown_as)
    resolution = check_dfm_graph(model_proto, shown_as)
    if model is not None and model.config.resolution != resolution:
        raise DfmError(f"{shown_as} is {resolution}px but the model is {model.config.resolution}px; "
                       "it was exported from another model: re-export it")
    real_faces = faces is not None
    if faces is None:  # seeded uniform noise shaped like faces
        faces = np.random.default_rng(NOISE_SEED).random((NOISE_FACES, resolution, resolution, 3), dtype=np.float32)
    check_faces_array(faces, resolution, shown_as)

    session = open_session(path, threads, shown_as)
    batch_outputs = run_session(session, faces, shown_as)
    output_ranges = check_outputs(batch_outputs, len(faces), resolution, shown_as)
    weight_types = {initializer.data_type for initializer in model_proto.graph.initializer}
    precision: Precision = "fp16" if onnx.TensorProto.FLOAT16 in weight_types else "fp32"
    tolerance = TOLERANCES[precision] if tolerance is None else tolerance
    # One face per run, as DeepFaceLive runs it; a graph that mixes faces across the batch differs here.
    single_runs = [run_session(session, faces[index:index + 1], shown_as) for index in range(len(faces))]
    outputs = [np.concatenate(parts) for parts in zip(*single_runs, strict=True)]
    name, difference = find_largest_difference(batch_outputs, outputs)
    if difference > tolerance:
        raise DfmError(f"{shown_as}: output {name!r} for a batch of {len(faces)} faces differs from one face at a "
                       f"time by {difference:.3g} (> {tolerance:g}); the graph mixes faces across the batch axis")
    milliseconds_per_face = measure_milliseconds_per_face(session, faces[:1], shown_as)

    max_abs_diff = None
    if model is not None:
        name, max_abs_diff = find_largest_difference(outputs, swap_with_torch(model, faces))
        if max_abs_diff > tolerance:
            raise DfmError(f"{shown_as}: output {name!r} differs from the torch model by {max_abs_diff:.3g} "
                           f"(> {tolerance:g}); the file does not reproduce the model: re-export it")
    inputs, outputs = summarize_graph(model_proto.graph)
    report = DfmReport(
        path=shown_as, resolution=resolution, precision=precision, file_bytes=path.stat().st_size, inputs=inputs,
        outputs=outputs, face_count=len(faces), real_faces=real_faces,
        milliseconds_per_face=milliseconds_per_face, output_ranges=output_ranges, max_abs_diff=max_abs_diff,
        tolerance=tolerance if model is not None else None,
        metadata={entry.key: entry.value for entry in model_proto.metadata_props},
    )
    logger.info("checked %s: %dpx %s, %.2f ms/face, max difference to torch %s", shown_as, resolution, precision,
                milliseconds_per_face, max_abs_diff)
    return report
