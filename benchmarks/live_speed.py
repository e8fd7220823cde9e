"""Speed of live mode on a webcam-like 640x480 clip, beside decode-only and model-only speed of the same run.

    python benchmarks/live_speed.py [--frames 120] [--threads 0] [--dfm FILE.dfm] [--png-dir DIR]

Without --dfm it exports a SAEHD-sized model (liae-ud, 128 px, ae 256, e 64, d 64, d_mask 22,
whole_face) with seeded, untrained weights: the speed is that of a trained model of that size, but the
swapped face is a blur. It runs `faceflow live`'s pipeline unpaced (every frame, none dropped) on
webcam_streamer.mp4 delivered at 640x480, into the file sink, and prints the end-to-end frames/s,
each stage's latency (mean, p50, p95) and the capture-to-output latency, next to how fast the same
source decodes and resizes alone and how fast the model runs alone (both measured in the same run),
and the real-time peers' figure for orientation. With --png-dir a few frames of the live output are
saved as PNG to look at.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.config import ModelConfig  # noqa: E402
from model.networks import build_model  # noqa: E402
from tasks.export import export_dfm  # noqa: E402
from tasks.live import LiveSwapper, run_live  # noqa: E402
from tasks.live_model import DfmSwapModel  # noqa: E402
from tasks.live_options import LiveOptions  # noqa: E402
from tasks.live_sinks import OutputLabels, open_sink  # noqa: E402
from tasks.live_sources import open_source  # noqa: E402
from tasks.video import iter_frames  # noqa: E402

MEDIA = ROOT.parent / "shared" / "media"
CLIP = MEDIA / "videos" / "webcam_streamer.mp4"
SAEHD_128 = ModelConfig(archi="liae-ud", resolution=128, ae_dims=256, e_dims=64, d_dims=64, d_mask_dims=22,
                        face_type="whole_face")
PEERS = "Deep-Live-Cam: 15-20 fps on RTX 3080-4090 GPUs (its users' reports)"
SAVED_FRAMES = (10, 60, 110)


def export_saehd_model(folder: Path) -> Path:
    """An untrained SAEHD-sized .dfm (seeded): the speed of a real model of that size."""
    torch.manual_seed(0)
    path = folder / "saehd-liae-ud-128.dfm"
    export_dfm(build_model(SAEHD_128), path, threads=1)
    return path


def decode_only(options: LiveOptions, frames: int) -> float:
    """Frames/s of the live source alone: decoding and resizing to the capture size, nothing else."""
    source = open_source(str(CLIP), options)
    start, count = time.perf_counter(), 0
    try:
        while count < frames and source.read() is not None:
            count += 1
    finally:
        source.close()
    return count / (time.perf_counter() - start)


def model_alone(model: DfmSwapModel, runs: int = 15) -> float:
    """Faces/s of the .dfm alone, one face per run as live mode feeds it (median run, after a warm-up)."""
    crop = np.random.default_rng(0).integers(0, 256, (1, model.resolution, model.resolution, 3), dtype=np.uint8)
    model.swap(crop)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.swap(crop)
        times.append(time.perf_counter() - start)
    return 1.0 / float(np.median(times))


def save_frames(video: Path, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for index, _, frame in iter_frames(video):
        if index in SAVED_FRAMES:
            saved.append(folder / f"live-{index:04d}.png")
            cv2.imwrite(str(saved[-1]), frame)
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120, help="frames to process (the clip has 368)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads; 0 lets it choose")
    parser.add_argument("--detect-every", type=int, default=LiveOptions().detect_every)
    parser.add_argument("--dfm", type=Path, help="benchmark this .dfm instead of an untrained SAEHD-sized one")
    parser.add_argument("--png-dir", type=Path, help="save a few frames of the live output here")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        dfm = arguments.dfm or export_saehd_model(work)
        options = LiveOptions(realtime=False, sink="file", output=work / "live.mp4", threads=arguments.threads,
                              detect_every=arguments.detect_every, max_frames=arguments.frames)
        print(f"== live on {CLIP.name} at {options.capture_width}x{options.capture_height}, unpaced, "
              f"{arguments.frames} frames; {torch.get_num_threads()} CPU threads available ==")
        print(f"model: {dfm.name}" + ("" if arguments.dfm else " (SAEHD-sized, untrained weights: speed only)"))
        print(f"onnxruntime {onnxruntime.__version__}, providers offered: {onnxruntime.get_available_providers()}")
        decode_fps = decode_only(options, arguments.frames)
        model = DfmSwapModel(dfm, options.face_type, options.device, options.threads)
        model_fps = model_alone(model)
        source = open_source(str(CLIP), options)
        try:
            revision = {"git": {"commit": None, "dirty": None}, "dvc_lock_sha256": None, "params": {}}
            labels = OutputLabels.for_revision(revision, None)  # the watermark every frame gets, as `faceflow live` does
            sink = open_sink(options, source.width, source.height, source.fps, revision, labels)
            report = run_live(LiveSwapper(model, options), source, sink, options.max_frames, labels)
        finally:
            source.close()
        for line in report.format_lines():
            print(line)
        print(f"decode-only (same source, same run): {decode_fps:.1f} frames/s; live/decode = "
              f"{report.fps / decode_fps:.3f}")
        work = sum(timing.mean * timing.count for timing in report.stages.values())  # ms of all stages, all frames
        swap_share = report.stages["swap"].mean * report.stages["swap"].count / work
        print(f"model alone (same session, same run): {model_fps:.1f} faces/s on {report.provider}; live/model = "
              f"{report.fps / model_fps:.3f}; the swap is {swap_share:.0%} of the per-frame work")
        print(f"for orientation, {PEERS}")
        if arguments.png_dir:
            for path in save_frames(options.output, arguments.png_dir):
                print(f"saved {path}")


if __name__ == "__main__":
    main()
