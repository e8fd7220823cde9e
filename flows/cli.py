"""The faceflow command line."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from flows.dfm_commands import dfm_app
from flows.faceset_commands import faceset_app
from flows.live_command import live_command
from flows.merge_preview import merge_command, preview_command
from flows.params import SIDES, Side
from flows.verify_command import verify_command
from flows.xseg_commands import xseg_app

app = typer.Typer(help="faceflow: a reproducible face-swap pipeline (DVC + Prefect).", no_args_is_help=True)
stage_app = typer.Typer(help="Run one pipeline stage (what dvc.yaml's commands call).", no_args_is_help=True)
app.add_typer(stage_app, name="stage")
app.add_typer(faceset_app, name="faceset")
app.add_typer(dfm_app, name="dfm")
app.add_typer(xseg_app, name="xseg")
app.command("merge-preview")(preview_command)
app.command("merge")(merge_command)
app.command("live")(live_command)
app.command("verify")(verify_command)
console = Console(stderr=True)

Root = Annotated[Path, typer.Option("--root", help="Project folder (holds params.yaml).")]


@app.callback()
def configure(quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet:
        os.environ["FACEFLOW_PROGRESS"] = "0"


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that carry a message for the user: printed without a traceback."""
    from flows.extract import ExtractionError
    from flows.history import HistoryError
    from flows.params import ParamsError
    from flows.pipeline import StageFailed
    from flows.train import TrainingProcessesFailed
    from model.checkpoint import CheckpointError
    from tasks.decisions import DecisionsError
    from tasks.detect import ModelFileError
    from tasks.export import ExportError
    from tasks.faceset import FacesetError
    from tasks.identity import IdentityError
    from tasks.images import ImageError
    from tasks.merge import MergeError
    from tasks.train import EmptyFacesetError
    from tasks.train_options import TrainOptionsError
    from tasks.train_start import ConfigMismatchError
    from tasks.video import VideoError

    return (ParamsError, ExtractionError, StageFailed, CheckpointError, ExportError, FacesetError, EmptyFacesetError,
            ConfigMismatchError, VideoError, ImageError, ModelFileError, DecisionsError, IdentityError,
            FileNotFoundError, HistoryError, MergeError, TrainOptionsError, TrainingProcessesFailed)


