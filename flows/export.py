"""export: the final model as a DeepFaceLive-compatible .dfm, checked against torch with ONNX Runtime."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import flow, get_run_logger

from flows.params import load_params
from flows.stages import checkpoint_dir, write_metrics
from model.checkpoint import load_checkpoint
from tasks.export import check_dfm, export_dfm


@flow(name="export", log_prints=True)
def export_flow(root: Path | None = None) -> dict:
    """Export the last training stage's model and verify the file."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    params = load_params(root / "params.yaml")
    model_dir = root / checkpoint_dir(params.train.final_stage)
    model = load_checkpoint(model_dir).model.eval()
    exports = root / "exports"
    shutil.rmtree(exports, ignore_errors=True)
    exports.mkdir(parents=True)
    path = export_dfm(model, exports / f"{params.export.name}.dfm")
    report = check_dfm(path, model)
    logger.info("read %s; wrote %s (max |onnx - torch| = %.2e)", model_dir, path, report["max_abs_diff"])
    metrics = {"resolution": report["resolution"], "max_abs_diff": float(report["max_abs_diff"]), "bytes": path.stat().st_size}
    write_metrics(root / "metrics" / "export.json", metrics)
    return {"dfm": str(path), **metrics}
