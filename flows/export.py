"""export: the final model as a DeepFaceLive .dfm, and a trained XSeg as exports/xseg.onnx.

Each file is checked with ONNX Runtime on real dst faces against torch before it is written. With no
trained XSeg (no labels yet, see flows/xseg.py) only the .dfm is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger

from flows.params import load_params
from flows.stages import XSEG_CHECKPOINT, checkpoint_dir, write_metrics
from model.checkpoint import load_checkpoint
from model.config import FaceType, ModelConfig
from model.xseg import is_trained, load_xseg
from tasks.dfm_check import DfmError
from tasks.export import export_dfm, load_face_crops
from tasks.images import ImageError, list_media
from tasks.video import VideoError
from tasks.xseg_export import export_xseg_onnx

DST_MEDIA = "data/raw/dst"
CHECK_FACES = 4
XSEG_ONNX = "xseg.onnx"


def load_check_faces(root: Path, config: ModelConfig | None = None, face_type: FaceType | None = None,
                     resolution: int | None = None) -> np.ndarray | None:
    """Aligned dst faces (what the file will see) to check an export on; None, with a warning, when there are none.

    The framing and size are the model config's, or ``face_type`` and ``resolution`` when given.
    """
    logger = get_run_logger()
    face_type = face_type or config.face_type
    resolution = resolution or config.resolution
    try:
        videos, photos = list_media(root / DST_MEDIA)
        return load_face_crops([*photos, *videos], face_type, resolution, CHECK_FACES)
    except (DfmError, ImageError, VideoError) as error:
        logger.warning("checking the export on seeded noise instead of dst faces: %s", error)
        return None


def export_xseg(root: Path, exports: Path) -> dict:
    """exports/xseg.onnx when the xseg stage trained a network; its metrics (``xseg_exported`` false when not)."""
    logger = get_run_logger()
    directory = root / XSEG_CHECKPOINT
    if not is_trained(directory):
        logger.info("no trained XSeg in %s: %s not written", directory, XSEG_ONNX)
        return {"xseg_exported": False}
    model = load_xseg(directory).model
    faces = load_check_faces(root, face_type=model.config.face_type, resolution=model.config.resolution)
    report = export_xseg_onnx(model, exports / XSEG_ONNX, faces=faces)
    logger.info("wrote %s (%d bytes, max |onnx - torch| = %.2e on %d %s faces)", report.path, report.file_bytes,
                report.max_abs_diff, report.face_count, "real" if report.real_faces else "noise")
    return {"xseg_exported": True, "xseg_max_abs_diff": report.max_abs_diff, "xseg_bytes": report.file_bytes,
            "xseg_milliseconds_per_face": round(report.milliseconds_per_face, 3)}


@flow(name="export", log_prints=True)
def export_flow(root: Path | None = None) -> dict:
    """Export the last training stage's model and verify the file."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    params = load_params(root / "params.yaml")
    fp16 = params.export.fp16
    model_dir = root / checkpoint_dir(params.train.final_stage)
    model = load_checkpoint(model_dir).model.eval()
    faces = load_check_faces(root, model.config)
    exports = root / "exports"
    shutil.rmtree(exports, ignore_errors=True)
    exports.mkdir(parents=True)
    report = export_dfm(model, exports / f"{params.export.name}.dfm", fp16=fp16, faces=faces)
    logger.info("read %s; wrote %s (%s, %d bytes, max |onnx - torch| = %.2e on %d %s faces, %.2f ms/face)", model_dir,
                report.path, report.precision, report.file_bytes, report.max_abs_diff, report.face_count,
                "real" if report.real_faces else "noise", report.milliseconds_per_face)
    metrics = {"resolution": report.resolution, "fp16": fp16, "max_abs_diff": report.max_abs_diff,
               "bytes": report.file_bytes, "milliseconds_per_face": round(report.milliseconds_per_face, 3),
               "check_faces": report.face_count if report.real_faces else 0, **export_xseg(root, exports)}
    write_metrics(root / "metrics" / "export.json", metrics)
    return {"dfm": str(report.path), **metrics}
