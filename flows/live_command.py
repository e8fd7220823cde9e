"""`faceflow live --model FILE.dfm --source CAMERA|VIDEO --sink window|file|udp`: swap faces live.

A plain command, not a Prefect flow: a live loop has nothing to cache or retry. It opens the .dfm
(checked against the DeepFaceLive contract first), the camera or video, and the sink, runs until the
source ends, --frames are done, q is pressed in the window or Ctrl-C, then prints the fps and
per-stage latency (and writes them as JSON with --stats). The file sink's MP4 is labelled as
synthetic and gets a provenance sidecar naming the model and this project's revision.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.markup import escape

from tasks.detect import ModelFileError
from tasks.dfm_check import DfmError
from tasks.live import swap_live
from tasks.live_model import FACE_TYPES
from tasks.live_options import DEFAULT_UDP_HOST, DEFAULT_UDP_PORT, DEVICES, SINK_KINDS, LiveError, LiveOptions
from tasks.c2pa_signing import SigningError, ensure_signing_identity
from tasks.provenance import file_sha256, pipeline_revision
from tasks.video import VideoError

console = Console(stderr=True)
DEFAULTS = LiveOptions()
# LiveOptions fields whose command-line option has another name
OPTION_NAMES = {"capture_width": "--capture-size", "capture_height": "--capture-size", "max_frames": "--frames"}


def parse_capture_size(text: str) -> tuple[int, int]:
    """"640x480" -> (640, 480); "native" -> (0, 0), the source's own size."""
    if text.strip().lower() == "native":
        return 0, 0
    width, separator, height = text.lower().partition("x")
    if not separator or not width.strip().isdigit() or not height.strip().isdigit():
        raise typer.BadParameter(f"{text!r} is not WIDTHxHEIGHT (e.g. 640x480) or native", param_hint="--capture-size")
    return int(width), int(height)


def build_options(values: dict) -> LiveOptions:
    """LiveOptions from the command line's values, validated like params.yaml (choices, ranges).

    Raises:
        typer.BadParameter: naming the option and what it accepts.
    """
    try:
        return TypeAdapter(LiveOptions).validate_python(values)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            field = str(problem["loc"][0]) if problem["loc"] else ""
            message = problem["msg"].removeprefix("Value error, ")
            problems.append(f"{OPTION_NAMES.get(field, '--' + field.replace('_', '-'))}: {message}" if field else message)
        raise typer.BadParameter("; ".join(problems)) from None


