"""train@<name>: one stage of the training chain.

Each training stage starts from the checkpoint of the stage before it (``init`` for the first). A stage whose only change is more iterations
continues from where its last run stopped (kept in .faceflow/continue/, outside DVC's outputs)
instead of starting over: that is how scheduled "train some more" runs work.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from prefect import flow, get_run_logger

from flows.params import ParamsError, load_params
from flows.progress import progress_enabled
from flows.stages import checkpoint_dir, faces_table, masks_table, selection_file, write_metrics
from model.checkpoint import read_manifest
from tasks.selection import Selection
from tasks.train import EmptyFacesetError, StageOptions, TrainingData, train_stage
from tasks.training_data import load_side

CONTINUE_DIR = Path(".faceflow") / "continue"


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


def lineage_key(root: Path, stage: str, previous: str, options: StageOptions, params_model: dict) -> str:
    """What a continued run must share with the stored one: start checkpoint, model, every option but iterations."""
    start = (root / checkpoint_dir(previous) / "checkpoint.json").read_bytes()
    settings = {k: v for k, v in asdict(options).items() if k != "iterations"}
    payload = json.dumps({"stage": stage, "model": params_model, "options": settings}, sort_keys=True).encode()
    return hashlib.sha256(start + payload).hexdigest()


def continue_point(store: Path, key: str, options: StageOptions) -> int:
    """Iterations already done by a stored run of this stage with the same lineage (0 if none fits)."""
    marker = store / "lineage.json"
    if not marker.is_file():
        return 0
    record = json.loads(marker.read_text())
    done = int(record.get("stage_iterations", 0))
    return done if record.get("key") == key and 0 < done <= options.iterations else 0


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

    store = root / CONTINUE_DIR / stage
    key = lineage_key(root, stage, previous, options, config.to_dict())
    done = continue_point(store, key, options)
    start, run_options = root / checkpoint_dir(previous), options
    if done:
        start, run_options = store, replace(options, iterations=options.iterations - done, reset_inter=False)
        logger.info("continuing %s from its last run: %d of %d iterations already done", stage, done, options.iterations)

    output, logs = root / checkpoint_dir(stage), root / "logs" / stage
    if run_options.iterations > 0:
        result = train_stage(data, config, run_options, stage, output, logs, init_checkpoint=start, progress=progress_enabled())
        metrics = {**result.metrics, "iterations": result.iterations}
    else:  # already trained to the target: the stored run is the result
        shutil.copytree(store, output, dirs_exist_ok=True, ignore=shutil.ignore_patterns("lineage.json"))
        metrics = json.loads((store / "lineage.json").read_text())["metrics"]

    keep_for_continuing(output, store, key, options.iterations, metrics)
    metrics_path = root / "metrics" / "train" / f"{stage}.json"
    write_metrics(metrics_path, metrics)
    state = read_manifest(output)["state"]
    logger.info("wrote %s (model iteration %s), %s and %s", output, state.get("iteration"), logs, metrics_path)
    return metrics


def keep_for_continuing(output: Path, store: Path, key: str, stage_iterations: int, metrics: dict) -> None:
    """Copy the stage's checkpoint outside DVC's outputs so a later run with more iterations can go on from it."""
    staging = store.with_name(store.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(output, staging, ignore=shutil.ignore_patterns("*.png"))
    (staging / "lineage.json").write_text(json.dumps({"key": key, "stage_iterations": stage_iterations, "metrics": metrics}))
    shutil.rmtree(store, ignore_errors=True)
    staging.rename(store)
