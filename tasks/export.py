"""Export a trained swap model as a DeepFaceLive .dfm file (ONNX), and gather real faces to check one with.

The contract is in tasks.dfm_check. An fp16 export stores float16 weights and computes in float16,
but keeps the float32 input and outputs DeepFaceLive feeds and reads: the casts are inside the
graph. A written file is checked in full (ONNX Runtime on the given faces, compared with the torch
model) under a temporary name before it takes its final name, so a broken export never lands.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from tasks.align import FaceType, compute_alignment, warp_to_crop
from tasks.detect import DlibAnalyzer
from tasks.dfm_check import (DFM_INPUT_NAME, DFM_OUTPUT_CHANNELS, DFM_OUTPUT_NAMES, FACE_TYPE_METADATA_KEY, DfmError,
                             DfmReport, check_dfm)
from tasks.images import IMAGE_SUFFIXES, read_image
from tasks.video import iter_frames

if TYPE_CHECKING:
    from model.networks import SwapAutoencoder

logger = logging.getLogger(__name__)

BATCH_AXIS_NAME = "batch"
EXAMPLE_SEED = 0
FRAMES_SAMPLED_PER_SECOND = 2.0
LEGACY_EXPORTER_NOTICES = r"(You are using the legacy TorchScript-based ONNX export|The feature will be removed)"


class ExportError(DfmError):
    """A .dfm file could not be written, or the written file breaks the .dfm contract or differs from its model."""


class DfmModule(nn.Module):
    """The model's swap path with the .dfm layout: (N, R, R, 3) float32 in, three (N, R, R, C) float32 out.

    With a float16 model the input is cast to float16 inside and the outputs back to float32.
    """

    def __init__(self, model: SwapAutoencoder) -> None:
        super().__init__()
        self.model = model
        self.compute_dtype = next(model.parameters()).dtype
        self.train(model.training)  # a fresh wrapper would otherwise claim training mode

    def forward(self, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        images = faces.permute(0, 3, 1, 2)  # (N, R, R, 3) -> (N, 3, R, R)
        if self.compute_dtype != torch.float32:
            images = images.to(self.compute_dtype)
        dst_mask, celeb_face, celeb_mask = self.model.swap(images)
        # (N, C, R, R) -> (N, R, R, C), float32 as DeepFaceLive reads them
        return tuple(output.permute(0, 2, 3, 1).float() for output in (dst_mask, celeb_face, celeb_mask))


def export_dfm(model: SwapAutoencoder, path: Path, fp16: bool = False, faces: np.ndarray | None = None,
               opset: int = 17, threads: int = 0) -> DfmReport:
    """Write `model`'s swap path to `path` as a .dfm (ONNX) file and check it.

    The file appears atomically: it is written beside `path` under a temporary name, checked with
    tasks.dfm_check.check_dfm against `model`, then moved into place. The model's train/eval mode
    is restored afterwards; the model itself is never converted to float16 (a copy is).

    Args:
        model: the trained autoencoder; its config.resolution fixes the file's resolution.
        path: where to write, conventionally ending in ".dfm"; its folder must exist.
        fp16: store float16 weights and compute in float16 (half the file; input and outputs stay float32).
        faces: (N, R, R, 3) float32 BGR faces in [0, 1] to check the file on (see load_face_crops);
            None checks it on seeded noise.
        opset: the ONNX opset to target.
        threads: ONNX Runtime threads for the check; 0 lets it choose.

    Returns:
        The check's report (its path is `path`).

    Raises:
        ExportError: the folder is missing, the exporter fails, or the file breaks the .dfm contract
            or differs from the model by more than tasks.dfm_check.TOLERANCES allows.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    resolution = model.config.resolution
    device = next(model.parameters()).device
    example = torch.rand((1, resolution, resolution, 3), generator=torch.Generator().manual_seed(EXAMPLE_SEED))
    dynamic_axes = {name: {0: BATCH_AXIS_NAME} for name in (DFM_INPUT_NAME, *DFM_OUTPUT_NAMES)}
    # A hidden name beside the target, so os.replace stays on one file system.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    was_training = model.training
    try:
        model.eval()
        exported = copy.deepcopy(model).half() if fp16 else model
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter (dynamo=False) is chosen on purpose: it writes one
            # self-contained file in a fraction of a second; its deprecation notices are known.
            warnings.filterwarnings("ignore", message=LEGACY_EXPORTER_NOTICES, category=DeprecationWarning)
            torch.onnx.export(DfmModule(exported), (example.to(device),), str(temporary), input_names=[DFM_INPUT_NAME],
                              output_names=list(DFM_OUTPUT_NAMES), dynamic_axes=dynamic_axes, opset_version=opset,
                              dynamo=False)
        model_proto = onnx.load(str(temporary))
        pin_output_shapes(model_proto, resolution)
        describe_model(model_proto, model, fp16)
        onnx.save(model_proto, str(temporary))
        report = check_dfm(temporary, faces, model, threads=threads, shown_as=path)
        os.replace(temporary, path)
    except DfmError as error:
        raise ExportError(f"the export failed its check, so {path} was not written: {error}") from error
    except Exception as error:
        raise ExportError(f"exporting the model to {path} failed: {error}") from error
    finally:
        temporary.unlink(missing_ok=True)  # only still there when something failed
        model.train(was_training)
    logger.info("exported %dpx %s model to %s (opset %d, %s, %d bytes)", resolution, model.config.archi, path, opset,
                report.precision, report.file_bytes)
    return report


