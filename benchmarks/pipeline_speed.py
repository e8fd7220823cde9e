"""Speed of the pipeline's hot stages on the demo clips, each beside a baseline measured in the same run.

    python benchmarks/pipeline_speed.py [--iterations 30] [--threads N]

Prints extraction frames/s next to decode-only frames/s (src and dst clips), training ms/iteration
for the demo model, and merge frames/s next to decode+encode-only frames/s. When run from a project
whose pipeline is up to date, also times a no-op ``dvc repro``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.params import load_params  # noqa: E402
from tasks.extract import create_face_analyzer, extract_source, plan_extraction, settings_fingerprint  # noqa: E402
from tasks.faceset import finalize_table  # noqa: E402
from tasks.mask_table import build_masks  # noqa: E402
from tasks.merge import FaceSwapper, MergeOptions, render_video  # noqa: E402
from tasks.merge_sinks import open_frame_sink  # noqa: E402
from tasks.faceset_reader import LanceFaceset  # noqa: E402
from tasks.train import train_stage  # noqa: E402
from tasks.video import iter_frames, probe_video  # noqa: E402
from tasks.watermark import encode_payload  # noqa: E402

CLIPS = {"src": ROOT / "data/demo/src_pexels_8136210.mp4", "dst": ROOT / "data/demo/dst_pexels_7154235.mp4"}


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def decode_only(path: Path, every_n: int = 1, fps: float | None = None) -> int:
    return sum(1 for _ in iter_frames(path, every_n=every_n, fps=fps))


def decode_encode_only(path: Path, output: Path, options: MergeOptions) -> int:
    """Decode and encode every frame with the render's own writer and encoder settings."""
    info = probe_video(path)
    count = 0
    with open_frame_sink(output, info, options.codec, options.crf, 0, {}, options.preset) as writer:
        for _, _, frame in iter_frames(path):
            writer.write(frame)
            count += 1
    return count


def benchmark_extraction(work: Path, params) -> None:
    print("== extraction (demo params: HOG, 68 landmarks, alignment, pose, scores, embeddings) ==")
    for side, clip in CLIPS.items():
        options = params.extract.side(side)
        raw = work / "raw" / side
        raw.mkdir(parents=True)
        (raw / clip.name).symlink_to(clip)
        frames, decode_seconds = timed(decode_only, clip, options.every_n, options.fps)
        table = work / side / "faces.lance"
        plan = plan_extraction(raw, table, settings_fingerprint(params.extract.faces, options), work)
        analyzer = create_face_analyzer(params.extract.faces, options)
        (path, source_id), = plan.pending.items()
        report, extract_seconds = timed(extract_source, path, source_id, table, analyzer, params.extract.faces, options, work)
        finalize_table(table)
        decode_fps, extract_fps = frames / decode_seconds, report.frames / extract_seconds
        print(f"{side}: {report.frames} frames, {report.faces} faces | decode-only {decode_fps:8.1f} frames/s | "
              f"extraction {extract_fps:6.1f} frames/s | extraction/decode = {extract_fps / decode_fps:.4f}")
        build_masks(table, work / side / "masks.lance", params.mask)


def benchmark_training(work: Path, params, iterations: int) -> Path:
    print(f"== training (demo model {params.train.model}) ==")
    resolution = params.train.model.resolution
    readers = {side: LanceFaceset(work / side / "faces.lance", work / side / "masks.lance", None, resolution,
                                  params.train.model.face_type) for side in ("src", "dst")}
    first = next(iter(params.train.stages.values()))
    options = replace(first, iterations=iterations, preview_every=iterations)
    result, seconds = timed(train_stage, readers, params.train.model, options, "bench", work / "ckpt", work / "logs",
                            progress=False, runtime=params.train.runtime)
    print(f"batch {options.batch_size}, {iterations} iterations: {result.metrics['ms_per_iteration']:.1f} ms/iteration "
          f"(wall {1000 * seconds / iterations:.1f} ms/iteration including setup and saving)")
    return work / "ckpt"


def benchmark_merge(work: Path, params, checkpoint: Path) -> None:
    print("== merge (swap + RCT + blend + watermark + H.264 encode; benchmarks/merge_speed.py has 720p and a profile) ==")
    clip = CLIPS["dst"]
    frames, baseline_seconds = timed(decode_encode_only, clip, work / "baseline.mp4", params.merge)
    swapper = FaceSwapper.from_checkpoint(checkpoint).with_precision(params.merge.precision)
    watermark = encode_payload(0) if params.merge.label_synthetic else None  # every frame is marked, as in the merge stage
    report, merge_seconds = timed(render_video, clip, work / "dst/faces.lance", swapper, work / "merged.mp4", params.merge, {},
                                  watermark=watermark)
    baseline_fps, merge_fps = frames / baseline_seconds, report.frames / merge_seconds
    print(f"dst {probe_video(clip).width}x{probe_video(clip).height}, {report.frames} frames | decode+encode only "
          f"{baseline_fps:7.1f} frames/s | merge {merge_fps:6.1f} frames/s | merge/baseline = {merge_fps / baseline_fps:.3f}")


def benchmark_noop_repro() -> None:
    dvc = str(Path(sys.executable).with_name("dvc"))
    status = subprocess.run([dvc, "status", "--quiet"], cwd=ROOT, capture_output=True)
    if status.returncode != 0 or not (ROOT / "dvc.lock").exists():
        print("== no-op dvc repro: skipped (run the pipeline first so it is up to date) ==")
        return
    baseline = min(timed(subprocess.run, [dvc, "version"], cwd=ROOT, capture_output=True)[1] for _ in range(3))
    seconds = min(timed(subprocess.run, [dvc, "repro"], cwd=ROOT, capture_output=True)[1] for _ in range(3))
    print(f"== no-op dvc repro: {seconds:.2f} s (dvc start-up alone: {baseline:.2f} s, ratio {seconds / baseline:.2f}) ==")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    params = load_params(ROOT / "presets" / "demo.yaml")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        benchmark_extraction(work, params)
        checkpoint = benchmark_training(work, params, arguments.iterations)
        benchmark_merge(work, params, checkpoint)
    benchmark_noop_repro()


if __name__ == "__main__":
    main()
