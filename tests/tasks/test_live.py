"""Live mode on real clips read as a camera: the swap lands on the face only, faceless frames pass through
byte for byte, the file is labelled, the udp stream arrives, paced sources drop frames, and bad input fails clearly."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
import torch

from model.config import ModelConfig
from model.networks import build_model
from tasks.align import compute_alignment, invert_matrix, transform_points
from tasks.detect import DlibAnalyzer
from tasks.dfm_check import DFM_OUTPUT_NAMES, DfmError
from tasks.export import export_dfm
from tasks.c2pa_signing import ensure_signing_identity
from tasks.live import CausalLandmarkSmoother, LiveSwapper, run_live, swap_live
from tasks.live_model import DfmSwapModel
from tasks.live_options import LiveError, LiveOptions
from tasks.live_sinks import FileSink, WindowSink
from tasks.live_sources import open_source, resize_to_capture
from tasks.live_stats import StageClock, draw_overlay, summarize_times
from tasks.provenance import SYNTHETIC_LABEL, verify_file
from tasks.video import VideoWriter, iter_frames, probe_video
from tests.tasks.test_dfm_check import write_fake_dfm

TALKING_HEAD = "videos/talking_head_a.mp4"  # 512x388, 30 fps, one frontal face
NO_FACES = "videos/no_faces.mp4"  # 720x1280, 39 fps, a phone screen recording
CONFIG = ModelConfig(archi="liae-ud", resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=8, face_type="whole_face")
REVISION = {"git": {"commit": "0123456789abcdef", "dirty": False}, "dvc_lock_sha256": None, "params": {}}


@pytest.fixture(scope="module")
def tiny_dfm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained 32 px LIAE-UD exported by faceflow's exporter (it records its face type)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("live") / "tiny.dfm"
    export_dfm(build_model(CONFIG), path, threads=1)
    return path


class FrameListSink:
    """A sink that keeps every frame it is given (a FrameSink)."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.indices: list[int] = []
        self.report: dict | None = None

    def write(self, frame: np.ndarray, index: int, status: Sequence[str]) -> bool:
        self.frames.append(frame.copy())
        self.indices.append(index)
        return True

    def close(self, report: dict | None) -> None:
        self.report = report


def source_frames(clip: Path, count: int, size: tuple[int, int] | None) -> list[np.ndarray]:
    """The first `count` frames as a live source delivers them."""
    frames = []
    for index, _, frame in iter_frames(clip):
        if index == count:
            break
        frames.append(resize_to_capture(frame, size))
    return frames


def face_crop_box(analyzer: DlibAnalyzer, frame: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) bounding the whole-face crop of the frame's face, grown by `margin` px."""
    face = analyzer.detect(frame)[0]
    matrix = compute_alignment(face.landmarks, CONFIG.face_type, CONFIG.resolution)
    side = CONFIG.resolution
    corners = transform_points(np.array([[0, 0], [side, 0], [side, side], [0, side]]), invert_matrix(matrix))
    (x0, y0), (x1, y1) = corners.min(axis=0) - margin, corners.max(axis=0) + margin
    return max(int(x0), 0), max(int(y0), 0), min(int(x1), frame.shape[1]), min(int(y1), frame.shape[0])


