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
from tasks.faceset_reader import ArrayFaceset
from tasks.run_state import list_checkpoints
from tasks.train import train_stage
from tasks.train_options import RuntimeOptions, StageOptions
from tasks.train_step import Batches

TINY = ModelConfig(resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=4)
OPTIONS = StageOptions(iterations=30, batch_size=4, learning_rate=1e-3, preview_every=100, seed=7, save_every=5,
                       optimizer="adam", random_src_flip=True)
# The SAEHD extras that train networks beside the model: a code discriminator and a patch GAN.
GAN_OPTIONS = replace(OPTIONS, true_face_power=0.01, gan_power=0.1, gan_dims=4, optimizer="adabelief", lr_dropout=0.3)
RUNTIME = RuntimeOptions(workers=0)  # in-process batches: a spawned loader costs seconds per stage in tests

# Trains GAN_OPTIONS in a fresh process with one torch thread and a loader worker: argv = media dir,
# output dir, work dir, seconds to sleep per iteration (to give the test time to kill it mid-run).
WORKER = """
import logging, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO)
from tests.tasks.test_train_resume import GAN_OPTIONS, TINY, load_faces
from tasks.train import train_stage
from tasks.train_options import RuntimeOptions
media, output, work, delay = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
def slow_down(step, batches):
    time.sleep(delay)
    return batches
train_stage(load_faces(media), TINY, GAN_OPTIONS, "warp", output, output.parent / "logs", progress=False,
            work_dir=work, batch_hook=slow_down, runtime=RuntimeOptions(workers=1))
"""


class SimulatedCrash(Exception):
    """Raised from a batch hook to stop a run the way a crash would, between two iterations."""


def crop_landmarks(size: int) -> np.ndarray:
    """(68, 2) points of a frontal face filling a tight crop of side ``size``: a jaw arc, brows, nose, eyes
    and lips where a 150 px tight crop has them (enough for the hull and eyes/mouth masks)."""
    unit = np.zeros((68, 2), np.float32)
    angles = np.linspace(np.pi * 0.95, np.pi * 0.05, 17)
    unit[0:17] = np.c_[0.5 + 0.36 * np.cos(angles), 0.45 + 0.45 * np.sin(angles)]  # jaw, ear to ear under the chin
    unit[17:27] = np.c_[np.linspace(0.22, 0.78, 10), np.full(10, 0.33)]  # brows
    unit[27:36] = np.c_[np.r_[np.full(4, 0.5), np.linspace(0.42, 0.58, 5)], np.r_[np.linspace(0.4, 0.58, 4), np.full(5, 0.62)]]
    for start, center_x in ((36, 0.35), (42, 0.65)):  # eyes: six points round an ellipse
        eye_angles = np.linspace(0, 2 * np.pi, 7)[:6]
        unit[start:start + 6] = np.c_[center_x + 0.07 * np.cos(eye_angles), 0.43 + 0.03 * np.sin(eye_angles)]
    outer, inner = np.linspace(0, 2 * np.pi, 13)[:12], np.linspace(0, 2 * np.pi, 9)[:8]
    unit[48:60] = np.c_[0.5 + 0.14 * np.cos(outer), 0.76 + 0.05 * np.sin(outer)]  # outer lips
    unit[60:68] = np.c_[0.5 + 0.1 * np.cos(inner), 0.76 + 0.02 * np.sin(inner)]  # inner lips
    return unit * size


def load_faces(media_dir: Path, resolution: int = 32) -> dict[str, ArrayFaceset]:
    """Real 150x150 crops at ``resolution``: 20 for src, 20 for dst, with elliptic face masks, a frontal
    landmark layout and yaw 0 (the crops are frontal)."""
    paths = sorted((media_dir / "photos" / "tight_crops").glob("*.png"))
    faces = np.stack([cv2.resize(cv2.imread(str(path)), (resolution, resolution), interpolation=cv2.INTER_AREA)
                      for path in paths])
    mask = np.zeros((150, 150), np.uint8)
    cv2.ellipse(mask, (75, 80), (50, 62), 0, 0, 360, 255, thickness=-1)
    mask = cv2.resize(mask, (resolution, resolution), interpolation=cv2.INTER_AREA)
    masks = np.repeat(mask[None], len(faces), axis=0)
    landmarks = np.repeat(crop_landmarks(resolution)[None], len(faces), axis=0)
    yaw = np.zeros(len(faces), np.float32)
    return {"src": ArrayFaceset(faces[:20], masks[:20], yaw[:20], landmarks[:20]),
            "dst": ArrayFaceset(faces[20:], masks[20:], yaw[20:], landmarks[20:])}


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


def assert_same_networks(directory: Path, expected: Path) -> None:
    """The discriminators and their optimizer states of two checkpoints are equal, bit for bit."""
    networks, wanted = load_checkpoint(directory).networks, load_checkpoint(expected).networks
    assert set(networks) == set(wanted) and networks
    for name, network in networks.items():
        for key, value in network.weights.items():
            assert torch.equal(value, wanted[name].weights[key]), f"{name}.{key}"
        for index, values in network.optimizer_state["state"].items():
            for key, value in values.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(wanted[name].optimizer_state["state"][index][key]))


@pytest.fixture(scope="module")
def data(media_dir: Path) -> dict[str, ArrayFaceset]:
    return load_faces(media_dir)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted run without a work dir: its final weights and the digest of each iteration's batches."""
    root = tmp_path_factory.mktemp("reference")
    batches: dict[int, str] = {}
    train_stage(data, TINY, OPTIONS, "warp", root / "model", root / "logs", progress=False, batch_hook=recording(batches),
                runtime=RUNTIME)
    return load_checkpoint(root / "model").model.state_dict(), batches


