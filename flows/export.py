"""export: the final model as a DeepFaceLive .dfm, checked with ONNX Runtime on real dst faces against torch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger

from flows.params import load_params
from flows.stages import checkpoint_dir, write_metrics
from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from tasks.dfm_check import DfmError
from tasks.export import export_dfm, load_face_crops
from tasks.images import ImageError, list_media
from tasks.video import VideoError

DST_MEDIA = "data/raw/dst"
CHECK_FACES = 4


def load_check_faces(root: Path, config: ModelConfig) -> np.ndarray | None:
    """Aligned dst faces (what the .dfm will swap) to check the export on; None, with a warning, when there are none."""
    logger = get_run_logger()
    try:
        videos, photos = list_media(root / DST_MEDIA)
        return load_face_crops([*photos, *videos], config.face_type, config.resolution, CHECK_FACES)
    except (DfmError, ImageError, VideoError) as error:
        logger.warning("checking the export on seeded noise instead of dst faces: %s", error)
        return None


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
               "check_faces": report.face_count if report.real_faces else 0}
    write_metrics(root / "metrics" / "export.json", metrics)
    return {"dfm": str(report.path), **metrics}
