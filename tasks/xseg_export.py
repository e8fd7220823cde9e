"""Export a trained XSeg network as ONNX (exports/xseg.onnx), checked with ONNX Runtime against torch.

The file follows the layout of DeepFaceLive's models: input ``in_face:0`` float32 NHWC
(N, R, R, 3), BGR in [0, 1], N dynamic; output ``out_mask:0`` float32 (N, R, R, 1) in [0, 1], the
face probability. It is written under a temporary name, run with ONNX Runtime on the given faces
(plus a batch of two, for the dynamic N) and compared with the torch network; only a file within
``XSEG_TOLERANCE`` of torch takes its final name.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from model.xseg import XsegNetwork
from tasks.dfm_check import load_onnx, open_session
from tasks.export import BATCH_AXIS_NAME, EXAMPLE_SEED, LEGACY_EXPORTER_NOTICES, ExportError

logger = logging.getLogger(__name__)

XSEG_INPUT_NAME = "in_face:0"
XSEG_OUTPUT_NAME = "out_mask:0"
XSEG_TOLERANCE = 1e-3  # largest |ONNX Runtime - torch| allowed, in mask units (0..1)
GROUP_NORM_GUARD_NOTICE = r"Converting a tensor to a Python boolean might cause the trace to be incorrect"


@dataclass(frozen=True)
class XsegExportReport:
    path: Path
    resolution: int
    file_bytes: int
    face_count: int
    real_faces: bool  # checked on real faces (True) or on seeded noise
    max_abs_diff: float
    milliseconds_per_face: float  # ONNX Runtime, the check's faces in one batch


class XsegOnnxModule(nn.Module):
    """The network with DeepFaceLive's layout: (N, R, R, 3) float32 in, (N, R, R, 1) float32 out."""

    def __init__(self, model: XsegNetwork) -> None:
        super().__init__()
        self.model = model

    def forward(self, faces: Tensor) -> Tensor:
        return self.model(faces.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # NHWC -> NCHW -> (N, 1, R, R) -> NHWC


def check_faces(faces: np.ndarray | None, resolution: int) -> tuple[np.ndarray, bool]:
    """The faces to check on as (N, R, R, 3) float32, and whether they are real; seeded noise when None."""
    if faces is None:
        noise = np.random.default_rng(EXAMPLE_SEED).random((2, resolution, resolution, 3), dtype=np.float32)
        return noise, False
    if faces.ndim != 4 or faces.shape[1:] != (resolution, resolution, 3):
        raise ExportError(f"XSeg check faces must be (N, {resolution}, {resolution}, 3), got {faces.shape}")
    return np.ascontiguousarray(faces, dtype=np.float32), True


def compare_with_torch(path: Path, model: XsegNetwork, faces: np.ndarray, threads: int, shown_as: Path) -> tuple[float, float]:
    """Run the file on the faces (all at once, then the first two as a batch) -> (max |onnx - torch|, ms per face).

    Raises:
        ExportError: the file's output has the wrong shape or range, or differs from torch beyond the tolerance.
    """
    session = open_session(path, threads, shown_as)
    started = time.perf_counter()
    outputs = session.run([XSEG_OUTPUT_NAME], {XSEG_INPUT_NAME: faces})[0]
    milliseconds = 1000 * (time.perf_counter() - started) / len(faces)
    pair = np.concatenate([faces, faces])[:2]
    pair_outputs = session.run([XSEG_OUTPUT_NAME], {XSEG_INPUT_NAME: pair})[0]
    resolution = faces.shape[1]
    for result, count in ((outputs, len(faces)), (pair_outputs, 2)):
        if result.shape != (count, resolution, resolution, 1) or result.dtype != np.float32:
            raise ExportError(f"{shown_as}: output {XSEG_OUTPUT_NAME} is {result.dtype} {result.shape} for {count} "
                              f"faces, expected float32 ({count}, {resolution}, {resolution}, 1)")
        if not (np.isfinite(result).all() and result.min() >= 0.0 and result.max() <= 1.0):
            raise ExportError(f"{shown_as}: output {XSEG_OUTPUT_NAME} leaves [0, 1] or is not finite")
    with torch.inference_mode():
        module = XsegOnnxModule(model.eval())
        expected = module(torch.from_numpy(faces).to(next(model.parameters()).device)).float().cpu().numpy()
    difference = float(max(np.abs(outputs - expected).max(), np.abs(pair_outputs - expected[:2]).max()))
    if difference > XSEG_TOLERANCE:
        raise ExportError(f"{shown_as} differs from the torch network by {difference:.2e} (more than "
                          f"{XSEG_TOLERANCE:.0e}); the export is wrong: report it with the checkpoint")
    return difference, milliseconds


def export_xseg_onnx(model: XsegNetwork, path: Path, faces: np.ndarray | None = None, opset: int = 17,
                     threads: int = 0) -> XsegExportReport:
    """Write the network to ``path`` as ONNX and check it against torch; the file appears only if it passes.

    Args:
        model: The trained network; its config fixes R.
        path: Where to write, e.g. exports/xseg.onnx; its folder must exist.
        faces: (N, R, R, 3) float32 BGR faces in [0, 1] to check on; None checks on seeded noise.
        opset: The ONNX opset.
        threads: ONNX Runtime threads for the check; 0 lets it choose.

    Returns:
        The check's figures.

    Raises:
        ExportError: the folder is missing, the exporter fails, or the file fails its check.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    resolution = model.config.resolution
    faces, real = check_faces(faces, resolution)
    device = next(model.parameters()).device
    example = torch.rand((1, resolution, resolution, 3), generator=torch.Generator().manual_seed(EXAMPLE_SEED))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=LEGACY_EXPORTER_NOTICES, category=DeprecationWarning)
            # group norm's "one value per channel?" guard is traced as a constant: true for any batch size
            warnings.filterwarnings("ignore", message=GROUP_NORM_GUARD_NOTICE, category=torch.jit.TracerWarning)
            torch.onnx.export(XsegOnnxModule(model), (example.to(device),), str(temporary), input_names=[XSEG_INPUT_NAME],
                              output_names=[XSEG_OUTPUT_NAME], opset_version=opset, dynamo=False,
                              dynamic_axes={name: {0: BATCH_AXIS_NAME} for name in (XSEG_INPUT_NAME, XSEG_OUTPUT_NAME)})
        model_proto = onnx.load(str(temporary))
        describe_xseg(model_proto, model)
        onnx.save(model_proto, str(temporary))
        load_onnx(temporary, shown_as=path)  # onnx.checker with full shape inference
        difference, milliseconds = compare_with_torch(temporary, model, faces, threads, path)
        os.replace(temporary, path)
    except ExportError:
        raise
    except Exception as error:
        raise ExportError(f"exporting the XSeg network to {path} failed: {error}") from error
    finally:
        temporary.unlink(missing_ok=True)
        model.train(was_training)
    report = XsegExportReport(path, resolution, path.stat().st_size, len(faces), real, difference, milliseconds)
    logger.info("exported %dpx XSeg to %s (%d bytes, max |onnx - torch| %.2e on %d %s faces)", resolution, path,
                report.file_bytes, difference, len(faces), "real" if real else "noise")
    return report


def describe_xseg(model_proto: onnx.ModelProto, model: XsegNetwork) -> None:
    """Declare the output as (batch, R, R, 1) and record what the file is in its metadata."""
    config = model.config
    shape = model_proto.graph.output[0].type.tensor_type.shape
    del shape.dim[:]
    shape.dim.add().dim_param = BATCH_AXIS_NAME
    for size in (config.resolution, config.resolution, 1):
        shape.dim.add().dim_value = size
    onnx.helper.set_model_props(model_proto, {"producer": "faceflow", "network": "xseg", "face_type": config.face_type,
                                              "resolution": str(config.resolution), "input": "BGR 0..1 NHWC"})