def test_live_on_a_video_swaps_the_face_and_leaves_the_rest(tiny_dfm: Path, media_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "live.mp4"
    # crf 0: lossless H.264, so the pixels the swap leaves alone come back as the source's, through the same encoder
    # labelling off: the watermark would touch every pixel
    options = LiveOptions(sink="file", output=output, realtime=False, max_frames=24, threads=1, crf=0,
                          label_synthetic=False)
    report = swap_live(tiny_dfm, str(media_dir / TALKING_HEAD), options, REVISION)

    info = probe_video(output)
    assert (info.frame_count, info.width, info.height, float(info.fps)) == (24, 640, 480, 30.0)
    assert report.frames == report.frames_with_face == report.faces_swapped == 24 and report.dropped == 0
    assert report.detections < 24, "frames between detections are tracked"
    assert report.stages["swap"].count == 24 and report.stages["swap"].p95 >= report.stages["swap"].p50 > 0
    assert report.fps > 0 and report.latency.mean > 0 and report.provider == "CPUExecutionProvider"

    captured = source_frames(media_dir / TALKING_HEAD, 24, (640, 480))
    with VideoWriter(tmp_path / "source.mp4", 640, 480, Fraction(30), crf=0) as writer:
        for frame in captured:
            writer.write(frame)
    unswapped = [frame for _, _, frame in iter_frames(tmp_path / "source.mp4")]
    written = [frame for _, _, frame in iter_frames(output)]
    analyzer = DlibAnalyzer()
    for index in (0, 12, 23):
        x0, y0, x1, y1 = face_crop_box(analyzer, captured[index], margin=4)
        difference = np.abs(written[index].astype(np.int16) - unswapped[index]).max(axis=2)
        outside = np.ones(difference.shape, bool)
        outside[y0:y1, x0:x1] = False
        inner = difference[y0 + (y1 - y0) // 3:y1 - (y1 - y0) // 3, x0 + (x1 - x0) // 3:x1 - (x1 - x0) // 3]
        assert inner.mean() > 8, f"frame {index}: the face was not swapped"
        assert np.count_nonzero(difference[outside]) == 0, f"frame {index}: pixels away from the face changed"

    assert info.path and av.open(str(output)).metadata.get("comment") == SYNTHETIC_LABEL
    record = json.loads((tmp_path / "live.mp4.provenance.json").read_text())
    assert record["synthetic"] and record["revision"]["git"]["commit"] == "0123456789abcdef"
    assert record["live"]["frames"] == 24 and record["live"]["model"] == str(tiny_dfm)


def test_a_labelled_live_recording_carries_all_three_labels(tiny_dfm: Path, media_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "live.mp4"
    options = LiveOptions(sink="file", output=output, realtime=False, max_frames=30, threads=1)
    swap_live(tiny_dfm, str(media_dir / TALKING_HEAD), options, REVISION, ensure_signing_identity(tmp_path))
    report = verify_file(output, root=tmp_path)
    assert report.all_found, [(check.name, check.status, check.details) for check in report.checks]


def test_frames_without_a_face_pass_through_byte_for_byte(tiny_dfm: Path, media_dir: Path) -> None:
    options = LiveOptions(realtime=False, threads=1)
    model = DfmSwapModel(tiny_dfm, threads=1)
    source = open_source(str(media_dir / NO_FACES), options)
    sink = FrameListSink()
    try:
        report = run_live(LiveSwapper(model, options), source, sink, max_frames=10)
    finally:
        source.close()

    captured = source_frames(media_dir / NO_FACES, 10, (640, 480))
    assert report.frames == 10 and report.frames_with_face == 0 and sink.indices == list(range(10))
    assert all(np.array_equal(out, frame) for out, frame in zip(sink.frames, captured, strict=True))
    assert report.stages["swap"].count == 0 and sink.report is not None and sink.report["frames"] == 10


def test_the_udp_sink_streams_mpeg_ts_to_a_local_socket(tiny_dfm: Path, media_dir: Path, tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.2)
    datagrams: list[bytes] = []
    sent = threading.Event()

    def receive() -> None:
        while True:
            try:
                datagrams.append(receiver.recv(65536))
            except TimeoutError:
                if sent.is_set():
                    return

    thread = threading.Thread(target=receive)
    thread.start()
    options = LiveOptions(sink="udp", port=receiver.getsockname()[1], realtime=False, max_frames=8, threads=1)
    try:
        report = swap_live(tiny_dfm, str(media_dir / TALKING_HEAD), options, REVISION)
    finally:
        sent.set()
        thread.join()
        receiver.close()

    stream = b"".join(datagrams)
    assert report.frames == 8 and datagrams and all(datagram[:1] == b"G" for datagram in datagrams), "MPEG-TS packets"
    assert SYNTHETIC_LABEL.encode() in stream, "the stream names itself as synthetic"
    (tmp_path / "received.ts").write_bytes(stream)
    received = [frame for _, _, frame in iter_frames(tmp_path / "received.ts")]
    assert len(received) == 8 and received[0].shape == (480, 640, 3)


def test_a_paced_video_source_drops_the_frames_a_slow_loop_misses(media_dir: Path) -> None:
    source = open_source(str(media_dir / TALKING_HEAD), LiveOptions(realtime=True, capture_width=0, capture_height=0))
    try:
        first = source.read()
        time.sleep(0.2)  # six frames' time at 30 fps
        second = source.read()
        start = time.perf_counter()
        following = [source.read() for _ in range(6)]
        seconds = time.perf_counter() - start
    finally:
        source.close()
    assert first.index == 0 and first.image.shape == (388, 512, 3)
    assert second.index >= 5 and source.dropped >= 4, "frames captured while the loop slept are dropped"
    assert 0.15 < second.captured_at - first.captured_at < 1.0, "captured on the clip's clock"
    assert seconds > 5 / 30 and following[-1].index > following[0].index > second.index, "never faster than the clip"


def test_a_dfm_with_renamed_tensors_is_refused_naming_the_tensor(tiny_dfm: Path, tmp_path: Path) -> None:
    with pytest.raises(DfmError, match=r"inputs are \['face'\]"):
        DfmSwapModel(write_fake_dfm(tmp_path / "input.dfm", input_name="face"))
    model_proto = onnx.load(str(tiny_dfm))
    renamed = "out_face:0"
    for node in model_proto.graph.node:
        node.output[:] = [renamed if name == DFM_OUTPUT_NAMES[1] else name for name in node.output]
    model_proto.graph.output[1].name = renamed
    onnx.save(model_proto, str(tmp_path / "output.dfm"))
    with pytest.raises(DfmError, match=f"outputs are .*'{renamed}'.*expected .*'{DFM_OUTPUT_NAMES[1]}'"):
        DfmSwapModel(tmp_path / "output.dfm")


def test_the_face_type_comes_from_the_file_or_the_option(tiny_dfm: Path, tmp_path: Path) -> None:
    assert DfmSwapModel(tiny_dfm, threads=1).face_type == "whole_face"
    assert DfmSwapModel(tiny_dfm, face_type="full", threads=1).face_type == "full"
    assert DfmSwapModel(write_fake_dfm(tmp_path / "deepfacelab.dfm"), face_type="head").face_type == "head"


def test_missing_camera_file_display_and_device_are_clear_errors(tiny_dfm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LiveError, match="no camera at index 63"):
        open_source("63", LiveOptions())
    with pytest.raises(LiveError, match="'nowhere.mp4' is neither a camera index"):
        open_source("nowhere.mp4", LiveOptions())
    with pytest.raises(ValueError, match="needs an output path"):
        LiveOptions(sink="file")
    if sys.platform.startswith("linux"):
        monkeypatch.delenv("DISPLAY", raising=False)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        with pytest.raises(LiveError, match="needs a display"):
            WindowSink()
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(LiveError, match="--device cuda"):
            DfmSwapModel(tiny_dfm, device="cuda")


def test_causal_smoothing_follows_steady_motion_and_damps_noise() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(100, 200, (68, 2))
    steady = [base + 3.0 * frame for frame in range(20)]
    smoother = CausalLandmarkSmoother(3.0)
    smoothed = [smoother.smooth(0, frame, points) for frame, points in enumerate(steady)]
    assert np.allclose(smoothed[-1], steady[-1], atol=1e-3), "steady motion passes without lag"

    noisy = [base + rng.normal(0, 1.0, base.shape) for _ in range(40)]
    smoother = CausalLandmarkSmoother(3.0)
    smoothed = [smoother.smooth(0, frame, points) for frame, points in enumerate(noisy)]
    assert np.std(np.array(smoothed[10:]) - base) < 0.8 * np.std(np.array(noisy[10:]) - base)


def test_timing_summary_and_overlay() -> None:
    summary = summarize_times([1.0, 2.0, 3.0, 100.0])
    assert (summary.count, summary.mean, summary.p50) == (4, 26.5, 2.5) and summary.p95 > 80
    clock = StageClock()
    with clock.stage("swap"):
        time.sleep(0.01)
    clock.finish_frame(time.perf_counter() - 0.05)
    assert clock.milliseconds["swap"][0] >= 10 and clock.latencies[0] >= 50
    frame = np.full((480, 640, 3), 200, np.uint8)
    shown = draw_overlay(frame, clock.status_lines())
    assert "latency" in clock.status_lines()[0] and any(line.startswith("swap") for line in clock.status_lines())
    assert (frame == 200).all() and not np.array_equal(shown[:20, :100], frame[:20, :100])
    assert np.array_equal(shown[200:, 300:], frame[200:, 300:]), "the overlay stays in its corner"


def test_the_file_sink_fills_dropped_frames_and_discards_a_failed_run(tmp_path: Path) -> None:
    frames = [np.full((48, 64, 3), level, np.uint8) for level in (40, 120, 200)]
    sink = FileSink(tmp_path / "kept.mp4", 64, 48, 10.0, 0, REVISION)
    for index, frame in zip((5, 6, 9), frames, strict=True):  # 7 and 8 were dropped by the source
        sink.write(frame, index, [])
    sink.close({"frames": 3})
    written = [frame for _, _, frame in iter_frames(tmp_path / "kept.mp4")]
    levels = [int(np.median(frame)) for frame in written]  # grey levels shift by a few in YUV and back
    assert np.allclose(levels, [40, 120, 120, 120, 200], atol=4), f"{levels}: not held like a live picture"
    assert json.loads((tmp_path / "kept.mp4.provenance.json").read_text())["repeated_frames"] == 2

    sink = FileSink(tmp_path / "failed.mp4", 64, 48, 10.0, 0, REVISION)
    sink.write(frames[0], 0, [])
    sink.close(None)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept.mp4", "kept.mp4.provenance.json"]
