"""Deployments served against a Prefect server: the pipeline on demand, and scheduled continued training.

``faceflow serve`` registers both and keeps running, executing runs as the server schedules them.
Each scheduled run adds ``serve.continue_iterations`` to the last training stage in params.yaml,
runs the pipeline (only that stage, merge and export are stale, and the stage continues from where
it stopped), and commits params.yaml + dvc.lock: one new pipeline revision per run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from prefect import flow, get_run_logger, serve
from prefect.schedules import Cron
from ruamel.yaml import YAML

from flows.params import load_params, parse_params
from flows.pipeline import pipeline_flow

PIPELINE_DEPLOYMENT = "pipeline"
CONTINUE_DEPLOYMENT = "continue-training"


def add_iterations(params_path: Path, extra: int) -> tuple[str, int, int]:
    """Raise the last training stage's iterations in params.yaml (comments kept); returns (stage, old, new)."""
    yaml = YAML()
    yaml.preserve_quotes = True
    document = yaml.load(params_path.read_text())
    stage = list(document["train"]["stages"])[-1]
    options = document["train"]["stages"][stage]
    old = int(options.get("iterations", 1000))
    options["iterations"] = old + extra
    parse_params(document, str(params_path))  # never write an invalid file
    with params_path.open("w") as handle:
        yaml.dump(document, handle)
    return stage, old, old + extra


def commit_revision(root: Path, message: str) -> str:
    """Commit the pipeline files that changed; returns the new commit id."""
    files = [name for name in ("params.yaml", "dvc.yaml", "dvc.lock", "metrics") if (root / name).exists()]
    subprocess.run(["git", "add", "--", *files], cwd=root, check=True, capture_output=True)
    result = subprocess.run(["git", "commit", "-m", message, "--", *files], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"git commit in {root} failed: {result.stderr.strip() or result.stdout.strip()}")
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@flow(name="continue-training", log_prints=True)
def continue_training_flow(root: str, iterations: int | None = None) -> dict:
    """Train the last stage some more, re-render and re-export, and record it as a new revision."""
    logger = get_run_logger()
    project = Path(root).resolve()
    params = load_params(project / "params.yaml")
    extra = iterations or params.serve.continue_iterations
    stage, old, new = add_iterations(project / "params.yaml", extra)
    logger.info("train@%s: iterations %d -> %d", stage, old, new)
    outcome = pipeline_flow(project)
    result = {"stage": stage, "iterations": new, "stages": outcome}
    if params.serve.commit:
        result["commit"] = commit_revision(project, f"Continue training {stage}: iterations {old} -> {new}")
        logger.info("recorded revision %s", result["commit"])
    return result


@flow(name="pipeline", log_prints=True)
def pipeline_deployment_flow(root: str) -> dict:
    """The whole pipeline, run on demand from the Prefect UI or `prefect deployment run`."""
    return pipeline_flow(Path(root))


def serve_deployments(root: Path) -> None:
    """Register the deployments with the Prefect server in PREFECT_API_URL and run them as scheduled (blocks)."""
    params = load_params(root / "params.yaml")
    on_demand = pipeline_deployment_flow.to_deployment(
        name=PIPELINE_DEPLOYMENT, parameters={"root": str(root)}, description="Run the faceflow pipeline once."
    )
    scheduled = continue_training_flow.to_deployment(
        name=CONTINUE_DEPLOYMENT,
        schedule=Cron(params.serve.cron, timezone=params.serve.timezone),
        parameters={"root": str(root)},
        description=f"Add {params.serve.continue_iterations} iterations to the last training stage and re-render.",
    )
    serve(on_demand, scheduled)
