"""Tests for model/optimizers.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from model.checkpoint import join_optimizer_state, split_optimizer_state
from model.optimizers import (
    DROPOUT_STEP_KEY,
    OPTIMIZER_CHOICES,
    OPTIMIZERS,
    AdaBelief,
    OptimizerError,
    build_optimizer,
    clip_gradients,
)


def reference_adabelief(parameter: np.ndarray, gradients: list[np.ndarray], lr: float, betas=(0.9, 0.999),
                        eps: float = 1e-16) -> np.ndarray:
    """The paper's algorithm in float64 numpy, step by step."""
    beta1, beta2 = betas
    mean, belief = np.zeros_like(parameter), np.zeros_like(parameter)
    for step, gradient in enumerate(gradients, start=1):
        mean = beta1 * mean + (1 - beta1) * gradient
        belief = beta2 * belief + (1 - beta2) * (gradient - mean) ** 2 + eps
        mean_hat, belief_hat = mean / (1 - beta1**step), belief / (1 - beta2**step)
        parameter = parameter - lr * mean_hat / (np.sqrt(belief_hat) + eps)
    return parameter


def step_with_gradient(optimizer: torch.optim.Optimizer, parameter: torch.Tensor, gradient: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    parameter.grad = gradient.clone()
    optimizer.step()


def test_adabelief_first_step_matches_the_hand_computation() -> None:
    parameter = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    gradient = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    optimizer = AdaBelief([parameter], lr=0.01)
    step_with_gradient(optimizer, parameter, gradient)
    # m_1 = 0.1 g, s_1 = 0.001 (0.9 g)^2 + eps; bias-corrected: m = g, s = 0.81 g^2 (+1e-13), so each
    # element moves lr / 0.9 against its gradient's sign.
    expected = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64) - 0.01 / 0.9 * torch.sign(gradient)
    torch.testing.assert_close(parameter.detach(), expected, rtol=0, atol=1e-9)
    state = optimizer.state[parameter]
    assert state["step"] == 1
    torch.testing.assert_close(state["exp_avg"], 0.1 * gradient)


def test_adabelief_matches_the_reference_over_several_steps() -> None:
    rng = np.random.default_rng(0)
    start = rng.normal(size=6)
    gradients = [rng.normal(size=6) for _ in range(7)]
    parameter = torch.tensor(start, requires_grad=True)
    optimizer = AdaBelief([parameter], lr=0.05, betas=(0.8, 0.99), eps=1e-12)
    for gradient in gradients:
        step_with_gradient(optimizer, parameter, torch.from_numpy(gradient))
    expected = reference_adabelief(start, gradients, lr=0.05, betas=(0.8, 0.99), eps=1e-12)
    np.testing.assert_allclose(parameter.detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_adabelief_fits_a_linear_regression() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, 8, generator=generator)
    true_weights = torch.randn(8, 1, generator=generator)
    targets = inputs @ true_weights + 0.01 * torch.randn(256, 1, generator=generator)
    weights = torch.zeros(8, 1, requires_grad=True)
    optimizer = AdaBelief([weights], lr=0.05)
    first_loss = None
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.mean((inputs @ weights - targets) ** 2)
        first_loss = first_loss if first_loss is not None else float(loss.detach())
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 1e-3 * first_loss
    torch.testing.assert_close(weights.detach(), true_weights, atol=0.01, rtol=0)


def test_adabelief_decoupled_weight_decay_shrinks_weights_without_gradient_signal() -> None:
    parameter = torch.full((4,), 2.0, requires_grad=True)
    optimizer = AdaBelief([parameter], lr=0.1, weight_decay=0.5)
    step_with_gradient(optimizer, parameter, torch.zeros(4))
    torch.testing.assert_close(parameter.detach(), torch.full((4,), 2.0 * (1 - 0.1 * 0.5)))


def test_adabelief_rejects_bad_settings() -> None:
    parameter = torch.zeros(2, requires_grad=True)
    with pytest.raises(OptimizerError, match="betas"):
        AdaBelief([parameter], betas=(0.9, 1.0))
    with pytest.raises(OptimizerError, match="learning rate"):
        AdaBelief([parameter], lr=0.0)


def test_registry_matches_the_choices() -> None:
    assert set(OPTIMIZERS) == set(OPTIMIZER_CHOICES) == {"adabelief", "adam", "rmsprop"}


