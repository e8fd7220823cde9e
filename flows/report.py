"""What a pipeline run tells the user at the end: each stage's outcome and where every output is."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flows.params import load_params
from flows.stages import checkpoint_dir


def list_outputs(root: Path) -> dict[str, list[Path]]:
    params = load_params(root / "params.yaml")
    final = params.train.final_stage
    return {
        "render": sorted((root / "renders").glob("*.mp4")),
        "provenance": sorted((root / "renders").glob("*.provenance.json")),
        "model (.dfm)": sorted((root / "exports").glob("*.dfm")),
        "checkpoint": [root / checkpoint_dir(final)],
        "preview": sorted((root / checkpoint_dir(final)).glob("preview.png")),
        "tensorboard logs": [root / "logs"],
        "pose coverage": sorted((root / "reports").glob("coverage.*")),
        "metrics": sorted((root / "metrics").rglob("*.json")),
    }


def print_outputs(root: Path, outcome: dict[str, str], console: Console) -> None:
    table = Table(title="faceflow pipeline")
    table.add_column("stage")
    table.add_column("outcome")
    for name, result in outcome.items():
        table.add_row(name, result)
    console.print(table)
    for label, paths in list_outputs(root).items():
        for path in paths:
            console.print(f"{label:>18}: {path.relative_to(root) if path.is_relative_to(root) else path}")
    console.print("TensorBoard: tensorboard --logdir logs   (then open http://127.0.0.1:6006)")
    merge_metrics = root / "metrics" / "merge.json"
    if merge_metrics.exists():
        console.print(f"merge: {json.loads(merge_metrics.read_text())}")
