"""curate@<side>: faces table -> selection of face ids kept for training (with reasons for the rest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger

from flows.params import Params, load_params
from tasks.curate import curate_faces
from tasks.decisions import load_rejects
from tasks.extract import create_face_analyzer
from tasks.identity import reference_embeddings
from tasks.images import list_media


def load_references(folder: Path, params: Params, side: str) -> np.ndarray | None:
    """Identity descriptors of the reference photos of the target person, or None when there are none."""
    _, photos = list_media(folder) if folder.is_dir() else ([], [])
    if not photos:
        return None
    analyzer = create_face_analyzer(params.extract.faces, params.extract.side(side))  # type: ignore[arg-type]
    embeddings, used = reference_embeddings(folder, analyzer)
    get_run_logger().info("read %d reference photos of the target person from %s", len(used), folder)
    return embeddings


@flow(name="curate", log_prints=True)
def curate_flow(side: str = "src", root: Path | None = None) -> dict:
    """Apply the curate thresholds to one side's faces."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    params = load_params(root / "params.yaml")
    options = getattr(params.curate, side)
    faces, output = root / "data" / side / "faces.lance", root / "data" / side / "selection.json"
    rejects_path = root / "data" / side / "rejects.yaml"
    rejects = load_rejects(rejects_path)
    logger.info("read %s and %d hand decisions from %s", faces, len(rejects), rejects_path)
    references = load_references(root / "data" / side / "reference", params, side) if options.identity in ("auto", "reference") else None
    selection = curate_faces(faces, options, rejects, references)
    selection.save(output)
    reasons: dict[str, int] = {}
    for reason in selection.rejected.values():
        kind = reason.split(":")[0]
        reasons[kind] = reasons.get(kind, 0) + 1
    logger.info("wrote %s: kept %d faces, skipped %d %s", output, len(selection.kept), len(selection.rejected), reasons)
    return {"kept": len(selection.kept), "rejected": reasons}
