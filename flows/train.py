"""train@<name>: one stage of the training chain.

Each training stage starts from the checkpoint of the stage before it (``init`` for the first) and
reads its faces through faceset readers: the curated selections of data/src and data/dst, re-framed
to the model's face type, minus a fixed 5 % of each side held out to score the model
(``tasks.holdout``). A stage with ``pretrain: true`` trains both sides on the generic faceset of
``train.pretrain_faceset`` instead (its masks.lance, or landmark hull masks when it has none).

Its run keeps periodic checkpoints in .faceflow/runs/<stage>/, outside DVC's outputs (which DVC
deletes before running a stage), tagged with the run's lineage: the start checkpoint, the model
config, the stage options but ``iterations`` (and the logging/saving intervals), the faces and the
training code. A killed run started again resumes there, and a stage whose only change is more
iterations continues from where its last run stopped instead of starting over: that is how
scheduled "train some more" runs work. The directory is kept after the stage finishes (its newest
checkpoint is the finished run, at most two are kept); a run with another lineage replaces its
contents, and deleting it only costs the ability to resume.

Writes checkpoints/<stage> (model, optimizer, discriminators, preview.png), logs/<stage>
(TensorBoard, previews/), metrics/train/<stage>.json and the loss curve metrics/train/<stage>/losses.tsv.

With ``train.runtime.processes`` above 1 the stage runs data-parallel: the flow starts that many
processes with torchrun (``python -m flows.train STAGE ROOT`` each, rendezvous on 127.0.0.1), each
takes its share of every batch, rank 0 writes the outputs, and the flow reads its metrics back.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger

from flows.params import ParamsError, TrainParams, load_params
from flows.progress import progress_enabled
from flows.stages import (
    checkpoint_dir,
    faces_table,
    loss_history_file,
    masks_table,
    metrics_file,
    selection_file,
    write_loss_history,
    write_metrics,
)
from model.checkpoint import read_manifest
from tasks.distributed import ProcessGroup, launch_command, read_process_group
from tasks.faceset import open_faces
from tasks.faceset_reader import LanceFaceset
from tasks.holdout import split_holdout
from tasks.selection import Selection
from tasks.train import EmptyFacesetError, Readers, process_shard, train_stage
from tasks.train_options import check_processes

RUNS_DIR = Path(".faceflow") / "runs"
FACES_TABLE = "faces.lance"
MASKS_TABLE = "masks.lance"
EMPTY_HINTS = {
    "src": "Add videos or photos of the source person with a clearly visible face to data/raw/src, or loosen "
           "curate.src in params.yaml, then run again.",
    "dst": "Use a destination video in which the face is visible, or lower extract.dst.min_face_size / raise "
           "extract.dst.upsample, or loosen curate.dst in params.yaml, then run again.",
}


def split_reader(faces: Path, masks: Path | None, face_ids: list[str],
                 train: TrainParams) -> tuple[LanceFaceset, LanceFaceset | None]:
    """Readers of the training faces and of the held-out ones (None when none is held out)."""
    train_ids, held_ids = split_holdout(face_ids)
    config = train.model

    def reader(ids: list[str]) -> LanceFaceset:
        return LanceFaceset(faces, masks, ids, config.resolution, config.face_type)

    return reader(train_ids), (reader(held_ids) if held_ids else None)


def open_side_readers(root: Path, train: TrainParams) -> tuple[Readers, Readers]:
    """The src and dst training and held-out readers; an empty side is an error that says what to do."""
    readers, holdout = {}, {}
    for side in ("src", "dst"):
        face_ids = list(LanceFaceset.from_selection(root / faces_table(side), root / masks_table(side),
                                                    root / selection_file(side), train.model.resolution).face_ids)
        if not face_ids:
            rejected = len(Selection.load(root / selection_file(side)).rejected)
            raise EmptyFacesetError(side, f"{faces_table(side)} has no usable faces ({rejected} left out by curate). "
                                          f"{EMPTY_HINTS[side]}")
        readers[side], held = split_reader(root / faces_table(side), root / masks_table(side), face_ids, train)
        if held is not None:
            holdout[side] = held
    return readers, holdout


def open_pretrain_readers(root: Path, train: TrainParams, stage: str) -> tuple[Readers, Readers]:
    """The generic faceset of train.pretrain_faceset for both sides, and its held-out faces.

    Raises:
        ParamsError: train.pretrain_faceset is not set or holds no faces.lance.
    """
    if train.pretrain_faceset is None:
        raise ParamsError(f"train stage {stage} has pretrain: true but train.pretrain_faceset is not set in params.yaml; "
                          f"set it to a folder holding a {FACES_TABLE} of many people's faces (build one with "
                          "`faceflow faceset pretrain FOLDER` from a folder of their photos or videos), or set "
                          f"train.stages.{stage}.pretrain: false")
    folder = (root / train.pretrain_faceset).resolve()
    faces = folder / FACES_TABLE
    if not faces.is_dir():
        raise ParamsError(f"train.pretrain_faceset {train.pretrain_faceset}: {faces} not found; point it at a folder "
                          f"holding a {FACES_TABLE} made by `faceflow faceset pretrain FOLDER`")
    masks = folder / MASKS_TABLE if (folder / MASKS_TABLE).is_dir() else None  # None: landmark hull masks
    face_ids = open_faces(faces).to_table(columns=["face_id"])["face_id"].to_pylist()
    if not face_ids:
        raise EmptyFacesetError("src", f"the pretraining faceset {faces} has no faces; extract faces into it first")
    reader, held = split_reader(faces, masks, face_ids, train)
    return {"src": reader, "dst": reader}, ({"src": held, "dst": held} if held is not None else {})


class TrainingProcessesFailed(RuntimeError):
    """A data-parallel training process exited with an error (its message is in the log above)."""


@flow(name="train", log_prints=True)
def train_flow(stage: str, root: Path | None = None) -> dict:
    """Train one stage of the chain, starting from the previous stage's checkpoint."""
    root = (root or Path.cwd()).resolve()
    train = load_params(root / "params.yaml").train
    check_stage(train, stage)
    if train.runtime.processes > 1 and not read_process_group().distributed:
        check_processes(train.runtime)
        process_shard(ProcessGroup(0, train.runtime.processes), train.stages[stage], stage)  # the batch splits evenly
        return launch_training_processes(stage, root, train.runtime.processes)
    return train_from_params(stage, root, get_run_logger())


