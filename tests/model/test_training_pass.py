"""Tests for model/training_pass.py: one forward call gives what every loss term needs."""

from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.discriminators import build_code_discriminator, build_patch_discriminator
from model.networks import build_model
from model.training_pass import TrainingPass

TINY = ModelConfig(resolution=32, ae_dims=16, e_dims=4, d_dims=4, d_mask_dims=2)


@pytest.mark.parametrize("archi", ["df", "liae-ud"])
def test_one_forward_matches_the_models_own_paths(archi: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(**{**TINY.to_dict(), "archi": archi})
    model = build_model(config).eval()
    training_pass = TrainingPass(model)
    src, dst = torch.rand(3, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        outputs = training_pass(src, dst, need_swap=True)
        src_face, src_mask = model(src, "src")
        dst_face, dst_mask = model(dst, "dst")
        _, celeb_face, celeb_mask = model.swap(dst)
    # One encoder call over both sides gives the faces of separate calls (up to float rounding).
    for got, expected in ((outputs.src.face, src_face), (outputs.src.mask, src_mask), (outputs.dst.face, dst_face),
                          (outputs.dst.mask, dst_mask), (outputs.swap.face, celeb_face), (outputs.swap.mask, celeb_mask)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert outputs.src.code.shape == (3, config.code_channels, config.code_resolution, config.code_resolution)
    assert outputs.src_code_logits is None and outputs.src_patch_logits is None
    with torch.no_grad():
        assert training_pass(src, dst, need_swap=False).swap is None


def test_discriminators_judge_the_src_side_and_get_gradients() -> None:
    torch.manual_seed(0)
    model = build_model(TINY)
    code_discriminator = build_code_discriminator(TINY, dims=8)
    patch_discriminator = build_patch_discriminator(32, 4, 8)
    training_pass = TrainingPass(model, code_discriminator, patch_discriminator)
    assert {name.split(".")[0] for name, _ in training_pass.named_parameters()} == {
        "model", "code_discriminator", "patch_discriminator"}
    src, dst = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    weights = torch.zeros(2, 1, 32, 32)
    outputs = training_pass(src, dst, need_swap=False, src_gan_weights=weights)
    assert outputs.src_code_logits.shape[:2] == (2, 1)
    assert outputs.src_patch_logits.pixels.shape == (2, 1, 32, 32)
    # Zero weights hide the faces: the patch discriminator sees black images, whatever the model painted.
    with torch.no_grad():
        black = patch_discriminator(torch.zeros(2, 3, 32, 32))
    torch.testing.assert_close(outputs.src_patch_logits.pixels, black.pixels)
    (outputs.src_code_logits.mean() + outputs.src.face.mean()).backward()
    assert model.encoder.downscales[0].conv.weight.grad is not None
    assert code_discriminator.out.weight.grad is not None


def test_wrong_input_shapes_are_named() -> None:
    training_pass = TrainingPass(build_model(TINY))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 32, 32\)"):
        training_pass(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 64, 64), need_swap=False)
