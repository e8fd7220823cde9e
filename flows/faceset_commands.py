"""`faceflow faceset ...`: look at a faceset table in a chosen order.

`faceflow faceset sort --by yaw` orders data/src/faces.lance by a sort method, prints the first and
last faces with their scores, and writes a contact sheet of the order (review/src/sort-yaw.png)
to look through before curating. `faceflow faceset review` shows the curated faceset grouped by the
reason each face was kept or left out, and keeps the hand-rejects file (data/<side>/rejects.yaml).
`faceflow faceset place` shows one frame with what the detector finds, and with ``--box`` fits
landmarks in a box you give and records it in data/<side>/landmarks.yaml for the next extraction.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated

import typer

from flows.params import SIDES, load_params
from flows.pretrain_faceset import pretrain_command
from flows.stages import faces_table
from tasks.contact_sheet import save_contact_sheet
from tasks.decisions import DecisionsError, load_landmark_overrides, load_rejects, save_rejects
from tasks.extract import create_face_analyzer, place_face
from tasks.images import ImageError
from tasks.placement import read_source_frame, record_placed_face, render_placement
from tasks.contact_sheet import write_png
from tasks.video import VideoError
from tasks.faceset import FacesetError, open_faces
from tasks.selection import Selection
from tasks.sort import SORT_METHOD_CHOICES, SortError, SortResult, sort_faces
from tasks.sort_images import read_crops

logger = logging.getLogger(__name__)

faceset_app = typer.Typer(help="Inspect a faceset (sort, review, place faces) and build a pretraining faceset.",
                          no_args_is_help=True)
faceset_app.command("pretrain")(pretrain_command)

REVIEW_DIR = Path("review")  # contact sheets for people to look at; not a pipeline output
SHOWN_AT_EACH_END = 5
SHEET_COLUMNS = 10
SHEET_TILE = 128


@faceset_app.callback()
def faceset() -> None:
    """Inspect a faceset: sort it and review the order as contact sheets."""


def check_method(method: str) -> str:
    if method not in SORT_METHOD_CHOICES:
        raise typer.BadParameter(f"unknown sort method {method!r}; choose one of: {', '.join(SORT_METHOD_CHOICES)}")
    return method


def check_side(side: str) -> str:
    if side not in SIDES:
        raise typer.BadParameter(f"side must be one of {', '.join(SIDES)}, got {side!r}")
    return side


def format_score(score: float) -> str:
    return "-" if math.isnan(score) else f"{score:.4g}"


def label_faces(table_path: Path, result: SortResult, count: int) -> list[str]:
    """Two-line tile labels for the first ``count`` faces: rank and score, then source file and frame."""
    columns = open_faces(table_path).to_table(columns=["face_id", "source_path", "frame_index", "face_index"]).to_pylist()
    origin = {row["face_id"]: row for row in columns}
    labels = []
    for rank, (face_id, score) in enumerate(zip(result.face_ids[:count], result.scores[:count], strict=True), start=1):
        row = origin[face_id]
        face = f"/{row['face_index']}" if row["face_index"] else ""
        labels.append(f"{rank}: {format_score(score)}\n{Path(row['source_path']).stem} f{row['frame_index']}{face}")
    return labels


def print_ends(result: SortResult) -> None:
    """The first and last few faces of the order, with their scores."""
    total = len(result.face_ids)
    shown = list(range(min(SHOWN_AT_EACH_END, total)))
    tail = [index for index in range(max(total - SHOWN_AT_EACH_END, 0), total) if index not in shown]
    typer.echo(f"{result.method}: {result.description}")
    for index in shown + ([None] if tail and tail[0] > shown[-1] + 1 else []) + tail:
        if index is None:
            typer.echo("   ...")
        else:
            typer.echo(f"{index + 1:>6}  {result.face_ids[index]}  {format_score(result.scores[index])}")


@faceset_app.command("sort")
def sort_command(
    by: Annotated[str, typer.Option("--by", help=f"Sort method: {', '.join(SORT_METHOD_CHOICES)}.")],
    side: Annotated[str, typer.Option("--side", help="Which faceset: src or dst.")] = "src",
    output: Annotated[Path | None, typer.Option("--output", help="Contact sheet PNG (default review/SIDE/sort-METHOD.png).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Show only the first N faces of the order in the sheet.")] = None,
    target_count: Annotated[int | None, typer.Option("--target-count", min=1, help="best_faces*: how many faces to pick.")] = None,
    root: Annotated[Path, typer.Option("--root", help="Project folder.")] = Path("."),
) -> None:
    """Sort a faceset by METHOD, print both ends of the order and write a contact sheet of it."""
    method = check_method(by)
    root = root.resolve()
    table_path = root / faces_table(check_side(side))
    try:
        result = sort_faces(table_path, method, target_count=target_count)  # type: ignore[arg-type]
    except (FacesetError, SortError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    if not result.face_ids:
        typer.echo(f"{table_path} holds no faces: nothing to sort", err=True)
        raise typer.Exit(1)
    print_ends(result)
    shown = result.face_ids[: limit or len(result.face_ids)]
    crops = read_crops(open_faces(table_path), shown, SHEET_TILE)
    labels = label_faces(table_path, result, len(shown))
    title = f"{side} faces by {method}: {result.description}"
    sheet_path = output if output is not None else root / REVIEW_DIR / side / f"sort-{method}.png"
    written = save_contact_sheet(sheet_path, crops, labels, columns=SHEET_COLUMNS, tile=SHEET_TILE, title=title)
    where = written[0] if len(written) == 1 else f"{written[0]} .. {written[-1]} ({len(written)} pages)"
    typer.echo(f"contact sheet of {len(shown)} of {len(result.face_ids)} faces: {where}")


def group_by_reason(selection: Selection) -> dict[str, list[tuple[str, str]]]:
    """kept / small / blurry / by hand / ... -> [(face id, detail)], in face-id order."""
    groups: dict[str, list[tuple[str, str]]] = {"kept": [(face_id, "kept") for face_id in selection.kept]}
    for face_id, reason in sorted(selection.rejected.items()):
        groups.setdefault(reason.split(":")[0], []).append((face_id, reason))
    return groups


@faceset_app.command("review")
def review_command(
    side: Annotated[str, typer.Option("--side", help="Which faceset: src or dst.")] = "src",
    accept: Annotated[list[str] | None, typer.Option("--accept", help="Copy the faces left out for this reason "
                                                     "(e.g. blurry) into the rejects file as your own decisions.")] = None,
    root: Annotated[Path, typer.Option("--root", help="Project folder.")] = Path("."),
) -> None:
    """Contact sheets of the curated faceset grouped by reason, and the hand-rejects file to edit."""
    root = root.resolve()
    side = check_side(side)
    selection_path, table_path = root / "data" / side / "selection.json", root / faces_table(side)
    rejects_path = root / "data" / side / "rejects.yaml"
    if not selection_path.is_file():
        typer.echo(f"error: {selection_path} not found; run the curate stage first (dvc repro curate@{side})", err=True)
        raise typer.Exit(1)
    groups = group_by_reason(Selection.load(selection_path))
    dataset = open_faces(table_path)
    for group, members in groups.items():
        if not members:
            continue
        ids = [face_id for face_id, _ in members]
        labels = [f"{face_id[:16]}\n{face_id[17:]} {detail if group != 'kept' else ''}".rstrip() for face_id, detail in members]
        sheet = root / REVIEW_DIR / side / f"{group.replace(' ', '-')}.png"
        pages = save_contact_sheet(sheet, read_crops(dataset, ids, SHEET_TILE), labels, columns=SHEET_COLUMNS, tile=SHEET_TILE,
                                   title=f"{side}: {group} ({len(ids)} faces)")
        sheet.with_suffix(".txt").write_text("".join(f"{face_id}  {detail}\n" for face_id, detail in members))
        typer.echo(f"{group:>10}: {len(ids):5d} faces -> {pages[0].relative_to(root)}" + (f" (+{len(pages) - 1} pages)" if len(pages) > 1 else ""))
    rejects = load_rejects(rejects_path)
    for reason in accept or []:
        taken = {face_id: f"accepted: {detail}" for face_id, detail in groups.get(reason, [])}
        if not taken:
            typer.echo(f"no faces were left out as {reason!r}; reasons here: {', '.join(sorted(set(groups) - {'kept'})) or 'none'}", err=True)
            raise typer.Exit(1)
        rejects.update({face_id: detail for face_id, detail in taken.items() if face_id not in rejects})
    save_rejects(rejects_path, rejects)
    typer.echo(f"{rejects_path.relative_to(root)}: {len(rejects)} faces rejected by hand. Add face ids from the sheets "
               f"(full ids in the .txt files beside them), then run `dvc repro` or `faceflow run`.")


def parse_box(text: str) -> list[float]:
    try:
        box = [float(value) for value in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise typer.BadParameter(f"--box must be x0,y0,x1,y1 in frame pixels with x0 < x1 and y0 < y1, got {text!r}")
    return box


@faceset_app.command("place")
def place_command(
    source: Annotated[Path, typer.Argument(help="The video or photo, e.g. data/raw/src/clip.mp4.")],
    frame: Annotated[int, typer.Argument(min=0, help="Frame index in the full stream (0 for a photo).")],
    side: Annotated[str, typer.Option("--side", help="Which side the source belongs to: src or dst.")] = "src",
    box: Annotated[str | None, typer.Option("--box", help="x0,y0,x1,y1 around the face: fit landmarks in it and record it.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Forget the face placed on this frame.")] = False,
    root: Annotated[Path, typer.Option("--root", help="Project folder.")] = Path("."),
) -> None:
    """Show a frame with the detector's faces; with --box, place a face there by hand (data/SIDE/landmarks.yaml)."""
    root = root.resolve()
    side = check_side(side)
    path = source if source.is_absolute() else (Path.cwd() / source).resolve()
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        typer.echo(f"error: {path} is not inside the project {root}; put it in data/raw/{side}/ first", err=True)
        raise typer.Exit(1) from None
    decisions = root / "data" / side / "landmarks.yaml"
    params = load_params(root / "params.yaml")
    faces = params.extract.faces
    try:
        load_landmark_overrides(decisions)  # refuse to rewrite a file that is already broken
        image = read_source_frame(path, frame)
        analyzer = create_face_analyzer(faces, params.extract.side(side))
        placed = place_face(analyzer, image, {"box": parse_box(box)}) if box and not clear else None
        detected = analyzer.detect(image)
    except (DecisionsError, VideoError, ImageError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    preview = root / REVIEW_DIR / side / f"place-{path.stem}-{frame:06d}.png"
    preview.parent.mkdir(parents=True, exist_ok=True)
    write_png(preview, render_placement(image, detected, placed, faces.face_type, faces.size))
    for number, face in enumerate(detected):
        typer.echo(f"detected {number}: box {','.join(f'{value:.0f}' for value in face.bbox)}")
    if not detected:
        typer.echo("the detector finds no face on this frame")
    if clear or placed is not None:
        count = record_placed_face(decisions, relative, frame, None if clear else parse_box(box or ""))
        action = "cleared the face placed on" if clear else "placed a face on"
        typer.echo(f"{decisions.relative_to(root)}: {action} {relative} frame {frame} ({count} frames of it placed by hand); "
                   "`faceflow run` re-extracts only this source")
    typer.echo(f"preview: {preview.relative_to(root)}")