def pin_output_shapes(model_proto: onnx.ModelProto, resolution: int) -> None:
    """Declare every output as (batch, R, R, C) in place.

    The TorchScript exporter leaves the spatial dims of the permuted outputs symbolic although they
    are fixed; tools size their buffers from these declarations. load_onnx's full check re-infers
    the shapes, so a wrong declaration cannot slip through.
    """
    for output in model_proto.graph.output:
        shape = output.type.tensor_type.shape
        del shape.dim[:]
        shape.dim.add().dim_param = BATCH_AXIS_NAME
        for size in (resolution, resolution, DFM_OUTPUT_CHANNELS[output.name]):
            shape.dim.add().dim_value = size


def describe_model(model_proto: onnx.ModelProto, model: SwapAutoencoder, fp16: bool) -> None:
    """Record the architecture, face type and precision in the file's metadata (DeepFaceLive ignores it)."""
    config = model.config
    entries = {"producer": "faceflow", "archi": config.archi, FACE_TYPE_METADATA_KEY: config.face_type,
               "resolution": str(config.resolution), "precision": "fp16" if fp16 else "fp32"}
    onnx.helper.set_model_props(model_proto, entries)


def load_face_crops(sources: Sequence[Path], face_type: FaceType, resolution: int, count: int = 4) -> np.ndarray:
    """Aligned crops of real faces to check a .dfm on, framed as the model was trained.

    Args:
        sources: photos and videos; the largest face of each photo and of frames sampled from each
            video (FRAMES_SAMPLED_PER_SECOND) is taken, in order, until `count` faces are found.
        face_type: the framing the model was trained on.
        resolution: the crop side, the file's R.
        count: how many faces to return at most.

    Returns:
        (N, R, R, 3) float32 BGR in [0, 1], 1 <= N <= count.

    Raises:
        DfmError: no face was found in any source.
        tasks.images.ImageError, tasks.video.VideoError: a source cannot be read.
    """
    analyzer = DlibAnalyzer()
    crops: list[np.ndarray] = []
    for source in map(Path, sources):
        with contextlib.closing(read_frames(source)) as frames:  # closing stops decoding the rest of a video
            for frame in frames:
                found = analyzer.detect(frame)  # largest face first
                if found:
                    matrix = compute_alignment(found[0].landmarks, face_type, resolution)
                    crops.append(warp_to_crop(frame, matrix, resolution))
                if len(crops) == count:
                    break
        if len(crops) == count:
            break
    if not crops:
        raise DfmError(f"no face found in {', '.join(map(str, sources)) or 'no files'}; give photos or videos "
                       "that show a face")
    logger.info("aligned %d %s faces at %dpx from %d sources", len(crops), face_type, resolution, len(sources))
    return np.stack(crops).astype(np.float32) / 255.0


def read_frames(source: Path) -> Iterator[np.ndarray]:
    """A photo's image, or frames of a video sampled at FRAMES_SAMPLED_PER_SECOND, as BGR uint8."""
    if source.suffix.lower() in IMAGE_SUFFIXES:
        yield read_image(source)
        return
    for _, _, frame in iter_frames(source, fps=FRAMES_SAMPLED_PER_SECOND):
        yield frame