@pytest.fixture(scope="module")
def gan_reference(data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run with the discriminators on; its checkpoint directory."""
    root = tmp_path_factory.mktemp("gan_reference")
    train_stage(data, TINY, GAN_OPTIONS, "warp", root / "model", root / "logs", progress=False, runtime=RUNTIME)
    return root / "model"


def test_a_run_killed_mid_stage_resumes_to_the_weights_of_an_uninterrupted_run(gan_reference, media_dir, project_root,
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
    # A loader process, the discriminators and LR dropout: still the weights of the uninterrupted in-process run.
    assert_same_weights(output, load_checkpoint(gan_reference).model.state_dict())
    assert_same_networks(output, gan_reference)
    assert [path.name for path in list_checkpoints(work)] == ["iteration-000000030", "iteration-000000025"]


def test_a_resumed_run_draws_the_batches_of_a_fresh_one(data, reference, tmp_path, caplog):
    work = tmp_path / "work"
    with pytest.raises(SimulatedCrash):
        train_stage(data, TINY, OPTIONS, "warp", tmp_path / "model", tmp_path / "logs", progress=False, work_dir=work,
                    batch_hook=crashing_at(13), runtime=RUNTIME)
    # The copy of iteration 10 is saved once iteration 11's loss shows it healthy; 13 never ran.
    assert [path.name for path in list_checkpoints(work)] == ["iteration-000000010", "iteration-000000005"]
    batches: dict[int, str] = {}
    with caplog.at_level(logging.INFO):
        result = train_stage(data, TINY, OPTIONS, "warp", tmp_path / "model", tmp_path / "logs", progress=False,
                             work_dir=work, batch_hook=recording(batches), runtime=RUNTIME)
    assert "10 of 30 iterations done" in caplog.text
    assert sorted(batches) == list(range(11, 31))
    assert all(batches[step] == reference[1][step] for step in batches)
    assert result.iterations == 30
    assert_same_weights(tmp_path / "model", reference[0])


def test_a_damaged_last_checkpoint_is_named_and_the_one_before_it_used(data, reference, tmp_path, caplog):
    work = tmp_path / "work"
    with pytest.raises(SimulatedCrash):
        train_stage(data, TINY, OPTIONS, "warp", tmp_path / "model", tmp_path / "logs", progress=False, work_dir=work,
                    batch_hook=crashing_at(18), runtime=RUNTIME)
    damaged = work / "iteration-000000015" / MODEL_FILE
    payload = bytearray(damaged.read_bytes())
    payload[-10] ^= 0xFF  # one weight byte flipped on disk: same size, wrong sha256
    damaged.write_bytes(bytes(payload))
    with caplog.at_level(logging.INFO):
        train_stage(data, TINY, OPTIONS, "warp", tmp_path / "model", tmp_path / "logs", progress=False, work_dir=work,
                    runtime=RUNTIME)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(str(damaged) in message and "sha256" in message for message in warnings), warnings
    assert f"resuming from {work / 'iteration-000000010'}: 10 of 30" in caplog.text
    assert_same_weights(tmp_path / "model", reference[0])


def test_more_iterations_continue_the_finished_run(data, reference, tmp_path, caplog):
    work = tmp_path / "work"
    train_stage(data, TINY, replace(OPTIONS, iterations=20), "warp", tmp_path / "first", tmp_path / "logs",
                progress=False, work_dir=work, runtime=RUNTIME)
    with caplog.at_level(logging.INFO):
        result = train_stage(data, TINY, OPTIONS, "warp", tmp_path / "more", tmp_path / "logs", progress=False,
                             work_dir=work, runtime=RUNTIME)
    assert "20 of 30 iterations done" in caplog.text
    assert result.iterations == 30
    assert_same_weights(tmp_path / "more", reference[0])
    # Asked again for the same 30 iterations, the finished run is the result: nothing is trained.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = train_stage(data, TINY, OPTIONS, "warp", tmp_path / "again", tmp_path / "logs", progress=False,
                            work_dir=work, runtime=RUNTIME)
    assert "30 of 30 iterations done" in caplog.text
    assert {name: value for name, value in again.metrics.items() if name != "ms_per_iteration"} == \
        {name: value for name, value in result.metrics.items() if name != "ms_per_iteration"}
    assert_same_weights(tmp_path / "again", reference[0])
    assert load_checkpoint(tmp_path / "again").state["history"] == ["warp"]


def test_a_changed_setting_starts_over_and_replaces_the_stale_checkpoints(data, tmp_path, caplog):
    work = tmp_path / "work"
    short = replace(OPTIONS, iterations=10)
    train_stage(data, TINY, short, "warp", tmp_path / "model", tmp_path / "logs", progress=False, work_dir=work,
                runtime=RUNTIME)
    stale = list_checkpoints(work)
    assert [path.name for path in stale] == ["iteration-000000010", "iteration-000000005"]
    with caplog.at_level(logging.INFO):
        train_stage(data, TINY, replace(short, learning_rate=5e-4), "warp", tmp_path / "model", tmp_path / "logs",
                    progress=False, work_dir=work, runtime=RUNTIME)
    assert "other settings" in caplog.text and "iterations done" not in caplog.text
    assert "iterations 1 to 10 of the model" in caplog.text
    assert load_checkpoint(list_checkpoints(work)[0]).state["run"]["learning_rate"] == 5e-4
    assert [path.name for path in list_checkpoints(work)] == ["iteration-000000010", "iteration-000000005"]
