"""The collapse guard: its judgement, and real training runs with a spike or NaNs injected into a batch."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from model.checkpoint import load_checkpoint
from tasks.collapse import MAX_CONSECUTIVE_ROLLBACKS, WARMUP, CollapseGuard, TrainingCollapseError
from tasks.train import train_stage
from tasks.train_options import StageOptions
from tasks.train_step import Batches
from tests.tasks.test_train_resume import RUNTIME, TINY, SimulatedCrash, assert_same_weights, load_faces

OPTIONS = StageOptions(iterations=30, batch_size=4, learning_rate=1e-3, preview_every=100, seed=3, save_every=10,
                       optimizer="adam", random_src_flip=True)


def corrupting(iterations: set[int] | range, corrupt):
    """A batch hook that replaces the src batch by ``corrupt(inputs, targets, masks)`` at ``iterations``."""
    def hook(step: int, batches: Batches) -> Batches:
        if step in iterations:
            batches = {**batches, "src": corrupt(*batches["src"])}
        return batches
    return hook


def spike(inputs, targets, masks):
    return inputs, targets * 50, masks  # far outside [0, 1]: the loss jumps by orders of magnitude


def poison(inputs, targets, masks):
    return torch.full_like(inputs, float("nan")), targets, masks


@pytest.fixture(scope="module")
def data(media_dir: Path):
    return load_faces(media_dir)


def warmed_up_guard(factor: float = 4.0) -> CollapseGuard:
    guard = CollapseGuard(factor)
    for _ in range(WARMUP):
        guard.accept(1.0)
    return guard


def test_guard_rejects_non_finite_losses_always_and_spikes_after_the_warmup() -> None:
    guard = CollapseGuard(4.0)
    assert "non-finite" in guard.judge(float("nan")) and "non-finite" in guard.judge(float("inf"))
    guard.accept(1.0)
    assert guard.judge(100.0) is None, "no spike test during the warm-up"
    guard = warmed_up_guard()
    assert guard.judge(3.9) is None
    assert "spiked above 4 x" in guard.judge(4.1)
    assert guard.average == pytest.approx(1.0) and guard.accepted == WARMUP
    off = warmed_up_guard(factor=0.0)
    assert off.judge(1000.0) is None and off.judge(float("nan")) is not None


def test_guard_counts_rollbacks_in_a_row_and_restores_its_average() -> None:
    guard = warmed_up_guard()
    saved = guard.to_state()
    guard.accept(3.0)
    for _ in range(MAX_CONSECUTIVE_ROLLBACKS):
        assert guard.may_roll_back
        guard.count_rollback()
    assert not guard.may_roll_back
    guard.restore_average(saved)
    assert guard.average == pytest.approx(1.0) and guard.consecutive_rollbacks == MAX_CONSECUTIVE_ROLLBACKS
    guard.accept(1.0)
    assert guard.may_roll_back and guard.consecutive_rollbacks == 0
    assert CollapseGuard.from_state(guard.to_state()) == guard


def test_a_loss_spike_is_rolled_back_with_a_lower_learning_rate(data, tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        result = train_stage(data, TINY, OPTIONS, "warp", tmp_path / "model", tmp_path / "logs", progress=False,
                             batch_hook=corrupting({25}, spike), runtime=RUNTIME)
    assert result.metrics["collapse_rollbacks"] == 1
    assert all(math.isfinite(value) for value in result.metrics.values())
    checkpoint = load_checkpoint(tmp_path / "model")
    [event] = checkpoint.state["collapse_events"]
    assert event["iteration"] == 25 and event["restored_iteration"] == 20 and "spiked" in event["reason"]
    assert event["loss"] > 4 * result.metrics["total"]
    assert event["learning_rate"] == checkpoint.optimizer_state["param_groups"][0]["lr"] == 5e-4
    assert any("iteration 25" in record.getMessage() and "rolled back to iteration 20" in record.getMessage()
               for record in caplog.records if record.levelno == logging.WARNING)
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert [(event.step, event.value) for event in events.Scalars("collapse/rollbacks")] == [(25, 1.0)]
    assert any(tag.startswith("collapse") for tag in events.Tags()["tensors"])  # the text event
    # The guard, not luck, handled it: with the spike test off the same batch goes through.
    unguarded = train_stage(data, TINY, replace(OPTIONS, collapse_factor=0.0), "warp", tmp_path / "off",
                            tmp_path / "off_logs", progress=False, batch_hook=corrupting({25}, spike), runtime=RUNTIME)
    assert unguarded.metrics["collapse_rollbacks"] == 0


def test_a_non_finite_loss_restores_the_last_good_weights(data, tmp_path) -> None:
    options = replace(OPTIONS, iterations=15, save_every=5)
    result = train_stage(data, TINY, options, "warp", tmp_path / "model", tmp_path / "logs", progress=False,
                         batch_hook=corrupting({8}, poison), runtime=RUNTIME)
    assert result.metrics["collapse_rollbacks"] == 1
    assert all(math.isfinite(value) for value in result.metrics.values())
    checkpoint = load_checkpoint(tmp_path / "model")
    [event] = checkpoint.state["collapse_events"]
    assert event == {"iteration": 8, "reason": "non-finite loss (nan)", "loss": None, "restored_iteration": 5,
                     "learning_rate": 5e-4}
    assert all(torch.isfinite(value).all() for value in checkpoint.model.state_dict().values())


def test_a_rollback_restores_the_discriminators_and_lowers_their_learning_rate(data, tmp_path) -> None:
    options = replace(OPTIONS, iterations=12, save_every=5, gan_power=0.1, true_face_power=0.01, gan_dims=4)
    result = train_stage(data, TINY, options, "gan", tmp_path / "model", tmp_path / "logs", progress=False,
                         batch_hook=corrupting({8}, poison), runtime=RUNTIME)
    assert result.metrics["collapse_rollbacks"] == 1
    networks = load_checkpoint(tmp_path / "model").networks
    assert set(networks) == {"code_discriminator", "patch_discriminator"}
    for name, network in networks.items():
        # The poisoned step fed NaN codes and faces to the discriminators: only the rollback made them finite again.
        assert all(torch.isfinite(value).all() for value in network.weights.values()), name
        assert network.optimizer_state["param_groups"][0]["lr"] == 5e-4, name


def test_training_that_keeps_collapsing_gives_up_with_advice(data, tmp_path) -> None:
    with pytest.raises(TrainingCollapseError, match=r"stage warp kept collapsing.*train\.stages\.warp\.learning_rate"):
        train_stage(data, TINY, replace(OPTIONS, iterations=12), "warp", tmp_path / "model", tmp_path / "logs",
                    progress=False, batch_hook=corrupting(range(4, 100), poison), runtime=RUNTIME)
    assert not (tmp_path / "model" / "checkpoint.json").exists()


def test_rollbacks_replay_identically_after_a_resume(data, tmp_path) -> None:
    options = replace(OPTIONS, iterations=35, save_every=5)
    uninterrupted = train_stage(data, TINY, options, "warp", tmp_path / "reference", tmp_path / "logs", progress=False,
                                batch_hook=corrupting({25}, spike), runtime=RUNTIME)

    def spike_then_crash(step: int, batches: Batches) -> Batches:
        if step == 33:
            raise SimulatedCrash("crash after the rollback and the save of iteration 30")
        return corrupting({25}, spike)(step, batches)

    work = tmp_path / "work"
    with pytest.raises(SimulatedCrash):
        train_stage(data, TINY, options, "warp", tmp_path / "model", tmp_path / "logs", progress=False, work_dir=work,
                    batch_hook=spike_then_crash, runtime=RUNTIME)
    saved = load_checkpoint(work / "iteration-000000030")
    assert saved.state["run"]["learning_rate"] == 5e-4 and len(saved.state["collapse_events"]) == 1
    resumed = train_stage(data, TINY, options, "warp", tmp_path / "model", tmp_path / "logs", progress=False,
                          work_dir=work, runtime=RUNTIME)
    assert resumed.metrics["collapse_rollbacks"] == uninterrupted.metrics["collapse_rollbacks"] == 1
    assert load_checkpoint(tmp_path / "model").state == load_checkpoint(tmp_path / "reference").state
    assert_same_weights(tmp_path / "model", load_checkpoint(tmp_path / "reference").model.state_dict())
