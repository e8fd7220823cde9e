"""Tests for model/flops.py: counts measured on real passes scale as the architecture says they must."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model.config import ModelConfig
from model.flops import count_training_flops, model_flops_utilisation
from model.networks import build_model


def tiny_model(archi: str = "df", resolution: int = 32) -> torch.nn.Module:
    return build_model(ModelConfig(archi=archi, resolution=resolution, ae_dims=16, e_dims=4, d_dims=4, d_mask_dims=2))


def count_forward_flops(model: torch.nn.Module, side: str, batch_size: int) -> int:
    resolution = model.config.resolution
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(batch_size, 3, resolution, resolution), side)
    return counter.get_total_flops()


@pytest.mark.parametrize("archi", ["df", "liae-ud", "df-udt"])
def test_training_costs_about_three_forward_passes_per_side(archi: str) -> None:
    model = tiny_model(archi)
    forward = count_forward_flops(model, "src", 2) + count_forward_flops(model, "dst", 2)
    training = count_training_flops(model, 32, 2)
    # Backward = 2x forward, less the first convolution's unneeded input gradient.
    assert 2.7 * forward < training <= 3 * forward


def test_flops_grow_fourfold_when_the_resolution_doubles() -> None:
    ratio = count_training_flops(tiny_model("liae-ud", 64), 64, 2) / count_training_flops(tiny_model("liae-ud", 32), 32, 2)
    assert 3.8 < ratio < 4.2


def test_flops_are_linear_in_the_batch_size() -> None:
    model = tiny_model()
    assert count_training_flops(model, 32, 6) == 3 * count_training_flops(model, 32, 2)


def test_double_resolution_is_cheaper_and_frozen_parts_cost_less() -> None:
    assert count_training_flops(tiny_model("df-d", 64), 64, 1) < 0.6 * count_training_flops(tiny_model("df", 64), 64, 1)
    model = tiny_model()
    full = count_training_flops(model, 32, 1)
    model.encoder.requires_grad_(False)
    assert count_training_flops(model, 32, 1) < full


def test_counting_leaves_the_model_untouched() -> None:
    model = tiny_model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert count_training_flops(model, 32, 1) > 0
    assert all(parameter.grad is None for parameter in model.parameters())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu"


def test_bad_arguments_are_rejected() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="resolution 64 differs from the model's \\(32\\)"):
        count_training_flops(model, 64, 1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        count_training_flops(model, 32, 0)


def test_model_flops_utilisation() -> None:
    assert model_flops_utilisation(2e12, 0.5, 1e13) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="seconds_per_iteration must be positive, got 0"):
        model_flops_utilisation(1e12, 0, 1e13)
