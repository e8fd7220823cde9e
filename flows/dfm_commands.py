"""`faceflow dfm check FILE`: is this .dfm one that DeepFaceLive can load and swap with?

Checks the names, order, dtypes and layout DeepFaceLive reads, runs the file with ONNX Runtime on
real aligned faces (the bundled demo dst clip unless --face names photos or videos), checks every
output lies in [0, 1], times one face, and with --checkpoint compares it with the torch model.
Prints a short report; exits 1 with the file and the fault named when the file is broken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer

from flows.demo import DEMO_CLIPS
from model.checkpoint import CheckpointError, load_checkpoint
from tasks.align import FaceType
from tasks.dfm_check import (DEFAULT_FACE_TYPE, FACE_TYPE_METADATA_KEY, TOLERANCES, DfmError, DfmReport,
                             check_dfm, check_dfm_graph, load_onnx)
from tasks.export import load_face_crops
from tasks.images import ImageError
from tasks.video import VideoError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FACE_SOURCE = PROJECT_ROOT / DEMO_CLIPS["dst"]
FACE_TYPES: tuple[str, ...] = get_args(FaceType)

dfm_app = typer.Typer(help="Check DeepFaceLive .dfm files.", no_args_is_help=True)


@dfm_app.callback()
def dfm() -> None:
    """Check DeepFaceLive .dfm files."""


def check_face_type(face_type: str | None) -> str | None:
    if face_type is not None and face_type not in FACE_TYPES:
        raise typer.BadParameter(f"face type must be one of {', '.join(FACE_TYPES)}, got {face_type!r}")
    return face_type


def choose_face_type(option: str | None, checkpoint_face_type: str | None, metadata: dict[str, str]) -> FaceType:
    """The framing to crop faces with: the option, else the checkpoint's, else the file's record, else the default."""
    recorded = metadata.get(FACE_TYPE_METADATA_KEY)
    for candidate in (option, checkpoint_face_type, recorded):
        if candidate in FACE_TYPES:
            return candidate  # type: ignore[return-value]
    return DEFAULT_FACE_TYPE


def format_report(report: DfmReport, sources: list[Path], face_type: str, checkpoint: Path | None) -> list[str]:
    """The lines `dfm check` prints for a file that passed."""
    lines = [f"{report.path}: a valid DeepFaceLive .dfm", f"  input     {report.inputs[0]}"]
    lines += [f"  input     {tensor}" for tensor in report.inputs[1:]]
    for index, tensor in enumerate(report.outputs):
        low, high = report.output_ranges[tensor.name]
        lines.append(f"  {'outputs' if index == 0 else '':9} {str(tensor):48} values {low:.3f}..{high:.3f}")
    lines.append(f"  model     {report.resolution} px, {report.precision} weights, {report.file_bytes / 1e6:.1f} MB"
                 + "".join(f", {key} {value}" for key, value in report.metadata.items() if key != "resolution"))
    plural = "s" if report.face_count != 1 else ""
    names = ", ".join(source.name for source in sources)
    lines.append(f"  faces     {report.face_count} real {face_type} face{plural} from {names}")
    lines.append(f"  run time  {report.milliseconds_per_face:.2f} ms/face (ONNX Runtime CPU, one face per run)")
    if report.max_abs_diff is not None:
        lines.append(f"  vs torch  max |onnx - torch| = {report.max_abs_diff:.2e} (tolerance {report.tolerance:g}) "
                     f"against {checkpoint}")
    return lines


@dfm_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="The .dfm file to check.")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Checkpoint folder the file was exported "
                                                    "from: compare its outputs with the torch model.")] = None,
    faces: Annotated[list[Path] | None, typer.Option("--face", help="Photo or video showing a face (repeatable); "
                                                     "default: the bundled demo dst clip.")] = None,
    face_type: Annotated[str | None, typer.Option("--face-type", callback=check_face_type, help="Framing of the "
                         f"face crops ({', '.join(FACE_TYPES)}); default: the checkpoint's, else the file's record, "
                         f"else {DEFAULT_FACE_TYPE}.")] = None,
    tolerance: Annotated[float | None, typer.Option("--tolerance", help="Largest |onnx - torch| allowed; default "
                         f"{TOLERANCES['fp32']:g} for fp32 files, {TOLERANCES['fp16']:g} for fp16.")] = None,
    threads: Annotated[int, typer.Option("--threads", min=0, help="ONNX Runtime threads; 0 lets it choose.")] = 0,
) -> None:
    """Check that FILE is a .dfm DeepFaceLive can load, and that it swaps real faces sensibly."""
    sources = list(faces or [DEFAULT_FACE_SOURCE])
    try:
        model = load_checkpoint(checkpoint).model if checkpoint is not None else None
        model_proto = load_onnx(file)  # the resolution and recorded face type come first: the crops need them
        resolution = check_dfm_graph(model_proto, file)
        metadata = {entry.key: entry.value for entry in model_proto.metadata_props}
        chosen_face_type = choose_face_type(face_type, model.config.face_type if model else None, metadata)
        if not faces and not DEFAULT_FACE_SOURCE.is_file():
            raise DfmError(f"{DEFAULT_FACE_SOURCE} (the demo clip) is missing; pass --face with a photo or video "
                           "showing a face")
        crops = load_face_crops(sources, chosen_face_type, resolution)
        report = check_dfm(file, crops, model, tolerance=tolerance, threads=threads)
    except (DfmError, CheckpointError, ImageError, VideoError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    for line in format_report(report, sources, chosen_face_type, checkpoint):
        typer.echo(line)
