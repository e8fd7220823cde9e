"""`faceflow xseg ...`: label faces for XSeg and check the labels.

`faceflow xseg label-sheet src` picks faces spread over the side's poses that have no label yet and
writes each crop and its landmark hull (a starting mask) to review/src/xseg_todo/. Correct a mask in
any image editor (white = face, black = hair, hands, glasses, background) and save it as
data/src/xseg_labels/<face_id>.png. `faceflow xseg labels src` lists the labels and names every file
that cannot be used, with what to do; the xseg stage reads the same folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from flows.params import SIDES
from flows.stages import faces_table, xseg_labels_folder
from tasks.faceset import FacesetError
from tasks.holdout import split_holdout
from tasks.xseg_labels import (DRAFT_SUFFIX, LABEL_SUFFIX, XsegLabelError, list_label_files, scan_labels,
                               write_label_sheet)

TODO_FOLDER = "review/{side}/xseg_todo"  # for people to work from; not a pipeline input, not in git
DEFAULT_SHEET_COUNT = 24

xseg_app = typer.Typer(help="Label faces for XSeg, the trainable face segmentation, and check the labels.",
                       no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)  # long paths stay on one line
Root = Annotated[Path, typer.Option("--root", help="Project folder (holds params.yaml).")]


@xseg_app.callback()
def xseg() -> None:
    """Label faces for XSeg and check the labels."""


def check_side(side: str) -> str:
    if side not in SIDES:
        raise typer.BadParameter(f"side must be one of {', '.join(SIDES)}, got {side!r}")
    return side


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(1)


@xseg_app.command("label-sheet")
def label_sheet_command(
    side: Annotated[str, typer.Argument(help="src or dst.")],
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many faces to pick.")] = DEFAULT_SHEET_COUNT,
    root: Root = Path("."),
) -> None:
    """Write faces worth labelling (spread over the poses, not yet labelled) with starting masks to correct."""
    side, root = check_side(side), root.resolve()
    labels_folder = root / xseg_labels_folder(side)
    todo = root / TODO_FOLDER.format(side=side)
    try:
        scan = scan_labels(labels_folder, root / faces_table(side))
        picked = write_label_sheet(root / faces_table(side), todo, count, {label.face_id for label in scan.labels})
    except (FacesetError, XsegLabelError) as error:
        fail(str(error))
    if not picked:
        console.print(f"every face of {faces_table(side)} already has a label in {labels_folder}")
        return
    console.print(f"wrote {len(picked)} faces to label to {todo}: <face_id>{LABEL_SUFFIX} is the face, "
                  f"<face_id>{DRAFT_SUFFIX} its landmark hull as a starting mask")
    console.print(f"correct a mask (white = face; black = hair, hands, glasses, background) and save it as "
                  f"{labels_folder}/<face_id>{LABEL_SUFFIX}; then `faceflow xseg labels {side}` checks them")


@xseg_app.command("labels")
def labels_command(side: Annotated[str, typer.Argument(help="src or dst.")], root: Root = Path(".")) -> None:
    """List a side's XSeg labels and name every label file that cannot be used (exit 1 if any)."""
    side, root = check_side(side), root.resolve()
    folder = root / xseg_labels_folder(side)
    try:
        scan = scan_labels(folder, root / faces_table(side))
    except FacesetError as error:
        fail(str(error))
    ids = [label.face_id for label in scan.labels]
    # the xseg stage holds faces out of both sides' labels together
    others = [path.name[:-len(LABEL_SUFFIX)] for other in SIDES if other != side
              for path in list_label_files(root / xseg_labels_folder(other)) if not path.name.endswith(DRAFT_SUFFIX)]
    held_out = set(split_holdout(ids + others)[1]) & set(ids)
    for label in scan.labels:
        console.print(f"  {label.path.name}{'  (held out: scores the network)' if label.face_id in held_out else ''}",
                      highlight=False)
    console.print(f"{folder}: {len(ids)} usable label(s)" + (f", {len(held_out)} held out to score XSeg" if ids else ""))
    if not ids and not scan.problems:
        console.print(f"no labels yet: `faceflow xseg label-sheet {side}` picks faces to label")
    if scan.problems:
        fail(f"{len(scan.problems)} unusable label file(s):\n  " + "\n  ".join(scan.problems))