def check_stage(train: TrainParams, stage: str) -> None:
    """Raise ParamsError when ``stage`` is not one of params.yaml's training stages."""
    if stage not in train.stages:
        raise ParamsError(f"train stage {stage!r} is not in params.yaml train.stages ({', '.join(train.stages)}); "
                          "run `faceflow sync` after editing the stages")


def launch_training_processes(stage: str, root: Path, processes: int) -> dict:
    """Run the stage in ``processes`` data-parallel processes under torchrun; rank 0's metrics."""
    logger = get_run_logger()
    command = launch_command(processes, __name__, [stage, str(root)])
    logger.info("training stage %s in %d data-parallel processes: %s", stage, processes, " ".join(command))
    result = subprocess.run(command, cwd=root, check=False)
    if result.returncode != 0:
        raise TrainingProcessesFailed(f"the {processes} training processes of stage {stage} failed (exit code "
                                      f"{result.returncode}); the error is in the log above. To train in one process, "
                                      "set train.runtime.processes: 1 in params.yaml")
    return json.loads((root / metrics_file(stage)).read_text())


def train_from_params(stage: str, root: Path, logger: logging.Logger | logging.LoggerAdapter) -> dict:
    """Train the stage as params.yaml describes it, in this process (one rank of several under torchrun)."""
    train = load_params(root / "params.yaml").train
    check_stage(train, stage)
    options, config, previous = train.stages[stage], train.model, train.previous_stage(stage)
    if options.pretrain:
        readers, holdout = open_pretrain_readers(root, train, stage)
    else:
        readers, holdout = open_side_readers(root, train)
    logger.info("training on %d src and %d dst faces (%s), %d and %d held out; starting from %s", len(readers["src"]),
                len(readers["dst"]), config.face_type, len(holdout.get("src", ())), len(holdout.get("dst", ())),
                checkpoint_dir(previous))

    output, logs = root / checkpoint_dir(stage), root / "logs" / stage
    result = train_stage(readers, config, options, stage, output, logs, init_checkpoint=root / checkpoint_dir(previous),
                         progress=progress_enabled(), work_dir=root / RUNS_DIR / stage, holdout=holdout,
                         runtime=train.runtime)
    metrics = {**result.metrics, "iterations": result.iterations}
    if not read_process_group().is_main:
        return metrics
    write_metrics(root / metrics_file(stage), metrics)
    write_loss_history(root / loss_history_file(stage), result.loss_history)
    state = read_manifest(output)["state"]
    logger.info("wrote %s (model iteration %s), %s, %s and %s", output, state.get("iteration"), logs,
                metrics_file(stage), loss_history_file(stage))
    return metrics


def run_training_process(arguments: list[str]) -> int:
    """One torchrun process of a data-parallel stage: ``python -m flows.train STAGE ROOT``; the exit code."""
    from flows.cli import user_errors

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stage, root = arguments
    try:
        train_from_params(stage, Path(root).resolve(), logging.getLogger(__name__))
    except user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_training_process(sys.argv[1:]))
