"""Merge speed at 720p and on the demo dst, each beside decode+encode alone measured in the same run.

    python benchmarks/merge_speed.py [--repeats 3] [--profile-frames 24] [--cases 720p demo] [--set precision=fp32]
                                     [--presets]

Cases (models have untrained, seeded weights: the speed of a model does not depend on its weights):
- 720p: videos/two_faces_vertical.mp4 of the test media (720x1280, 90 frames, two people). Its dst
  faces table is extracted with the project's extraction (tasks.extract); the left-hand person
  counts as "other person" (as dst curation would mark them), so one face per frame is swapped.
  Model: SAEHD-sized liae-ud, 128 px, ae 256, e 64, d 64, d_mask 22. Default merge options
  (H.264 CRF 18 with x264's faster preset, mask hull x learned, RCT, overlay, bf16 on a CPU with
  native bf16).
- demo: the demo dst (640x576, 35 frames) with the 96 px DF model of DeepFaceLab's anchors in
  DESIGN.md (df-ud, full face, ae 128, e 64, d 64, d_mask 22), overlay + RCT, H.264 encoded. Printed
  beside DeepFaceLab's merger on this machine: 11 frames/s, 2 workers, PNG frames, no encoding.

Each repeat times decode+encode alone (the same decoder and writer as a render, no model) and then
the render (tasks.merge.render_video, with the watermark step when merge.label_synthetic is on);
the medians are printed with their ratio, and the CPU time per frame (all threads), which other
processes sharing the CPU inflate less than wall time. A profile pass then runs the parts one at a
time on the render thread (no overlap) and prints the CPU ms/frame of each: decode, cutting the
crops, model, pasting (and the shares of colour transfer, masks, blending and warps in it),
flicker meter, watermark and encode. With --presets the profiled (unencoded) frames are also encoded with each
x264 preset at the render's CRF, printing CPU per frame, file size, PSNR and SSIM.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.config import ModelConfig  # noqa: E402
from model.networks import build_model  # noqa: E402
from tasks.extract import FaceOptions, SideOptions, extract_folder  # noqa: E402
from tasks.faceset import hash_file, open_faces  # noqa: E402
from tasks.merge import FaceSwapper, FrameMerger, MergeOptions, load_dst_faces, render_video  # noqa: E402
from tasks.merge_masks import FlickerMeter  # noqa: E402
from tasks.merge_sinks import open_frame_sink  # noqa: E402
from tasks.video import iter_frames, probe_video  # noqa: E402
from tasks.watermark import embed_watermark, encode_payload  # noqa: E402

MEDIA = ROOT.parent / "shared" / "media"
DEEPFACELAB_MERGER_FPS = 11.0  # DESIGN.md: 640x576 demo dst, 96 px model, overlay + RCT, 2 workers, PNG frames


@dataclass(frozen=True)
class Case:
    name: str
    clip: Path
    model: ModelConfig
    target_fps: float
    options: MergeOptions = MergeOptions()


CASES = {
    "720p": Case("720p", MEDIA / "videos" / "two_faces_vertical.mp4",
                 ModelConfig(archi="liae-ud", resolution=128, ae_dims=256, e_dims=64, d_dims=64, d_mask_dims=22,
                             face_type="full"), target_fps=10.0),
    "demo": Case("demo", MEDIA / "demo" / "dst_pexels_7154235.mp4",
                 ModelConfig(archi="df-ud", resolution=96, ae_dims=128, e_dims=64, d_dims=64, d_mask_dims=22,
                             face_type="full"), target_fps=2 * DEEPFACELAB_MERGER_FPS,
                 options=MergeOptions(blend_mode="overlay", color_transfer="rct")),
}
# Pasting's own parts, picked out of the profile by (function name, file name ending).
PASTE_PARTS = {"colour transfer": ("transfer_color", "color.py"), "mask refine": ("refine_mask", "masks.py"),
               "hull mask": ("hull_mask", "masks.py"), "blend": ("blend_overlay", "blend.py"),
               "warps": ("<warpAffine>", "~")}


def process_seconds() -> float:
    """CPU seconds used by every thread of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def extract_dst_faces(clip: Path, work: Path) -> tuple[Path, frozenset[str]]:
    """The clip's dst faces table (tasks.extract, every face kept) and the left-hand person's face ids."""
    raw = work / "raw"
    raw.mkdir(parents=True)
    (raw / clip.name).symlink_to(clip)
    table = work / "faces.lance"
    extract_folder(raw, table, FaceOptions(), SideOptions(max_faces=0, embeddings=False, smooth_landmarks=1.5), work)
    rows = open_faces(table).to_table(columns=["face_id", "track_id", "bbox"]).to_pylist()
    tracks = {row["track_id"] for row in rows}
    if len(tracks) < 2:
        return table, frozenset()
    left = min(tracks, key=lambda track: np.mean([row["bbox"][0] for row in rows if row["track_id"] == track]))
    return table, frozenset(row["face_id"] for row in rows if row["track_id"] == left)