def run_reporting_errors(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except user_errors() as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None


def check_side(side: str) -> Side:
    if side not in SIDES:
        raise typer.BadParameter(f"side must be one of {', '.join(SIDES)}, got {side!r}")
    return side  # type: ignore[return-value]


@stage_app.command("extract")
def stage_extract(side: str, root: Root = Path(".")) -> None:
    """extract@SIDE: data/raw/SIDE -> data/SIDE/faces.lance."""
    from flows.extract import extract_flow

    run_reporting_errors(extract_flow, check_side(side), root.resolve())


@stage_app.command("curate")
def stage_curate(side: str, root: Root = Path(".")) -> None:
    """curate@SIDE: data/SIDE/faces.lance -> data/SIDE/selection.json."""
    from flows.curate import curate_flow

    run_reporting_errors(curate_flow, check_side(side), root.resolve())


@stage_app.command("coverage")
def stage_coverage(root: Root = Path(".")) -> None:
    """coverage: src against dst pose coverage -> reports/coverage.md and .png."""
    from flows.coverage import coverage_flow

    run_reporting_errors(coverage_flow, root.resolve())


@stage_app.command("xseg")
def stage_xseg(root: Root = Path(".")) -> None:
    """xseg: labelled faces of both sides -> checkpoints/xseg (untrained marker when there are no labels)."""
    from flows.xseg import xseg_flow

    run_reporting_errors(xseg_flow, root.resolve())


@stage_app.command("mask")
def stage_mask(side: str, root: Root = Path(".")) -> None:
    """mask@SIDE: data/SIDE/faces.lance -> data/SIDE/masks.lance."""
    from flows.mask import mask_flow

    run_reporting_errors(mask_flow, check_side(side), root.resolve())


@stage_app.command("init")
def stage_init(root: Root = Path(".")) -> None:
    """init: the seeded, untrained model -> checkpoints/init."""
    from flows.init_model import init_flow

    run_reporting_errors(init_flow, root.resolve())


@stage_app.command("train")
def stage_train(name: str, root: Root = Path(".")) -> None:
    """train@NAME: one training stage -> checkpoints/NAME, logs/NAME."""
    from flows.train import train_flow

    run_reporting_errors(train_flow, name, root.resolve())


@stage_app.command("merge")
def stage_merge(root: Root = Path(".")) -> None:
    """merge: dst videos with the swapped face -> renders/."""
    from flows.merge import merge_flow

    run_reporting_errors(merge_flow, root.resolve())


@stage_app.command("export")
def stage_export(root: Root = Path(".")) -> None:
    """export: the final model -> exports/NAME.dfm."""
    from flows.export import export_flow

    run_reporting_errors(export_flow, root.resolve())


@app.command()
def sync(root: Root = Path(".")) -> None:
    """Re-render dvc.yaml from params.yaml (after adding or removing training stages)."""
    from flows.params import load_params
    from flows.stages import sync_dvc_yaml

    params = run_reporting_errors(load_params, root.resolve() / "params.yaml")
    changed = sync_dvc_yaml(params, root.resolve())
    console.print("dvc.yaml updated" if changed else "dvc.yaml already matches params.yaml")


@app.command("demo-data")
def demo_data(root: Root = Path(".")) -> None:
    """Put the bundled demo clips into empty data/raw/src and data/raw/dst and track them with DVC."""
    from flows.demo import restore_demo_data

    for folder in restore_demo_data(root.resolve()):
        console.print(f"demo clip placed in {folder}")


@app.command()
def run(root: Root = Path(".")) -> None:
    """Run the whole pipeline as one Prefect flow; up-to-date stages are reported as cached."""
    from flows.pipeline import pipeline_flow
    from flows.report import print_outputs

    outcome = run_reporting_errors(pipeline_flow, root.resolve())
    print_outputs(root.resolve(), outcome, console)


@app.command()
def serve(root: Root = Path(".")) -> None:
    """Register the pipeline and scheduled continue-training deployments with the Prefect server and serve them."""
    from prefect.settings import get_current_settings

    from flows.deployments import serve_deployments

    if not get_current_settings().api.url:
        console.print("[bold red]error:[/] PREFECT_API_URL is not set. Start a server first: "
                      "`prefect server start --host 127.0.0.1` and `export PREFECT_API_URL=http://127.0.0.1:4200/api`")
        raise typer.Exit(1)
    run_reporting_errors(serve_deployments, root.resolve())


@app.command()
def history(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most this many revisions.")] = 20,
    root: Root = Path("."),
) -> None:
    """List the pipeline's revisions: the params keys each changed and every training stage's metrics."""
    from flows.history import list_history, print_history

    print_history(run_reporting_errors(list_history, root.resolve(), limit), Console())


@app.command()
def rollback(
    revision: Annotated[str, typer.Argument(help="The revision to return to (from `faceflow history`, or HEAD~1, a tag...).")],
    stage: Annotated[str | None, typer.Option("--stage", help="Only this training stage and the stages before it; "
                                              "later stages keep their params and retrain on the next run.")] = None,
    commit: Annotated[bool, typer.Option("--commit/--no-commit", help="Record the rollback as a new revision.")] = True,
    root: Root = Path("."),
) -> None:
    """Return to an earlier revision's model: params, dvc.lock and decisions from git, outputs from the DVC cache."""
    from flows.history import rollback as rollback_to

    result = run_reporting_errors(rollback_to, root.resolve(), revision, stage, commit)
    console.print(f"restored {len(result.restored_stages)} stage(s) from {result.short}: {', '.join(result.restored_stages)}")
    if result.commit:
        console.print(f"recorded as revision {result.commit[:7]}")
    elif result.changed_files:
        console.print(f"left uncommitted (staged): {', '.join(result.changed_files)}")
    else:
        console.print(f"the pipeline files already match {result.short}")
    if result.stale_stages:
        console.print(f"`faceflow run` will run again: {', '.join(result.stale_stages)}")
    else:
        console.print("every stage is up to date")