@pytest.mark.parametrize("name", OPTIMIZER_CHOICES)
def test_lr_dropout_keeps_about_the_kept_fraction_and_reproduces(name: str) -> None:
    gradient = torch.randn(20_000, generator=torch.Generator().manual_seed(1))

    def one_step(seed: int) -> torch.Tensor:
        parameter = torch.zeros(20_000, requires_grad=True)
        optimizer = build_optimizer(name, [parameter], learning_rate=0.01, lr_dropout=0.3, seed=seed)
        step_with_gradient(optimizer, parameter, gradient)
        assert optimizer.param_groups[0][DROPOUT_STEP_KEY] == 1
        return parameter.detach().clone()

    first, again, other = one_step(5), one_step(5), one_step(6)
    kept = float((first != 0).float().mean())
    assert kept == pytest.approx(0.7, abs=0.015)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first != 0, other != 0)
    plain = torch.zeros(20_000, requires_grad=True)
    step_with_gradient(build_optimizer(name, [plain], learning_rate=0.01), plain, gradient)
    # The kept elements move exactly as without dropout; the dropped ones do not move at all.
    torch.testing.assert_close(first[first != 0], plain.detach()[first != 0], rtol=0, atol=0)
    assert float((plain != 0).float().mean()) == 1.0


@pytest.mark.parametrize("name", OPTIMIZER_CHOICES)
def test_state_round_trips_through_the_checkpoint_format(name: str) -> None:
    generator = torch.Generator().manual_seed(2)
    gradients = [torch.randn(3, 5, generator=generator) for _ in range(5)]
    start = torch.randn(3, 5, generator=generator)

    parameter = start.clone().requires_grad_(True)
    optimizer = build_optimizer(name, [parameter], learning_rate=0.01, lr_dropout=0.5, clip_grad=1.0, seed=3)
    for gradient in gradients[:3]:
        step_with_gradient(optimizer, parameter, gradient)

    tensors, saved = split_optimizer_state(optimizer.state_dict())
    assert all(isinstance(value, torch.Tensor) for value in tensors.values())
    stored_tensors = load_safetensors(save_safetensors(tensors))
    stored_json = json.loads(json.dumps(saved))  # fails on anything that is not a plain number/list/string
    assert stored_json["param_groups"][0][DROPOUT_STEP_KEY] == 3

    resumed_parameter = parameter.detach().clone().requires_grad_(True)
    resumed = build_optimizer(name, [resumed_parameter], learning_rate=0.01, lr_dropout=0.5, clip_grad=1.0, seed=3)
    resumed.load_state_dict(join_optimizer_state(stored_tensors, stored_json))
    for gradient in gradients[3:]:
        step_with_gradient(optimizer, parameter, gradient)
        step_with_gradient(resumed, resumed_parameter, gradient)
    torch.testing.assert_close(resumed_parameter.detach(), parameter.detach(), rtol=0, atol=0)
    assert not torch.equal(parameter.detach(), start)


def test_clip_gradients_limits_the_global_norm() -> None:
    first = torch.zeros(3, requires_grad=True)
    second = torch.zeros(4, requires_grad=True)
    first.grad = torch.tensor([3.0, 0.0, 0.0])
    second.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])  # global norm 5
    unused = torch.zeros(2, requires_grad=True)
    assert float(clip_gradients([first, second, unused], 0.0)) == pytest.approx(5.0)
    assert float(first.grad[0]) == 3.0  # off: untouched
    assert float(clip_gradients([first, second, unused], 1.0)) == pytest.approx(5.0)
    norm = math.sqrt(float(first.grad.square().sum() + second.grad.square().sum()))
    assert norm == pytest.approx(1.0, rel=1e-5)
    assert float(first.grad[0]) / float(second.grad[1]) == pytest.approx(0.75)  # direction kept
    assert float(clip_gradients([first, second], 10.0)) == pytest.approx(1.0, rel=1e-5)  # under: unchanged
    with pytest.raises(OptimizerError, match="max_norm"):
        clip_gradients([first], -1.0)


def test_build_optimizer_clips_before_stepping() -> None:
    parameter = torch.zeros(4, requires_grad=True)
    optimizer = build_optimizer("adabelief", [parameter], learning_rate=0.01, clip_grad=0.5)
    step_with_gradient(optimizer, parameter, torch.full((4,), 10.0))
    assert float(parameter.grad.norm()) == pytest.approx(0.5, rel=1e-5)


def test_build_optimizer_rejects_bad_options() -> None:
    parameter = torch.zeros(2, requires_grad=True)
    with pytest.raises(OptimizerError, match=r"'sgd'.*adabelief, adam, rmsprop"):
        build_optimizer("sgd", [parameter], 0.01)  # type: ignore[arg-type]
    with pytest.raises(OptimizerError, match="lr_dropout"):
        build_optimizer("adam", [parameter], 0.01, lr_dropout=1.0)
    with pytest.raises(OptimizerError, match="clip_grad"):
        build_optimizer("adam", [parameter], 0.01, clip_grad=-1.0)
    with pytest.raises(OptimizerError, match="learning_rate"):
        build_optimizer("adam", [parameter], 0.0)
