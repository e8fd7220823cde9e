"""curate@<side>: faces table -> selection of face ids kept for training (with reasons for the rest)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.params import load_params
from tasks.curate import curate_faces
from tasks.decisions import load_rejects


@flow(name="curate", log_prints=True)
def curate_flow(side: str = "src", root: Path | None = None) -> dict:
    """Apply the curate thresholds to one side's faces."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    options = getattr(load_params(root / "params.yaml").curate, side)
    faces, output = root / "data" / side / "faces.lance", root / "data" / side / "selection.json"
    rejects_path = root / "data" / side / "rejects.yaml"
    rejects = load_rejects(rejects_path)
    logger.info("read %s and %d hand decisions from %s", faces, len(rejects), rejects_path)
    selection = curate_faces(faces, options, rejects)
    selection.save(output)
    reasons: dict[str, int] = {}
    for reason in selection.rejected.values():
        kind = reason.split(":")[0]
        reasons[kind] = reasons.get(kind, 0) + 1
    logger.info("wrote %s: kept %d faces, skipped %d %s", output, len(selection.kept), len(selection.rejected), reasons)
    return {"kept": len(selection.kept), "rejected": reasons}
