"""`faceflow merge --preview N [--set key=value ...]` (or `faceflow merge-preview --frame N`): try merge settings on
one frame in seconds; `faceflow merge` alone runs the merge stage.

Renders the dst frame beside its swap (review/merge-preview-<N>.png) with the final training stage's
checkpoint and the dst faces table, using params.yaml's ``merge`` section with ``--set`` overrides
validated like params.yaml itself (an unknown key or a bad value is an error naming it). Once a
setting looks right, put it in params.yaml and run the merge stage.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
import typer
import yaml
from pydantic import TypeAdapter, ValidationError

from flows.params import Params, ParamsError, load_params
from flows.stages import XSEG_CHECKPOINT, checkpoint_dir, faces_table, selection_file
from model.checkpoint import CheckpointError
from tasks.contact_sheet import write_png
from tasks.faceset import FacesetError, hash_file
from tasks.images import ImageError, list_media
from tasks.merge import (
    FaceSwapper,
    FrameMerger,
    MergeError,
    MergeOptions,
    check_face_type,
    load_dst_faces,
    load_xseg_for,
    read_other_people,
)
from tasks.placement import read_source_frame
from tasks.video import VideoError, probe_video

REVIEW_DIR = Path("review")  # images for people to look at; not a pipeline output
LABEL_COLOUR = (80, 255, 80)  # BGR


def apply_overrides(options: MergeOptions, settings: list[str]) -> MergeOptions:
    """``options`` with each ``key=value`` (value read as YAML: 16, true, null, seamless) applied.

    Raises:
        typer.BadParameter: a setting is not key=value, names no merge option, or has an invalid value.
    """
    values = dataclasses.asdict(options)
    given: dict[str, str] = {}
    for setting in settings:
        key, separator, text = setting.partition("=")
        key = key.strip().removeprefix("merge.")
        if not separator or not key:
            raise typer.BadParameter(f"{setting!r} is not key=value, e.g. blend_mode=seamless", param_hint="--set")
        if key not in values:
            raise typer.BadParameter(f"{key!r} is not a merge option; choose from {', '.join(values)}", param_hint="--set")
        try:
            values[key] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise typer.BadParameter(f"{key}={text!r} is not a readable value ({error})", param_hint="--set") from None
        given[key] = text
    try:
        return TypeAdapter(MergeOptions).validate_python(values)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            key = ".".join(str(part) for part in problem["loc"])
            message = problem["msg"].removeprefix("Value error, ")  # a range check names its own key
            problems.append(f"{key}={given[key]}: {message}" if key in given else f"{key}: {message}" if key else message)
        raise typer.BadParameter("; ".join(problems), param_hint="--set") from None


def choose_video(raw_dst: Path, name: str | None) -> Path:
    """The dst video called ``name`` (file name or stem), or the first one.

    Raises:
        MergeError: no dst video, or none of that name.
    """
    videos, _ = list_media(raw_dst)
    if not videos:
        raise MergeError(f"{raw_dst} holds no video to preview a merge on; add one (see the README)")
    if name is None:
        return videos[0]
    for video in videos:
        if name in (video.name, video.stem):
            return video
    raise MergeError(f"no dst video called {name!r} in {raw_dst}; there are: {', '.join(video.name for video in videos)}")


def draw_label(image: np.ndarray, text: str) -> np.ndarray:
    """A copy of the image with ``text`` in its top-left corner."""
    labelled = image.copy()
    scale = max(image.shape[0] / 720, 0.4)
    cv2.putText(labelled, text, (round(12 * scale), round(32 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, LABEL_COLOUR,
                max(1, round(2 * scale)), cv2.LINE_AA)
    return labelled


def render_preview(root: Path, params: Params, frame_index: int, options: MergeOptions, video_name: str | None
                   ) -> tuple[Path, int]:
    """Write review/merge-preview-<N>.png (dst | swap); returns its path and how many faces were swapped."""
    video = choose_video(root / "data" / "raw" / "dst", video_name)
    frame_count = probe_video(video).frame_count
    if frame_index >= frame_count:
        raise MergeError(f"--frame {frame_index} is past the end of {video.name}: it has {frame_count} frames (0..{frame_count - 1})")
    model_dir = root / checkpoint_dir(params.train.final_stage)
    swapper = FaceSwapper.from_checkpoint(model_dir)
    check_face_type(swapper.face_type, params.train.model.face_type, model_dir)
    other_people = read_other_people(root / selection_file("dst"))
    faces = load_dst_faces(root / faces_table("dst"), hash_file(video))
    wanted = {index: [face for face in listed if face.face_id not in other_people] for index, listed in faces.items()}
    frame = read_source_frame(video, frame_index)
    xseg = load_xseg_for(options.mask_mode, root / XSEG_CHECKPOINT)
    swapped = FrameMerger(swapper, options, wanted, xseg).merge(frame_index, frame)
    output = root / REVIEW_DIR / f"merge-preview-{frame_index}.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_png(output, np.hstack([draw_label(frame, f"dst {video.name} frame {frame_index}"), draw_label(swapped, "swap")]))
    return output, len(wanted.get(frame_index, []))


Settings = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a merge option for this preview, e.g. --set blend_mode=seamless (repeatable).")]
VideoName = Annotated[str | None, typer.Option("--video", help="Which dst video (its file name); default the first.")]
RootOption = Annotated[Path, typer.Option("--root", help="Project folder (holds params.yaml).")]


def preview_command(
    frame: Annotated[int, typer.Option("--frame", min=0, help="Frame index in the dst video (from 0).")],
    settings: Settings = None,
    video: VideoName = None,
    root: RootOption = Path("."),
) -> None:
    """Render one dst frame beside its swap (review/merge-preview-N.png) to try merge settings quickly."""
    show_preview(frame, settings or [], video, root.resolve())


def merge_command(
    preview: Annotated[int | None, typer.Option("--preview", min=0, help="Only render this dst frame (from 0) beside its "
                                                "swap, to try settings.")] = None,
    settings: Settings = None,
    video: VideoName = None,
    root: RootOption = Path("."),
) -> None:
    """Merge: with --preview FRAME one dst frame beside its swap in seconds; without it, the merge stage."""
    if preview is None:
        if settings or video:
            raise typer.BadParameter("--set and --video go with --preview; the merge stage reads params.yaml")
        from flows.cli import run_reporting_errors
        from flows.merge import merge_flow

        run_reporting_errors(merge_flow, root.resolve())
        return
    show_preview(preview, settings or [], video, root.resolve())


def show_preview(frame: int, settings: list[str], video: str | None, root: Path) -> None:
    """Write and name the preview of one frame; user errors exit 1 with the message."""
    try:
        params = load_params(root / "params.yaml")
        options = apply_overrides(params.merge, settings)
        output, swapped = render_preview(root, params, frame, options, video)
    except (ParamsError, CheckpointError, MergeError, FacesetError, VideoError, ImageError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    if swapped == 0:
        typer.echo(f"frame {frame} has no face of the target to swap: it is shown as it is")
    typer.echo(f"preview: {output.relative_to(root) if output.is_relative_to(root) else output}")
