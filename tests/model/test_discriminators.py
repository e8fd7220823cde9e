"""Tests for model/discriminators.py: shapes, receptive fields, gradients and argument checks."""

from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.discriminators import (
    CodeDiscriminator,
    UNetPatchDiscriminator,
    build_code_discriminator,
    build_patch_discriminator,
    choose_patch_levels,
    patch_receptive_field,
)
from model.networks import build_model


@pytest.mark.parametrize("archi", ["df", "liae-ud", "df-t", "liae-udt"])
def test_code_discriminator_reads_the_models_shared_code(archi: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(archi=archi, resolution=64, ae_dims=16, e_dims=4, d_dims=4, d_mask_dims=2)
    model = build_model(config)
    discriminator = build_code_discriminator(config, dims=8)
    code = model.reconstruct(model.encode(torch.rand(2, 3, 64, 64)), "dst").code
    logits = discriminator(code)
    size = discriminator.output_resolution
    assert logits.shape == (2, 1, size, size)
    assert size == -(-config.code_resolution // 2 ** (1 + config.code_resolution // 8))
    logits.mean().backward()  # the adversarial term reaches the encoder through the code
    assert model.encoder.downscales[0].conv.weight.grad is not None


def test_code_discriminator_downscales_more_for_larger_codes() -> None:
    small, large = CodeDiscriminator(32, 8, dims=4), CodeDiscriminator(32, 16, dims=4)
    assert (len(small.convs), len(large.convs)) == (2, 3)  # 1 + S // 8
    assert [conv.out_channels for conv in large.convs] == [4, 8, 16]
    assert large(torch.rand(3, 32, 16, 16)).shape == (3, 1, 2, 2)


@pytest.mark.parametrize(("patch_size", "levels", "field"), [(16, 3, 15), (32, 4, 31), (4, 1, 3), (12, 3, 15), (10, 2, 7)])
def test_patch_levels_match_the_patch_size(patch_size: int, levels: int, field: int) -> None:
    assert choose_patch_levels(128, patch_size) == levels
    assert patch_receptive_field(levels) == field


def test_patch_levels_leave_a_grid_of_at_least_two() -> None:
    assert choose_patch_levels(32, 32) == 4  # 5 levels would leave 1x1
    assert choose_patch_levels(48, 40) == 4  # 48 divides by 16 but not by 32


@pytest.mark.parametrize(("resolution", "patch_size"), [(64, 8), (32, 16), (48, 6)])
def test_patch_discriminator_shapes_and_gradients(resolution: int, patch_size: int) -> None:
    torch.manual_seed(1)
    discriminator = build_patch_discriminator(resolution, patch_size, dims=4)
    images = torch.rand(2, 3, resolution, resolution, requires_grad=True)
    patches, pixels = discriminator(images)
    grid = resolution // 2 ** discriminator.levels
    assert patches.shape == (2, 1, grid, grid)
    assert pixels.shape == (2, 1, resolution, resolution)
    (patches.mean() + pixels.mean()).backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0
    assert all(parameter.grad is not None for parameter in discriminator.parameters())


def test_a_patch_logit_sees_only_its_receptive_field() -> None:
    torch.manual_seed(2)
    discriminator = UNetPatchDiscriminator(64, 8, dims=4).eval()  # 2 levels: 7-pixel patches every 4 pixels
    assert (discriminator.levels, discriminator.receptive_field) == (2, 7)
    images = torch.rand(1, 3, 64, 64)

    def patch_logits_change(row: int, column: int) -> torch.Tensor:
        changed = images.clone()
        changed[0, :, row, column] += 1.0
        with torch.no_grad():
            return (discriminator(changed).patches != discriminator(images).patches)[0, 0]

    # Patch (2, 2) is centred on pixel (8, 8) and spans pixels 5..11.
    assert patch_logits_change(11, 5)[2, 2] and patch_logits_change(8, 8)[2, 2]
    assert not patch_logits_change(12, 8)[2, 2] and not patch_logits_change(8, 4)[2, 2]
    # Patches are centred every 4 px and reach 3 px either side: (8, 8) lies in one, (6, 6) in 2 x 2.
    assert int(patch_logits_change(8, 8).sum()) == 1 and int(patch_logits_change(6, 6).sum()) == 4


@pytest.mark.parametrize(
    ("arguments", "message"),
    [((64, 2, 4), "patch_size 2 must be between 3"), ((64, 65, 4), "between 3 and the resolution 64"),
     ((63, 8, 4), "even and at least 4"), ((64, 8, 0), "dims must be a positive integer"),
     ((64, 8.0, 4), "patch_size must be a positive integer")],
)
def test_patch_discriminator_rejects_bad_sizes(arguments: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_patch_discriminator(*arguments)


def test_code_discriminator_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="code_resolution must be a positive integer, got 0"):
        CodeDiscriminator(16, 0)
