"""xseg: the labelled faces of both sides -> checkpoints/xseg (the segmentation network) and metrics/xseg.json.

With no labels at all the stage trains nothing and takes a second: checkpoints/xseg then holds only
``untrained.json`` (why, and which folders were read), metrics/xseg.json says ``trained: false``,
and a mask stage set to ``kind: xseg`` keeps the landmark hull masks with a warning. DVC gets the
outputs it declares either way, and adding the first label re-runs the stage.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from prefect import flow, get_run_logger

from flows.params import SIDES, load_params
from flows.progress import progress_bar
from flows.stages import XSEG_CHECKPOINT, XSEG_METRICS, faces_table, write_metrics, xseg_labels_folder
from model.xseg import save_xseg, write_untrained_marker
from tasks.faceset import open_faces
from tasks.xseg_labels import check_labels, load_labelled_faces
from tasks.xseg_train import LabelledFaces, train_xseg


def untrained_reason(root: Path) -> str:
    folders = " or ".join(str(root / xseg_labels_folder(side)) for side in SIDES)
    return (f"no XSeg labels in {folders}; label faces there (`faceflow xseg label-sheet src` picks them) "
            "and run the pipeline again")


def read_face_type(faces_path: Path) -> str:
    """The framing of a faces table's crops (the first row's; extraction frames every face alike)."""
    table = open_faces(faces_path).to_table(columns=["face_type"], limit=1)
    return table["face_type"][0].as_py()


def pick_device(choice: str) -> torch.device:
    """train.runtime.device applied to XSeg: auto = CUDA when torch sees one."""
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")


@flow(name="xseg", log_prints=True)
def xseg_flow(root: Path | None = None) -> dict:
    """Train XSeg on the labelled faces of both sides (or mark it untrained when there are none)."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    params = load_params(root / "params.yaml")
    options = params.xseg
    labels = {side: check_labels(root / xseg_labels_folder(side), root / faces_table(side)) for side in SIDES}
    counts = {f"labels_{side}": len(found) for side, found in labels.items()}
    output = root / XSEG_CHECKPOINT
    if not any(labels.values()):
        reason = untrained_reason(root)
        shutil.rmtree(output, ignore_errors=True)
        write_untrained_marker(output, reason, {"label_folders": [xseg_labels_folder(side) for side in SIDES]})
        logger.warning("XSeg not trained: %s", reason)
        metrics = {"trained": False, **counts}
        write_metrics(root / XSEG_METRICS, metrics)
        return metrics
    face_types = {side: read_face_type(root / faces_table(side)) for side in SIDES if labels[side]}
    if len(set(face_types.values())) > 1:
        logger.warning("the labelled faces are framed differently (%s); XSeg learns both framings", face_types)
    parts = [load_labelled_faces(root / faces_table(side), labels[side], options.resolution) for side in SIDES]
    data = LabelledFaces([label.face_id for side in SIDES for label in labels[side]],
                         np.concatenate([faces for faces, _ in parts]), np.concatenate([masks for _, masks in parts]))
    logger.info("read %d labelled faces (%s)", len(data.face_ids), ", ".join(f"{side} {len(labels[side])}" for side in SIDES))
    with progress_bar("xseg", options.iterations) as advance:
        result = train_xseg(data, options, next(iter(face_types.values())), pick_device(params.train.runtime.device),
                            on_iteration=lambda _: advance())
    metrics = {**result.metrics(), **counts}
    shutil.rmtree(output, ignore_errors=True)  # only now: a failed run leaves the last network in place
    save_xseg(output, result.model, {**metrics, "face_ids": data.face_ids})
    write_metrics(root / XSEG_METRICS, metrics)
    logger.info("wrote %s: held-out IoU %s (all-ones mask %s), %.0f ms/iteration", output, metrics["iou"],
                metrics["iou_all_ones"], result.ms_per_iteration)
    return metrics
