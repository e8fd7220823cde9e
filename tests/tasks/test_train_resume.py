"""Resuming a training stage from its work dir: after a kill, past a damaged checkpoint, with more iterations."""

from __future__ import annotations

import hashlib
import logging
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.checkpoint import MODEL_FILE, load_checkpoint
from model.config import ModelConfig
from tasks.run_state import list_checkpoints
from tasks.train import Batches, StageOptions, TrainingData, train_stage

TINY = ModelConfig(resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=4)
OPTIONS = StageOptions(iterations=30, batch_size=4, learning_rate=1e-3, preview_every=100, seed=7, save_every=5)

# Trains OPTIONS in a fresh process with one torch thread: argv = media dir, output dir, work dir,
# seconds to sleep per iteration (to give the test time to kill it mid-run).
WORKER = """
import logging, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO)
from tests.tasks.test_train_resume import OPTIONS, TINY, load_faces
from tasks.train import train_stage
media, output, work, delay = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
def slow_down(step, batches):
    time.sleep(delay)
    return batches
train_stage(load_faces(media), TINY, OPTIONS, "warp", output, output.parent / "logs", progress=False,
            work_dir=work, batch_hook=slow_down)
"""


class SimulatedCrash(Exception):
    """Raised from a batch hook to stop a run the way a crash would, between two iterations."""


def load_faces(media_dir: Path) -> TrainingData:
    """Real 150x150 crops: 20 for src, 20 for dst, with elliptic face masks."""
    paths = sorted((media_dir / "photos" / "tight_crops").glob("*.png"))
    faces = np.stack([cv2.imread(str(path)) for path in paths])
    mask = np.zeros((150, 150), np.uint8)
    cv2.ellipse(mask, (75, 80), (50, 62), 0, 0, 360, 255, thickness=-1)
    masks = np.repeat(mask[None], len(faces), axis=0)
    return TrainingData(src_faces=faces[:20], src_masks=masks[:20], dst_faces=faces[20:], dst_masks=masks[20:])


def digest(batches: Batches) -> str:
    """sha256 over every tensor of both sides' batches."""
    hasher = hashlib.sha256()
    for side in sorted(batches):
        for tensor in batches[side]:
            hasher.update(tensor.numpy().tobytes())
    return hasher.hexdigest()


def recording(into: dict[int, str]):
    def hook(step: int, batches: Batches) -> Batches:
        into[step] = digest(batches)
        return batches
    return hook


def crashing_at(iteration: int):
    def hook(step: int, batches: Batches) -> Batches:
        if step == iteration:
            raise SimulatedCrash(f"crash before iteration {iteration}")
        return batches
    return hook


def assert_same_weights(directory: Path, expected: dict[str, torch.Tensor]) -> None:
    weights = load_checkpoint(directory).model.state_dict()
    assert weights.keys() == expected.keys()
    for name, value in weights.items():
        assert torch.equal(value, expected[name]), name


@pytest.fixture(scope="module")
def data(media_dir: Path) -> TrainingData:
    return load_faces(media_dir)


