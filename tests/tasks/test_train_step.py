"""Tests for tasks/train_step.py: each option adds its loss term or network, and the step really learns."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.config import ModelConfig
from model.networks import build_model
from model.optimizers import AdaBelief
from tasks.loader import batch_to_device, make_batch
from tasks.train_options import RuntimeOptions, StageOptions, find_compiler, resolve_runtime
from tasks.train_step import CODE_DISCRIMINATOR, PATCH_DISCRIMINATOR, assemble_parts, train_step
from tests.tasks.test_train_resume import load_faces

TINY = ModelConfig(resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=4)
OPTIONS = StageOptions(batch_size=4, learning_rate=1e-3, optimizer="adam", random_warp=False)
CPU = resolve_runtime(RuntimeOptions(device="cpu", workers=0))
RECONSTRUCTION_TERMS = {f"{side}_{term}" for side in ("src", "dst") for term in ("dssim", "mse", "mask", "total")}


@pytest.fixture(scope="module")
def readers(media_dir: Path):
    return load_faces(media_dir)


def build(options: StageOptions, runtime=CPU, config: ModelConfig = TINY):
    torch.manual_seed(0)
    return assemble_parts(build_model(config), config, options, runtime, options.learning_rate, None, {}, resuming=False)


def batches_for(readers, options: StageOptions, step: int = 1, runtime=CPU):
    return batch_to_device(make_batch(readers, options.batch_options(), options.seed, step), runtime.device)


@pytest.mark.parametrize(("changes", "added"), [
    ({}, set()),
    ({"eyes_mouth_priority": True}, {"src_eyes_mouth", "dst_eyes_mouth"}),
    ({"face_style_power": 10.0}, {"src_face_style"}),
    ({"bg_style_power": 10.0}, {"src_background_style"}),
    ({"true_face_power": 0.01}, {"src_true_face", CODE_DISCRIMINATOR}),
    ({"gan_power": 0.1, "gan_dims": 4}, {"src_gan", PATCH_DISCRIMINATOR}),
])
def test_each_option_adds_its_terms_and_they_sum_to_the_totals(readers, changes: dict, added: set) -> None:
    options = replace(OPTIONS, **changes)
    parts = build(options)
    values = train_step(parts, batches_for(readers, options), options, CPU)
    assert set(values) == RECONSTRUCTION_TERMS | {"total"} | added
    for side in ("src", "dst"):
        terms = [value for name, value in values.items() if name.startswith(f"{side}_") and name != f"{side}_total"]
        assert values[f"{side}_total"] == pytest.approx(sum(terms), rel=1e-5)
    assert values["total"] == pytest.approx(values["src_total"] + values["dst_total"], rel=1e-6)
    assert all(value > 0 for value in values.values())
    assert set(parts.networks) == added & {CODE_DISCRIMINATOR, PATCH_DISCRIMINATOR}


def test_discriminators_train_on_their_own_optimizers(readers) -> None:
    options = replace(OPTIONS, true_face_power=0.01, gan_power=0.1, gan_dims=4)
    parts = build(options)
    model_parameters = {id(parameter) for parameter in parts.model.parameters()}
    before = {}
    for name, (network, optimizer) in parts.networks.items():
        own = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
        assert own == {id(parameter) for parameter in network.parameters()} and not own & model_parameters, name
        before[name] = [parameter.detach().clone() for parameter in network.parameters()]
    assert {id(parameter) for group in parts.optimizer.param_groups for parameter in group["params"]} == model_parameters
    train_step(parts, batches_for(readers, options), options, CPU)
    for name, (network, _) in parts.networks.items():
        assert any(not torch.equal(old, new) for old, new in zip(before[name], network.parameters(), strict=True)), name


def test_the_optimizer_lr_dropout_and_clipping_are_the_stage_options(readers) -> None:
    assert isinstance(build(replace(OPTIONS, optimizer="adabelief")).optimizer, AdaBelief)
    assert isinstance(build(replace(OPTIONS, optimizer="rmsprop")).optimizer, torch.optim.RMSprop)

    def changed_share(options: StageOptions) -> float:
        parts = build(options)
        before = [parameter.detach().clone() for parameter in parts.model.parameters()]
        train_step(parts, batches_for(readers, options), options, CPU)
        changed = sum(int((old != new).sum()) for old, new in zip(before, parts.model.parameters(), strict=True))
        return changed / sum(old.numel() for old in before)

    assert changed_share(OPTIONS) > 0.95
    assert changed_share(replace(OPTIONS, lr_dropout=0.7)) == pytest.approx(0.3, abs=0.03)  # 70 % of updates dropped

    def gradient_norm(options: StageOptions) -> float:
        parts = build(options)
        train_step(parts, batches_for(readers, options), options, CPU)  # clipping acts on the gradients in place
        return float(torch.nn.utils.get_total_norm([parameter.grad for parameter in parts.model.parameters()]))

    assert gradient_norm(OPTIONS) > 0.5
    assert gradient_norm(replace(OPTIONS, clip_grad=0.1)) == pytest.approx(0.1, rel=1e-3)


def test_overfitting_one_batch_drives_the_loss_down(readers) -> None:
    options = replace(OPTIONS, learning_rate=2e-3, eyes_mouth_priority=True)
    parts = build(options)
    batches = batches_for(readers, options)
    totals = [train_step(parts, batches, options, CPU)["total"] for _ in range(100)]
    assert totals[-1] < 0.4 * totals[0], f"loss {totals[0]:.3f} -> {totals[-1]:.3f} after 100 steps on one batch"


def test_bf16_autocast_runs_a_step_on_the_cpu(readers) -> None:
    runtime = resolve_runtime(RuntimeOptions(device="cpu", precision="bf16", workers=0))
    assert runtime.autocast_dtype == torch.bfloat16
    options = replace(OPTIONS, gan_power=0.1, gan_dims=4, face_style_power=1.0)
    parts = build(options, runtime)
    values = train_step(parts, batches_for(readers, options), options, runtime)
    reference = train_step(build(options), batches_for(readers, options), options, CPU)
    assert all(torch.isfinite(torch.tensor(value)) for value in values.values())
    assert values["total"] == pytest.approx(reference["total"], rel=0.05)  # bf16 forward, fp32 losses
    assert all(parameter.dtype == torch.float32 for parameter in parts.model.parameters())


def test_channels_last_runs_a_step(readers) -> None:
    runtime = resolve_runtime(RuntimeOptions(device="cpu", channels_last=True, workers=0))
    options = replace(OPTIONS, gan_power=0.1, gan_dims=4)
    parts = build(options, runtime)
    weight = parts.model.encoder.downscales[0].conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    values = train_step(parts, batches_for(readers, options), options, runtime)
    reference = train_step(build(options), batches_for(readers, options), options, CPU)
    assert values["total"] == pytest.approx(reference["total"], rel=1e-4)


@pytest.mark.skipif(os.environ.get("FACEFLOW_TEST_COMPILE") != "1",
                    reason="torch.compile's first CPU step compiles for about 2 minutes on 2 cores; "
                           "set FACEFLOW_TEST_COMPILE=1 to run this test")
def test_compiled_training_pass_runs_a_step(readers) -> None:
    if find_compiler() is None:
        pytest.skip("torch.compile needs a C++ compiler on the CPU and none was found (cc, gcc, g++, clang)")
    runtime = resolve_runtime(RuntimeOptions(device="cpu", compile=True, workers=0))
    config = ModelConfig(resolution=32, ae_dims=8, e_dims=4, d_dims=4, d_mask_dims=2)
    parts = build(OPTIONS, runtime, config)
    assert parts.training_pass is not parts.model and hasattr(parts.training_pass, "_orig_mod")
    values = train_step(parts, batches_for(readers, OPTIONS), OPTIONS, runtime)
    reference = train_step(build(OPTIONS, config=config), batches_for(readers, OPTIONS), OPTIONS, CPU)
    assert values["total"] == pytest.approx(reference["total"], rel=1e-4)
