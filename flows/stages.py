"""The pipeline's stages, declared once: dvc.yaml is rendered from here and params.yaml.

Each stage lists exactly the params keys, code and data it depends on. The training chain comes
from ``train.stages`` in params.yaml, so adding a stage there and running ``faceflow sync`` (or
``faceflow run``, which syncs first) is all it takes.
"""

from __future__ import annotations

import ast
import json
import logging
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from flows.params import SIDES, Params
from tasks.xseg_masks import uses_xseg

logger = logging.getLogger(__name__)

HEADER = "# Rendered from params.yaml by `faceflow sync`: edit params.yaml (train.stages) and flows/stages.py, not this file.\n"

SOURCE_ROOT = Path(__file__).resolve().parents[1]
STAGE_CODE_PACKAGES = {"tasks", "model"}


def code_dependencies(flow_file: str) -> list[str]:
    """A stage's code: its flow module plus every tasks/ and model/ module it imports, transitively.

    Derived from the imports rather than listed by hand, so the list cannot drift from the code.
    """
    found: set[str] = set()
    pending = [flow_file]
    while pending:
        tree = ast.parse((SOURCE_ROOT / pending.pop()).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in STAGE_CODE_PACKAGES:
                path = node.module.replace(".", "/") + ".py"
                if path not in found:
                    found.add(path)
                    pending.append(path)
    return [flow_file, *sorted(found)]


def faces_table(side: str) -> str:
    return f"data/{side}/faces.lance"


def masks_table(side: str) -> str:
    return f"data/{side}/masks.lance"


def checkpoint_dir(stage: str) -> str:
    return f"checkpoints/{stage}"


def selection_file(side: str) -> str:
    return f"data/{side}/selection.json"


def xseg_labels_folder(side: str) -> str:
    """A side's hand-drawn XSeg labels, <face_id>.png (human decisions, in git)."""
    return f"data/{side}/xseg_labels"


XSEG_CHECKPOINT = "checkpoints/xseg"
XSEG_METRICS = "metrics/xseg.json"


def metrics_file(stage: str) -> str:
    """train@<stage>'s metrics (final losses, held-out score): a DVC metrics file."""
    return f"metrics/train/{stage}.json"


def loss_history_file(stage: str) -> str:
    """train@<stage>'s loss curve, one row per logged iteration: a DVC plots file."""
    return f"metrics/train/{stage}/losses.tsv"


# Columns every loss history has, in this order (a row may leave any but "iteration" empty), so the
# plots in dvc.yaml find their fields in every stage's file. Other columns follow these.
LOSS_HISTORY_COLUMNS = ("iteration", "total", "src_total", "dst_total", "score")
LOSS_PLOT_FIELDS = ("src_total", "dst_total")
SCORE_PLOT_FIELD = "score"


def training_inputs() -> list[str]:
    return [item for side in SIDES for item in (faces_table(side), masks_table(side), selection_file(side))]


def render_stages(params: Params) -> dict:
    """The dvc.yaml document for these params."""
    final = checkpoint_dir(params.train.final_stage)
    pretraining = any(options.pretrain for options in params.train.stages.values())
    pretrain_inputs = [params.train.pretrain_faceset] if pretraining and params.train.pretrain_faceset else []
    stages: dict[str, dict] = {
        "extract": {
            "foreach": list(SIDES),
            "do": {
                "cmd": "faceflow stage extract ${item}",
                "deps": ["data/raw/${item}", "data/${item}/landmarks.yaml", *code_dependencies("flows/extract.py")],
                "params": ["extract.faces", "extract.${item}"],
                # persist: extraction keeps finished sources between runs and redoes only what changed
                "outs": [{"data/${item}/faces.lance": {"persist": True}}],
            },
        },
        "curate": {
            "foreach": list(SIDES),
            "do": {
                "cmd": "faceflow stage curate ${item}",
                "deps": ["data/${item}/faces.lance", "data/${item}/rejects.yaml", "data/${item}/reference",
                         *code_dependencies("flows/curate.py")],
                "params": ["curate.${item}", "extract.faces", "extract.${item}"],  # the analyzer reads the reference photos
                "outs": ["data/${item}/selection.json"],
            },
        },
        "coverage": {
            "cmd": "faceflow stage coverage",
            "deps": [faces_table("src"), selection_file("src"), faces_table("dst"), *code_dependencies("flows/coverage.py")],
            "outs": ["reports/coverage.md", "reports/coverage.png"],
        },
        "xseg": {
            "cmd": "faceflow stage xseg",
            # with no labels it writes an "untrained" marker in the checkpoint folder (DVC needs the output)
            "deps": [path for side in SIDES for path in (faces_table(side), xseg_labels_folder(side))]
                    + code_dependencies("flows/xseg.py"),
            "params": ["xseg"],
            "outs": [XSEG_CHECKPOINT],
            "metrics": [{XSEG_METRICS: {"cache": False}}],
        },
        "mask": {
            "foreach": list(SIDES),
            "do": {
                "cmd": "faceflow stage mask ${item}",
                # the XSeg network only when it makes the masks: hull masks do not wait for (or re-run after) it
                "deps": ["data/${item}/faces.lance", *([XSEG_CHECKPOINT] if params.mask.kind == "xseg" else []),
                         *code_dependencies("flows/mask.py")],
                "params": ["mask"],
                "outs": ["data/${item}/masks.lance"],
            },
        },
        "init": {
            "cmd": "faceflow stage init",
            "deps": code_dependencies("flows/init_model.py"),
            # init_from is listed only when set: DVC refuses a params key that params.yaml lacks
            "params": ["train.model", *(["train.init_from"] if params.train.init_from is not None else [])],
            "outs": [checkpoint_dir("init")],
        },
        "train": {
            "foreach": {name: {"previous": params.train.previous_stage(name)} for name in params.train.stage_names},
            "do": {
                "cmd": "faceflow stage train ${key}",
                "deps": ["checkpoints/${item.previous}", *training_inputs(), *pretrain_inputs,
                         *code_dependencies("flows/train.py")],
                "params": ["train.model", "train.stages.${key}"],
                "outs": ["checkpoints/${key}", "logs/${key}"],
                # Metrics and plots are small and committed to git with dvc.lock (cache: false), so every
                # revision carries its own: `dvc metrics diff`, `dvc plots diff`, `faceflow history`.
                "metrics": [{metrics_file("${key}"): {"cache": False}}],
                "plots": [{loss_history_file("${key}"): {"cache": False, "x": "iteration", "y": "total"}}],
            },
        },
        "merge": {
            "cmd": "faceflow stage merge",
            # the dst curation says which faces are other people, left unswapped
            "deps": [final, "data/raw/dst", faces_table("dst"), selection_file("dst"),
                     *([XSEG_CHECKPOINT] if uses_xseg(params.merge.mask_mode) else []), *code_dependencies("flows/merge.py")],
            "params": ["merge"],
            "outs": ["renders"],
            "metrics": [{"metrics/merge.json": {"cache": False}}],
        },
        "export": {
            "cmd": "faceflow stage export",
            # the dst's own faces are what the exported files are checked on; a trained XSeg is exported too
            "deps": [final, XSEG_CHECKPOINT, "data/raw/dst", *code_dependencies("flows/export.py")],
            "params": ["export"],
            "outs": ["exports"],
            "metrics": [{"metrics/export.json": {"cache": False}}],
        },
    }
    return {"stages": stages, "plots": training_plots(params.train.stage_names)}


def training_plots(stage_names: list[str]) -> list[dict]:
    """Top-level plots over the whole training chain: iterations run on across stages, so the curves join up."""
    files = [loss_history_file(name) for name in stage_names]
    return [
        {"training loss": {"x": "iteration", "y": {path: list(LOSS_PLOT_FIELDS) for path in files},
                           "y_label": "loss per side (weighted sum of its terms)"}},
        {"held-out score": {"x": "iteration", "y": {path: SCORE_PLOT_FIELD for path in files},
                            "y_label": "SSIM inside the face mask, held-out faces"}},
    ]


def stage_order(params: Params) -> list[str]:
    """Every stage name as DVC knows it, in an order that respects the dependencies."""
    names = [f"extract@{side}" for side in SIDES] + [f"curate@{side}" for side in SIDES] + ["coverage", "xseg"]
    names += [f"mask@{side}" for side in SIDES] + ["init"]
    names += [f"train@{name}" for name in params.train.stage_names]
    return names + ["merge", "export"]


def render_dvc_yaml(params: Params) -> str:
    return HEADER + yaml.safe_dump(render_stages(params), sort_keys=False, default_flow_style=False, width=120)


def sync_dvc_yaml(params: Params, root: Path) -> bool:
    """Rewrite dvc.yaml when it does not match params.yaml; returns whether it changed."""
    path = root / "dvc.yaml"
    wanted = render_dvc_yaml(params)
    if path.exists() and path.read_text() == wanted:
        return False
    path.write_text(wanted)
    logger.info("dvc.yaml updated from params.yaml (training stages: %s)", ", ".join(params.train.stage_names))
    return True


def write_metrics(path: Path, metrics: dict) -> None:
    """A stage's metrics file (DVC metrics: compared across revisions by ``dvc metrics diff``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def format_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars are Real too
        raise ValueError(f"loss history values must be numbers, got {value!r}")
    return str(int(value)) if isinstance(value, numbers.Integral) else f"{float(value):.6g}"


def write_loss_history(path: Path, rows: Sequence[Mapping[str, float | int | None]]) -> None:
    """Write a training stage's loss curve as the tab-separated file DVC plots reads (replacing it atomically).

    Args:
        path: Where to write, normally ``root / loss_history_file(stage)``.
        rows: One mapping per logged iteration, in order: "iteration" (the model's total iteration
            count, so stages continue one another's curves) and numbers such as "total",
            "src_total", "dst_total" and "score". A missing or None value is an empty cell.

    Raises:
        ValueError: A row has no "iteration", or a value is not a number.
    """
    columns = list(LOSS_HISTORY_COLUMNS)
    for index, row in enumerate(rows):
        if row.get("iteration") is None:
            raise ValueError(f"loss history row {index} has no 'iteration': {dict(row)}")
        columns += [name for name in row if name not in columns]
    lines = ["\t".join(columns)]
    lines += ["\t".join(format_cell(row.get(name)) for name in columns) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join(lines) + "\n")
    os.replace(partial, path)


def read_loss_history(path: Path) -> list[dict[str, float]]:
    """Read a file written by ``write_loss_history``: one dict per row, empty cells left out, "iteration" an int."""
    header, *lines = path.read_text().splitlines()
    columns = header.split("\t")
    rows = []
    for line in lines:
        row = {name: float(cell) for name, cell in zip(columns, line.split("\t"), strict=True) if cell}
        row["iteration"] = int(row["iteration"])
        rows.append(row)
    return rows