def decode_encode_only(clip: Path, output: Path, options: MergeOptions) -> int:
    """Decode every frame and encode it with the render's writer and settings: the floor a render cannot beat."""
    info, count = probe_video(clip), 0
    with open_frame_sink(output, info, options.codec, options.crf, 0, {}, options.preset) as sink:
        for _, _, frame in iter_frames(clip):
            sink.write(frame)
            count += 1
    return count


def timed(function, *args, **kwargs) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of the whole process)."""
    cpu, start = process_seconds(), time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start, process_seconds() - cpu


def measure(case: Case, table: Path, other_people: frozenset[str], swapper: FaceSwapper, options: MergeOptions,
            repeats: int, work: Path) -> None:
    """Alternate decode+encode alone and the render, then print medians, ratio and CPU per frame."""
    watermark = encode_payload(0) if options.label_synthetic else None
    baseline, merged = [], []
    for repeat in range(repeats):
        frames, wall, cpu = timed(decode_encode_only, case.clip, work / f"baseline{repeat}.mp4", options)
        baseline.append((frames / wall, 1000 * cpu / frames))
        report, wall, cpu = timed(render_video, case.clip, table, swapper, work / f"merged{repeat}.mp4", options, {},
                                  other_people=other_people, watermark=watermark)
        merged.append((report.frames / wall, 1000 * cpu / report.frames))
        print(f"  repeat {repeat + 1}: decode+encode {baseline[-1][0]:6.1f} frames/s | merge {merged[-1][0]:6.1f} frames/s"
              f" | ratio {merged[-1][0] / baseline[-1][0]:.3f}", flush=True)
    base_fps, merge_fps = (statistics.median(fps for fps, _ in runs) for runs in (baseline, merged))
    base_cpu, merge_cpu = (statistics.median(cpu for _, cpu in runs) for runs in (baseline, merged))
    print(f"{case.name}: decode+encode alone {base_fps:6.1f} frames/s ({base_cpu:5.1f} CPU ms/frame) | merge {merge_fps:6.1f} "
          f"frames/s ({merge_cpu:5.1f} CPU ms/frame, {merge_fps * merge_cpu / 1000:.2f} cores busy, {report.swapped_faces} faces "
          f"swapped in {report.frames} frames) | "
          f"merge/decode+encode = {merge_fps / base_fps:.3f} | target {case.target_fps:.0f} frames/s: "
          f"{'met' if merge_fps >= case.target_fps else 'NOT met'}")
    if case.name == "demo":
        print(f"demo: DeepFaceLab's merger {DEEPFACELAB_MERGER_FPS:.0f} frames/s (PNG frames, no encoding) | ours with "
              f"H.264 {merge_fps:.1f} frames/s = {merge_fps / DEEPFACELAB_MERGER_FPS:.2f}x")


def profile_parts(case: Case, table: Path, other_people: frozenset[str], swapper: FaceSwapper, options: MergeOptions,
                  frame_count: int, work: Path) -> list[np.ndarray]:
    """Run each part of a render on this thread alone and print its CPU ms/frame; returns the rendered frames."""
    faces = {index: [face for face in listed if face.face_id not in other_people]
             for index, listed in load_dst_faces(table, hash_file(case.clip)).items()}
    merger, flicker = FrameMerger(swapper, options, faces), FlickerMeter()
    payload = encode_payload(0)
    parts = dict.fromkeys(["decode", "cut crops", "model", "paste", "flicker meter", "watermark", "encode"], 0.0)
    profile = cProfile.Profile()
    rendered_frames, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # one thread per prediction, as each render worker runs it
    try:
        frames = iter_frames(case.clip)
        for _ in range(frame_count):
            start = process_seconds()
            item = next(frames, None)
            parts["decode"] += process_seconds() - start
            if item is None:
                break
            index, _, frame = item
            start = process_seconds()
            prepared = merger.prepare(index, frame)
            parts["cut crops"] += process_seconds() - start
            rendered = frame
            if prepared is not None:
                start = process_seconds()
                prediction = merger.predict_frames([prepared])[0]
                parts["model"] += process_seconds() - start
                start = process_seconds()
                profile.enable()
                rendered = merger.paste(prepared, prediction)
                profile.disable()
                parts["paste"] += process_seconds() - start
            start = process_seconds()
            flicker.add(index, frame, rendered, [face.landmarks for face in faces.get(index, [])])
            parts["flicker meter"] += process_seconds() - start
            start = process_seconds()
            if options.label_synthetic:
                rendered = embed_watermark(rendered, payload)
            parts["watermark"] += process_seconds() - start
            rendered_frames.append(rendered)
    finally:
        torch.set_num_threads(threads)
    info = probe_video(case.clip)
    start = process_seconds()  # encoding alone: libx264's own threads would otherwise overlap the other parts
    with open_frame_sink(work / "profile.mp4", info, options.codec, options.crf, 0, {}, options.preset) as sink:
        for rendered in rendered_frames:
            sink.write(rendered)
    parts["encode"] = process_seconds() - start
    count = len(rendered_frames)
    print(f"{case.name} profile, {count} frames, each part alone on one thread, CPU ms/frame: "
          + " | ".join(f"{part} {1000 * seconds / count:.1f}" for part, seconds in parts.items())
          + f" | all parts {1000 * sum(parts.values()) / count:.1f}")
    stats = pstats.Stats(profile).stats
    paste_seconds = sum(row[3] for (_, _, function), row in stats.items() if function == "paste")
    shares = {part: sum(row[3] for (file, _, function), row in stats.items() if function == name and file.endswith(source))
              for part, (name, source) in PASTE_PARTS.items()}
    print(f"{case.name} paste, share of its time: " + " | ".join(f"{part} {100 * seconds / max(paste_seconds, 1e-9):.0f} %"
                                                             for part, seconds in shares.items()))
    return rendered_frames


def structural_similarity(first: np.ndarray, second: np.ndarray) -> float:
    """Mean SSIM of two BGR frames' luma (Gaussian window, sigma 1.5, the usual constants)."""
    first, second = (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float64) for image in (first, second))
    def blur(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (11, 11), 1.5)
    mean_first, mean_second = blur(first), blur(second)
    variance_first, variance_second = blur(first * first) - mean_first**2, blur(second * second) - mean_second**2
    covariance = blur(first * second) - mean_first * mean_second
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float((((2 * mean_first * mean_second + c1) * (2 * covariance + c2))
                  / ((mean_first**2 + mean_second**2 + c1) * (variance_first + variance_second + c2))).mean())