@pytest.fixture(scope="module")
def reference(data: TrainingData, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted run without a work dir: its final weights and the digest of each iteration's batches."""
    root = tmp_path_factory.mktemp("reference")
    batches: dict[int, str] = {}
    train_stage(data, TINY, OPTIONS, "warp", root / "model", root / "logs", progress=False, batch_hook=recording(batches))
    return load_checkpoint(root / "model").model.state_dict(), batches


def test_a_run_killed_mid_stage_resumes_to_the_weights_of_an_uninterrupted_run(reference, media_dir, project_root,
                                                                                tmp_path):
    output, work = tmp_path / "model", tmp_path / "work"
    command = [sys.executable, "-c", WORKER, str(media_dir), str(output), str(work)]
    log = tmp_path / "killed.log"
    with log.open("w") as stream:
        killed = subprocess.Popen([*command, "0.05"], cwd=project_root, stdout=stream, stderr=stream)
    try:
        deadline = time.monotonic() + 120
        while not (work / "iteration-000000010").is_dir() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL, log.read_text()[-4000:]
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
    assert not (output / "checkpoint.json").exists(), "the kill came before the stage finished"

    finished = subprocess.run([*command, "0"], cwd=project_root, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    resumed = re.search(r"resuming from \S+iteration-0+(\d+): (\d+) of 30 iterations done", finished.stderr)
    assert resumed, finished.stderr[-4000:]
    assert 10 <= int(resumed.group(2)) < 30
    assert_same_weights(output, reference[0])
    assert [path.name for path in list_checkpoints(work)] == ["iteration-000000030", "iteration-000000025"]


def test_a_resumed_run_draws_the_batches_of_a_fresh_one(data, reference, tmp_path, caplog):
    work = tmp_path / "work"
    with pytest.raises(SimulatedCrash):
        train_stage(data, TINY, OPTIONS, "warp", tmp_path / "model", tmp_path / "logs", progress=False, work_dir=work,
                    batch_hook=crashing_at(13))
    # The copy of iteration 10 is saved once iteration 11's loss shows it healthy; 13 never ran.
    assert [path.name for path in list_checkpoints(work)] == ["iteration-000000010", "iteration-000000005"]
    batches: dict[int, str] = {}
    with caplog.at_level(logging.INFO):
        result = train_stage(data, TINY, OPTIONS, "warp", tmp_path / "model", tmp_path / "logs", progress=False,
                             work_dir=work, batch_hook=recording(batches))
    assert "10 of 30 iterations done" in caplog.text
    assert sorted(batches) == list(range(11, 31))
    assert all(batches[step] == reference[1][step] for step in batches)
    assert result.iterations == 30
    assert_same_weights(tmp_path / "model", reference[0])


def test_a_damaged_last_checkpoint_is_named_and_the_one_before_it_used(data, reference, tmp_path, caplog):
    work = tmp_path / "work"
    with pytest.raises(SimulatedCrash):
        train_stage(data, TINY, OPTIONS, "warp", tmp_path / "model", tmp_path / "logs", progress=False, work_dir=work,
                    batch_hook=crashing_at(18))
    damaged = work / "iteration-000000015" / MODEL_FILE
    payload = bytearray(damaged.read_bytes())
    payload[-10] ^= 0xFF  # one weight byte flipped on disk: same size, wrong sha256
    damaged.write_bytes(bytes(payload))
    with caplog.at_level(logging.INFO):
        train_stage(data, TINY, OPTIONS, "warp", tmp_path / "model", tmp_path / "logs", progress=False, work_dir=work)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(str(damaged) in message and "sha256" in message for message in warnings), warnings
    assert f"resuming from {work / 'iteration-000000010'}: 10 of 30" in caplog.text
    assert_same_weights(tmp_path / "model", reference[0])


def test_more_iterations_continue_the_finished_run(data, reference, tmp_path, caplog):
    work = tmp_path / "work"
    train_stage(data, TINY, replace(OPTIONS, iterations=20), "warp", tmp_path / "first", tmp_path / "logs",
                progress=False, work_dir=work)
    with caplog.at_level(logging.INFO):
        result = train_stage(data, TINY, OPTIONS, "warp", tmp_path / "more", tmp_path / "logs", progress=False,
                             work_dir=work)
    assert "20 of 30 iterations done" in caplog.text
    assert result.iterations == 30
    assert_same_weights(tmp_path / "more", reference[0])
    # Asked again for the same 30 iterations, the finished run is the result: nothing is trained.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = train_stage(data, TINY, OPTIONS, "warp", tmp_path / "again", tmp_path / "logs", progress=False,
                            work_dir=work)
    assert "30 of 30 iterations done" in caplog.text
    assert {name: value for name, value in again.metrics.items() if name != "ms_per_iteration"} == \
        {name: value for name, value in result.metrics.items() if name != "ms_per_iteration"}
    assert_same_weights(tmp_path / "again", reference[0])
    assert load_checkpoint(tmp_path / "again").state["history"] == ["warp"]


def test_a_changed_setting_starts_over_and_replaces_the_stale_checkpoints(data, tmp_path, caplog):
    work = tmp_path / "work"
    short = replace(OPTIONS, iterations=10)
    train_stage(data, TINY, short, "warp", tmp_path / "model", tmp_path / "logs", progress=False, work_dir=work)
    stale = list_checkpoints(work)
    assert [path.name for path in stale] == ["iteration-000000010", "iteration-000000005"]
    with caplog.at_level(logging.INFO):
        train_stage(data, TINY, replace(short, learning_rate=5e-4), "warp", tmp_path / "model", tmp_path / "logs",
                    progress=False, work_dir=work)
    assert "other settings" in caplog.text and "iterations done" not in caplog.text
    assert "iterations 1 to 10 of the model" in caplog.text
    assert load_checkpoint(list_checkpoints(work)[0]).state["run"]["learning_rate"] == 5e-4
    assert [path.name for path in list_checkpoints(work)] == ["iteration-000000010", "iteration-000000005"]
