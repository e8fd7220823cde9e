"""Training loader speed against what training consumes, at 64, 128 and 256 px.

    python benchmarks/loader_speed.py [--resolutions 64 128 256] [--workers 0 1 2] [--face-type full]

Extracts every frame of a real clip (talking_head_a.mp4) into a temporary whole_face 256 px faces
table with hull masks, then for each resolution measures, in the same run:

- loader: ``iterate_batches`` over ``LanceFaceset`` readers (the clip's faces as both sides), batch 8
  per side, for each worker count; samples/s = 2 * batch * steps / seconds, timed from the first
  batch (worker start-up, reported apart, is excluded);
- training: ``tasks.train.train_step`` of a fresh model of that resolution (SAEHD-like dims by
  default) on one such batch, after a warm-up step; it consumes 2 * batch samples per step.

The figure that matters is ratio = loader samples/s / samples/s training consumes (the loader must
deliver at least 2x). Loader and training are timed apart: with workers on a machine with few cores
the workers take cores from the training step, which the step times here do not show.
Timings are wall-clock on whatever else the machine runs at the same time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.config import ModelConfig  # noqa: E402
from model.networks import build_model  # noqa: E402
from tasks.extract import FaceOptions, SideOptions, extract_folder  # noqa: E402
from tasks.faceset_reader import LanceFaceset  # noqa: E402
from tasks.loader import BatchOptions, batch_to_device, iterate_batches  # noqa: E402
from tasks.mask_table import MaskOptions, build_masks  # noqa: E402
from tasks.train_options import RuntimeOptions, StageOptions, resolve_runtime  # noqa: E402
from tasks.train_step import assemble_parts, train_step  # noqa: E402

MEDIA = ROOT.parent / "shared" / "media" / "videos"
SEED = 0


def build_tables(clip: Path, work: Path) -> tuple[Path, Path]:
    """Faces (whole_face 256 px, every frame) and hull masks of ``clip`` in ``work``."""
    raw = work / "raw"
    raw.mkdir()
    shutil.copy(clip, raw / clip.name)
    faces_path, masks_path = work / "faces.lance", work / "masks.lance"
    started = time.perf_counter()
    extract_folder(raw, faces_path, FaceOptions(), SideOptions(embeddings=False), work)
    count = build_masks(faces_path, masks_path, MaskOptions())
    print(f"extracted {count} faces of {clip.name} in {time.perf_counter() - started:.1f} s")
    return faces_path, masks_path


def measure_loader(readers: dict, options: BatchOptions, steps: int, workers: int) -> tuple[float, float]:
    """(start-up seconds until the first batch, samples/s after it)."""
    started = time.perf_counter()
    first = None
    for _ in iterate_batches(readers, options, SEED, 1, steps + 2, workers=workers):
        if first is None:
            first = time.perf_counter()
    samples = 2 * options.batch_size * steps
    return first - started, samples / (time.perf_counter() - first)


def measure_training(readers: dict, options: BatchOptions, resolution: int, dims: list[int], steps: int,
                     device: torch.device) -> float:
    """Median seconds of one training step (after a warm-up step) at ``resolution``."""
    ae_dims, e_dims, d_dims, d_mask_dims = dims
    config = ModelConfig(resolution=resolution, ae_dims=ae_dims, e_dims=e_dims, d_dims=d_dims, d_mask_dims=d_mask_dims)
    stage = StageOptions(optimizer="adam")
    runtime = resolve_runtime(RuntimeOptions(workers=0))
    parts = assemble_parts(build_model(config), config, stage, runtime, 5e-5, None, {}, False)
    _, batch = next(iterate_batches(readers, options, SEED, 1, 2))
    batches = batch_to_device(batch, device)
    seconds = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        train_step(parts, batches, stage, runtime)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default="talking_head_a.mp4", help="a clip in the shared media videos folder")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--loader-steps", type=int, default=40, help="timed loader steps per configuration")
    parser.add_argument("--train-steps", type=int, default=1, help="timed training steps after a warm-up step")
    parser.add_argument("--dims", type=int, nargs=4, default=[256, 64, 64, 22], metavar=("AE", "E", "D", "D_MASK"),
                        help="model widths (default: DeepFaceLab SAEHD's)")
    parser.add_argument("--face-type", default=None, help="re-frame the whole_face crops to this face type")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    options = BatchOptions(batch_size=args.batch_size)
    print(f"torch threads {torch.get_num_threads()}, training on {device}, batch {args.batch_size} per side, "
          f"model dims ae/e/d/d_mask {args.dims}, face type {args.face_type or 'as stored (whole_face)'}")

    with tempfile.TemporaryDirectory() as temporary:
        faces_path, masks_path = build_tables(MEDIA / args.clip, Path(temporary))
        rows = []
        for resolution in args.resolutions:
            reader = LanceFaceset(faces_path, masks_path, None, resolution, args.face_type)
            readers = {"src": reader, "dst": reader}
            step_seconds = measure_training(readers, options, resolution, args.dims, args.train_steps, device)
            consumed = 2 * args.batch_size / step_seconds
            print(f"{resolution} px: training step {step_seconds:.2f} s, consumes {consumed:.2f} samples/s")
            for workers in args.workers:
                startup, rate = measure_loader(readers, options, args.loader_steps, workers)
                rows.append((resolution, workers, startup, rate, step_seconds, consumed, rate / consumed))
                print(f"{resolution} px, {workers} workers: start-up {startup:.2f} s, {rate:.0f} samples/s, "
                      f"ratio {rate / consumed:.0f}x")

    print("\nresolution  workers  start-up s  loader samples/s  train s/step  train samples/s  ratio (>= 2 needed)")
    for resolution, workers, startup, rate, step_seconds, consumed, ratio in rows:
        print(f"{resolution:>10}  {workers:>7}  {startup:>10.2f}  {rate:>16.0f}  {step_seconds:>12.2f}  {consumed:>15.2f}  "
              f"{ratio:>8.0f}x")


if __name__ == "__main__":
    main()