def compare_presets(case: Case, frames: list[np.ndarray], options: MergeOptions, work: Path) -> None:
    """Encode the same rendered frames with each encoder preset at the render's CRF: CPU, file size, PSNR and SSIM."""
    info = probe_video(case.clip)
    for preset in ("medium", "fast", "faster", "veryfast"):
        output = work / f"preset-{preset}.mp4"
        start = process_seconds()
        with open_frame_sink(output, info, options.codec, options.crf, 0, {}, preset) as sink:
            for frame in frames:
                sink.write(frame)
        cpu = process_seconds() - start
        decoded = [frame for _, _, frame in iter_frames(output)]
        psnr = statistics.mean(cv2.PSNR(original, copy) for original, copy in zip(frames, decoded, strict=True))
        ssim = statistics.mean(structural_similarity(original, copy) for original, copy in zip(frames, decoded, strict=True))
        print(f"{case.name} preset {preset:8s} crf {options.crf}: {1000 * cpu / len(frames):5.1f} CPU ms/frame | "
              f"{output.stat().st_size / 1000:7.1f} kB | PSNR {psnr:.2f} dB | SSIM {ssim:.4f} (against the unencoded render)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile-frames", type=int, default=24, help="frames of the profile pass (0: no profile)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--presets", action="store_true", help="also compare encoder presets on the profiled frames")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="merge option override, e.g. precision=fp32 or preset=medium")
    arguments = parser.parse_args()
    overrides = {key: yaml.safe_load(value) for key, value in (setting.split("=", 1) for setting in arguments.set)}
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (other processes share "
          f"the CPU: compare the ratios)", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        for name in arguments.cases:
            case, work = CASES[name], Path(directory) / name
            options = replace(case.options, **overrides)
            info = probe_video(case.clip)
            table, other_people = extract_dst_faces(case.clip, work)
            torch.manual_seed(0)
            swapper = FaceSwapper(build_model(case.model)).with_precision(options.precision)  # converted once, as a flow does
            print(f"== {name}: {case.clip.name} {info.width}x{info.height}, {info.frame_count} frames | {case.model.archi} "
                  f"{case.model.resolution} px (untrained) in {swapper.dtype} | {options.codec} crf {options.crf}, "
                  f"{options.blend_mode} + {options.color_transfer}, watermark {'on' if options.label_synthetic else 'off'} ==",
                  flush=True)
            measure(case, table, other_people, swapper, options, arguments.repeats, work)
            if arguments.profile_frames:
                rendered = profile_parts(case, table, other_people, swapper, options, arguments.profile_frames, work)
                if arguments.presets:
                    compare_presets(case, rendered, options, work)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
