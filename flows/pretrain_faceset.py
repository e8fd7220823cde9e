"""`faceflow faceset pretrain FOLDER`: build the generic faceset a pretraining stage learns faces from.

Pretraining (a stage with ``pretrain: true``) trains both sides of the model on many people's faces
before it sees src and dst, so that it starts the real stages knowing faces in general. This command
extracts every face of a folder of photos and videos of many people (several faces per frame, videos
sampled at ``--fps``) with the project's ``extract.faces`` framing into ``OUTPUT/faces.lance``; the
training stage takes landmark hull masks for it. Running it again on a folder with new files adds
only their faces.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from flows.params import load_params
from tasks.extract import SideOptions, extract_folder
from tasks.faceset import FacesetError, open_faces
from tasks.images import list_media

logger = logging.getLogger(__name__)

FACES_TABLE = "faces.lance"


class PretrainFacesetError(FacesetError):
    """The folder holds nothing to build a pretraining faceset from."""


def build_pretrain_faceset(folder: Path, output: Path, root: Path, fps: float, max_faces: int) -> int:
    """Extract the faces of ``folder`` into ``output``/faces.lance; the table's face count.

    Raises:
        PretrainFacesetError: The folder has no photo or video, or no face was found in it.
        ParamsError: params.yaml is invalid.
    """
    videos, photos = list_media(folder)
    if not videos and not photos:
        raise PretrainFacesetError(f"{folder} holds no photo or video; put many people's photos or videos in it")
    params = load_params(root / "params.yaml")
    side = replace(SideOptions(), embeddings=False, fps=fps, max_faces=max_faces, detector=params.extract.src.detector,
                   upsample=params.extract.src.upsample, min_face_size=params.extract.src.min_face_size)
    table = output / FACES_TABLE
    logger.info("extracting the faces of %d photos and %d videos in %s into %s (%s, %d px)", len(photos), len(videos),
                folder, table, params.extract.faces.face_type, params.extract.faces.size)
    reports = extract_folder(folder, table, params.extract.faces, side, root)
    failed = [report for report in reports if report.status == "failed"]
    for report in failed:
        logger.warning("%s could not be read (%s); its faces are missing from the faceset", report.path, report.error)
    faces = open_faces(table).count_rows()
    if faces == 0:
        raise PretrainFacesetError(f"no face was found in the {len(photos) + len(videos)} files of {folder}; use photos "
                                   "or videos in which faces are clearly visible")
    return faces


def pretrain_command(
    folder: Annotated[Path, typer.Argument(help="Photos and videos of many people.")],
    output: Annotated[Path, typer.Option("--output", help="Where faces.lance goes (relative to the project).")] = Path(
        "data/pretrain"),
    fps: Annotated[float, typer.Option("--fps", help="Video frames analysed per second.")] = 1.0,
    max_faces: Annotated[int, typer.Option("--max-faces", help="Faces per frame, largest first; 0 for all.")] = 0,
    root: Annotated[Path, typer.Option("--root", help="Project folder.")] = Path("."),
) -> None:
    """Build a generic faceset for pretraining stages from a folder of many people's photos and videos."""
    from flows.cli import run_reporting_errors

    root = root.resolve()
    output = output if output.is_absolute() else root / output
    faces = run_reporting_errors(build_pretrain_faceset, folder.resolve(), output, root, fps, max_faces)
    shown = output.relative_to(root).as_posix() if output.is_relative_to(root) else output.as_posix()
    typer.echo(f"{shown}/{FACES_TABLE}: {faces} faces. To pretrain on them, set train.pretrain_faceset: {shown} in "
               "params.yaml and put a stage with pretrain: true first in train.stages (`faceflow sync` after).")