def live_command(
    model: Annotated[Path, typer.Option("--model", help="The DeepFaceLive .dfm to swap with.")],
    source: Annotated[str, typer.Option("--source", help="A camera index (0 is the first camera) or a video file, "
                                        "read as if it were a camera.")] = "0",
    sink: Annotated[str, typer.Option("--sink", help=f"Where frames go: {', '.join(SINK_KINDS)}.")] = DEFAULTS.sink,
    output: Annotated[Path | None, typer.Option("--output", help="The file sink's .mp4 (labelled as synthetic, with "
                                                "a provenance sidecar).")] = None,
    host: Annotated[str, typer.Option("--host", help="The udp sink's receiver.")] = DEFAULT_UDP_HOST,
    port: Annotated[int, typer.Option("--port", help="The udp sink's port.")] = DEFAULT_UDP_PORT,
    face_type: Annotated[str | None, typer.Option("--face-type", help=f"Framing the model was trained on "
                         f"({', '.join(FACE_TYPES)}); default: the .dfm's record (faceflow exports have one).")] = None,
    device: Annotated[str, typer.Option("--device", help=f"{', '.join(DEVICES)}: auto runs the model on CUDA when "
                                        "ONNX Runtime offers it.")] = DEFAULTS.device,
    threads: Annotated[int, typer.Option("--threads", help="ONNX Runtime threads; 0 lets it choose.")] = DEFAULTS.threads,
    capture_size: Annotated[str, typer.Option("--capture-size", help="WIDTHxHEIGHT frames are delivered at, like a "
                                              "webcam's; native keeps a video's own size.")] = "640x480",
    realtime: Annotated[bool, typer.Option("--realtime/--no-realtime", help="Deliver a video's frames at its own "
                        "rate, dropping those that come while one is processed (like a camera).")] = DEFAULTS.realtime,
    frames: Annotated[int, typer.Option("--frames", help="Stop after this many frames; 0 = at the source's end "
                                        "(or q in the window, or Ctrl-C).")] = DEFAULTS.max_frames,
    detect_every: Annotated[int, typer.Option("--detect-every", help="Run the face detector every n-th frame; "
                                              "track the landmarks in between.")] = DEFAULTS.detect_every,
    detect_side: Annotated[int, typer.Option("--detect-side", help="Longer side (px) of the downscaled copy the "
                                             "detector searches.")] = DEFAULTS.detect_side,
    detect_upsample: Annotated[int, typer.Option("--detect-upsample", help="Detector upsampling passes: each finds "
                                                 "faces half as large, at four times the cost.")] = DEFAULTS.detect_upsample,
    max_faces: Annotated[int, typer.Option("--max-faces", help="Faces swapped per frame, largest first; 0 = all.")]
    = DEFAULTS.max_faces,
    smoothing: Annotated[float, typer.Option("--smoothing", help="Landmark smoothing over past frames (sigma in "
                                             "frames); 0 = off.")] = DEFAULTS.smoothing,
    mask_mode: Annotated[str, typer.Option("--mask-mode", help="As merge.mask_mode.")] = DEFAULTS.mask_mode,
    mask_erode: Annotated[int, typer.Option("--mask-erode", help="As merge.mask_erode.")] = DEFAULTS.mask_erode,
    mask_blur: Annotated[int, typer.Option("--mask-blur", help="As merge.mask_blur.")] = DEFAULTS.mask_blur,
    color_transfer: Annotated[str, typer.Option("--color-transfer", help="As merge.color_transfer; rct is cheap.")]
    = DEFAULTS.color_transfer,
    blend_mode: Annotated[str, typer.Option("--blend-mode", help="As merge.blend_mode.")] = DEFAULTS.blend_mode,
    stats: Annotated[Path | None, typer.Option("--stats", help="Also write the fps and per-stage latency here as "
                                               "JSON.")] = None,
    root: Annotated[Path, typer.Option("--root", help="Project folder (its revision labels the file sink's "
                                       "output).")] = Path("."),
    label: Annotated[bool, typer.Option("--label/--no-label", help="Label the output as synthetic: a watermark in "
                                        "every frame, and a signed C2PA manifest on the file sink's MP4.")] = True,
) -> None:
    """Swap faces live: detect, align, swap and merge every frame of a camera or video, showing fps and latency."""
    width, height = parse_capture_size(capture_size)
    options = build_options(dict(
        face_type=face_type, device=device, threads=threads, detect_every=detect_every, detect_side=detect_side,
        detect_upsample=detect_upsample, max_faces=max_faces, smoothing=smoothing, mask_mode=mask_mode,
        mask_erode=mask_erode, mask_blur=mask_blur, color_transfer=color_transfer, blend_mode=blend_mode,
        capture_width=width, capture_height=height, realtime=realtime, max_frames=frames, sink=sink, output=output,
        host=host, port=port, label_synthetic=label))
    try:
        params = {"live": {key: str(value) if isinstance(value, Path) else value
                           for key, value in dataclasses.asdict(options).items()},
                  "model": {"path": str(model), "sha256": file_sha256(model)}, "source": source}
        identity = ensure_signing_identity(root.resolve()) if label and options.sink == "file" else None
        report = swap_live(model, source, options, pipeline_revision(root.resolve(), params), identity)
    except (LiveError, DfmError, VideoError, ModelFileError, SigningError) as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    for line in report.format_lines():
        typer.echo(line)
    if stats is not None:
        report.write_json(stats)
        typer.echo(f"stats written to {stats}")
