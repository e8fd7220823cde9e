"""mask@<side>: faces table -> data/<side>/masks.lance (one mask per face).

``mask.kind: hull`` draws each face's landmark hull; ``mask.kind: xseg`` runs the network the xseg
stage trained (checkpoints/xseg) on every face. When that stage had no labels to train on, the
masks stay hull masks (rows of kind "hull") and a warning names the label folders.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import flow, get_run_logger

from flows.params import SIDES, Side, load_params
from flows.progress import progress_bar
from flows.stages import XSEG_CHECKPOINT, xseg_labels_folder
from model.xseg import read_untrained_reason
from tasks.faceset import open_faces
from tasks.mask_table import MaskOptions, build_masks
from tasks.xseg_masks import XsegMasker


def choose_masker(root: Path, options: MaskOptions, logger) -> tuple[MaskOptions, XsegMasker | None]:
    """The mask kind that can really be made, and the XSeg network when it is xseg."""
    if options.kind != "xseg":
        return options, None
    directory = root / XSEG_CHECKPOINT
    if read_untrained_reason(directory) is not None:
        folders = " and ".join(str(root / xseg_labels_folder(side)) for side in SIDES)
        logger.warning("mask.kind is xseg but %s holds no trained XSeg (no labels in %s): keeping the landmark hull "
                       "masks; label faces there (`faceflow xseg label-sheet src`) and run the pipeline again",
                       directory, folders)
        return dataclasses.replace(options, kind="hull"), None
    masker = XsegMasker.from_checkpoint(directory)
    logger.info("XSeg %s: %d px, trained on %s crops, on %s", directory, masker.resolution, masker.face_type,
                masker.device)
    return options, masker


@flow(name="mask", log_prints=True)
def mask_flow(side: Side, root: Path | None = None) -> dict:
    """Write a mask for every face of one side."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    options, masker = choose_masker(root, load_params(root / "params.yaml").mask, logger)
    faces, masks = root / "data" / side / "faces.lance", root / "data" / side / "masks.lance"
    total = open_faces(faces).count_rows()
    logger.info("read %s: %d faces", faces, total)
    with progress_bar(f"mask {side}", total) as advance:
        count = build_masks(faces, masks, options, on_batch=advance, masker=masker)
    logger.info("wrote %s: %d %s masks", masks, count, options.kind)
    return {"masks": count, "kind": options.kind}
