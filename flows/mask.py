"""mask@<side>: faces table -> data/<side>/masks.lance (one mask per face)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.params import Side, load_params
from flows.progress import progress_bar
from tasks.faceset import open_faces
from tasks.mask_table import build_masks


@flow(name="mask", log_prints=True)
def mask_flow(side: Side, root: Path | None = None) -> dict:
    """Write a mask for every face of one side."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    options = load_params(root / "params.yaml").mask
    faces, masks = root / "data" / side / "faces.lance", root / "data" / side / "masks.lance"
    total = open_faces(faces).count_rows()
    logger.info("read %s: %d faces", faces, total)
    with progress_bar(f"mask {side}", total) as advance:
        count = build_masks(faces, masks, options, on_batch=advance)
    logger.info("wrote %s: %d %s masks", masks, count, options.kind)
    return {"masks": count}
