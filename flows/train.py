"""train@<name>: one stage of the training chain.

Each training stage starts from the checkpoint of the stage before it (``init`` for the first). Its
run keeps periodic checkpoints in .faceflow/runs/<stage>/, outside DVC's outputs (which DVC deletes
before running a stage), tagged with the run's lineage: the start checkpoint, the model config, the
stage options but ``iterations`` (and the logging/saving intervals), the faces and the training code.
A killed run started again resumes there, and a stage whose only change is more iterations continues
from where its last run stopped instead of starting over: that is how scheduled "train some more"
runs work. The directory is kept after the stage finishes (its newest checkpoint is the finished
run, at most two are kept); a run with another lineage replaces its contents, and deleting it only
costs the ability to resume.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.params import ParamsError, load_params
from flows.progress import progress_enabled
from flows.stages import checkpoint_dir, faces_table, masks_table, selection_file, write_metrics
from model.checkpoint import read_manifest
from tasks.selection import Selection
from tasks.train import EmptyFacesetError, TrainingData, train_stage
from tasks.training_data import load_side

RUNS_DIR = Path(".faceflow") / "runs"


def load_training_data(root: Path, resolution: int) -> TrainingData:
    """Both sides' faces and masks; an empty side is an error that says what to do."""
    src_faces, src_masks = load_side(root / faces_table("src"), root / masks_table("src"), root / selection_file("src"), resolution)
    dst_faces, dst_masks = load_side(root / faces_table("dst"), root / masks_table("dst"), root / selection_file("dst"), resolution)
    if len(src_faces) == 0:
        rejected = len(Selection.load(root / selection_file("src")).rejected)
        raise EmptyFacesetError(
            "src",
            f"{faces_table('src')} has no usable faces ({rejected} left out by curate). Add videos or photos of the "
            "source person with a clearly visible face to data/raw/src, or loosen curate.src in params.yaml, then run again.",
        )
    if len(dst_faces) == 0:
        raise EmptyFacesetError(
            "dst",
            f"{faces_table('dst')} has no usable faces ({len(Selection.load(root / selection_file('dst')).rejected)} left out "
            "by curate). Use a destination video in which the face is visible, or lower extract.dst.min_face_size / "
            "raise extract.dst.upsample, or loosen curate.dst in params.yaml, then run again.",
        )
    return TrainingData(src_faces, src_masks, dst_faces, dst_masks)


@flow(name="train", log_prints=True)
def train_flow(stage: str, root: Path | None = None) -> dict:
    """Train one stage of the chain, starting from the previous stage's checkpoint."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    train = load_params(root / "params.yaml").train
    if stage not in train.stages:
        raise ParamsError(f"train stage {stage!r} is not in params.yaml train.stages ({', '.join(train.stages)}); "
                          "run `faceflow sync` after editing the stages")
    options, config, previous = train.stages[stage], train.model, train.previous_stage(stage)
    data = load_training_data(root, config.resolution)
    logger.info("read %d src and %d dst faces; starting from %s", len(data.src_faces), len(data.dst_faces), checkpoint_dir(previous))

    output, logs = root / checkpoint_dir(stage), root / "logs" / stage
    result = train_stage(data, config, options, stage, output, logs, init_checkpoint=root / checkpoint_dir(previous),
                         progress=progress_enabled(), work_dir=root / RUNS_DIR / stage)
    metrics = {**result.metrics, "iterations": result.iterations}
    metrics_path = root / "metrics" / "train" / f"{stage}.json"
    write_metrics(metrics_path, metrics)
    state = read_manifest(output)["state"]
    logger.info("wrote %s (model iteration %s), %s and %s", output, state.get("iteration"), logs, metrics_path)
    return metrics
