"""Extraction speed, detection recall and landmark jitter on the talking-head clips, beside decode-only speed.

    python benchmarks/extraction_speed.py [--smooth 1.5] [--clips talking_head_a.mp4 ...]

For each clip (and a 640x480 copy of talking_head_a.mp4) it extracts every frame (fps: null, as
DeepFaceLab extracts) three ways into a temporary faces table, each beside decode-only speed
measured in the same run:

- per frame: the detector and an identity descriptor on every frame (detect_every 1, embed_every 1);
- tracked: the default settings (detect every 5th frame, coarsely while the face is tracked,
  landmark refits between, a descriptor every 30th face of a track);
- tracked + smoothing: the same with smooth_landmarks (landmark jitter before/after is reported).

Recall is the share of frames with at least one face. Jitter is tasks.smoothing.jitter (landmark
motion left after removing locally steady motion, in inter-ocular distances), averaged over tracks.
Timings are wall-clock on whatever else the machine runs at the same time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.extract import (  # noqa: E402
    FaceOptions,
    SideOptions,
    create_face_analyzer,
    extract_source,
    plan_extraction,
    settings_fingerprint,
)
from tasks.faceset import finalize_table, open_faces  # noqa: E402
from tasks.smoothing import jitter  # noqa: E402
from tasks.video import VideoWriter, iter_frames, probe_video  # noqa: E402

MEDIA = ROOT.parent / "shared" / "media" / "videos"
CLIPS = ["talking_head_a.mp4", "talking_head_b_audio.mp4", "talking_head_glasses_audio.mp4", "webcam_streamer.mp4"]
FACES = FaceOptions()  # whole_face, 256 px, JPEG 95: the defaults


def write_resized(source: Path, target: Path, width: int, height: int) -> Path:
    """A copy of a clip scaled to width x height."""
    info = probe_video(source)
    with VideoWriter(target, width, height, info.fps) as writer:
        for _, _, frame in iter_frames(source):
            writer.write(cv2.resize(frame, (width, height), interpolation=cv2.INTER_CUBIC))
    return target


def decode_speed(path: Path) -> float:
    start = time.perf_counter()
    frames = sum(1 for _ in iter_frames(path))
    return frames / (time.perf_counter() - start)


def track_jitter(rows: list[dict]) -> float:
    """Mean jitter over tracks, weighted by their face counts."""
    values, weights = [], []
    for track_id in {row["track_id"] for row in rows}:
        track = {row["frame_index"]: np.asarray(row["landmarks"]).reshape(68, 2) for row in rows if row["track_id"] == track_id}
        frames = range(min(track), max(track) + 1)
        value = jitter([track.get(index) for index in frames])
        if np.isfinite(value):
            values.append(value)
            weights.append(len(track))
    return float(np.average(values, weights=weights)) if values else float("nan")


def extract_once(clip: Path, side: SideOptions, analyzer, work: Path) -> dict:
    """Extract one clip into a fresh table; frames/s, recall and jitter."""
    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for old in raw.iterdir():
        old.unlink()
    (raw / clip.name).symlink_to(clip)
    table = work / "faces.lance"
    plan = plan_extraction(raw, table, settings_fingerprint(FACES, side), work)
    (path, source_id), = plan.pending.items()
    start = time.perf_counter()
    report = extract_source(path, source_id, table, analyzer, FACES, side, work)
    seconds = time.perf_counter() - start
    finalize_table(table)
    rows = open_faces(table).to_table(columns=["frame_index", "track_id", "landmarks"]).to_pylist()
    return {
        "fps": report.frames / seconds,
        "recall": len({row["frame_index"] for row in rows}) / report.frames,
        "jitter": track_jitter(rows),
        "frames": report.frames,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="*", default=CLIPS, help="clip names in the media videos folder")
    parser.add_argument("--smooth", type=float, default=1.5, help="smooth_landmarks for the smoothed run")
    arguments = parser.parse_args()

    tracked = SideOptions(max_faces=1)
    runs = {
        "per frame": replace(tracked, detect_every=1, embed_every=1),
        "tracked": tracked,
        "tracked+smooth": replace(tracked, smooth_landmarks=arguments.smooth),
    }
    analyzer = create_face_analyzer(FACES, tracked)
    print("extraction of every frame: HOG detection, 68 landmarks, whole_face 256 px crop, JPEG, pose, scores, "
          "128-D descriptor; other processes share this CPU, so every speed is pessimistic")
    print(f"{'clip':34} {'size':>8} {'frames':>6} {'decode':>7} | {'per frame':>18} | {'tracked':>18} | "
          f"{'tracked+smooth':>18} | recall: per frame / tracked | jitter: raw -> smoothed (x)")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        clips = [MEDIA / name for name in arguments.clips]
        if "talking_head_a.mp4" in arguments.clips:
            clips.append(write_resized(MEDIA / "talking_head_a.mp4", work / "talking_head_a_640x480.mp4", 640, 480))
        for clip in clips:
            info = probe_video(clip)
            decode = decode_speed(clip)
            results = {name: extract_once(clip, side, analyzer, work / name.replace(" ", "_")) for name, side in runs.items()}
            speeds = " | ".join(f"{results[name]['fps']:6.1f} f/s ({results[name]['fps'] / decode:.3f}x)" for name in runs)
            before, after = results["tracked"]["jitter"], results["tracked+smooth"]["jitter"]
            print(f"{clip.name:34} {info.width:>4}x{info.height:<4} {results['tracked']['frames']:>6} "
                  f"{decode:7.0f} | {speeds} | {results['per frame']['recall']:6.1%} / {results['tracked']['recall']:6.1%}"
                  f" | {before:.4f} -> {after:.4f} ({before / after:.1f}x)", flush=True)
    print("columns: decode = decode-only frames/s; each run: frames/s (ratio to decode-only); "
          f"tracked = detect_every {tracked.detect_every}, embed_every {tracked.embed_every}; "
          f"smooth = smooth_landmarks {arguments.smooth}")


if __name__ == "__main__":
    main()
