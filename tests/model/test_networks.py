"""Tests for model/networks.py: shapes, the swap path, ONNX export and the ability to learn."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import cv2
import numpy as np
import onnxruntime
import pytest
import torch

from model.config import ARCHITECTURES, ArchitectureBase, ModelConfig
from model.losses import reconstruction_loss
from model.networks import (
    ARCHITECTURE_CLASSES,
    DFAutoencoder,
    LIAEAutoencoder,
    SwapAutoencoder,
    SwapModule,
    build_model,
    count_parameters,
)

TINY = ModelConfig(resolution=32, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=4)


def tiny_config(archi: str, resolution: int = 32) -> ModelConfig:
    return ModelConfig(archi=archi, resolution=resolution, ae_dims=16, e_dims=4, d_dims=4, d_mask_dims=2)


def record_output_shapes(modules: dict[str, torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """Register forward hooks that store each named module's output shape in the returned dict."""
    shapes: dict[str, tuple[int, ...]] = {}

    def make_hook(name: str):
        def store_shape(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            shapes[name] = tuple(output.shape)
        return store_shape

    for name, module in modules.items():
        module.register_forward_hook(make_hook(name))
    return shapes


@pytest.fixture(scope="module")
def real_faces(media_dir: Path) -> torch.Tensor:
    """Four real face crops at 32x32 as a (4, 3, 32, 32) tensor in [0, 1]."""
    paths = sorted((media_dir / "photos" / "tight_crops").glob("*.png"))[::10][:4]
    images = [cv2.resize(cv2.imread(str(path)), (32, 32), interpolation=cv2.INTER_AREA) for path in paths]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("resolution", [32, 48])
@pytest.mark.parametrize("side", ["src", "dst"])
def test_forward_shapes_and_range(resolution: int, side: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(resolution=resolution, ae_dims=16, e_dims=4, d_dims=4, d_mask_dims=2))
    face, mask = model(torch.rand(2, 3, resolution, resolution), side)
    assert face.shape == (2, 3, resolution, resolution)
    assert mask.shape == (2, 1, resolution, resolution)
    for output in (face, mask):
        assert output.dtype == torch.float32
        assert 0.0 <= float(output.min()) and float(output.max()) <= 1.0


def test_internal_shapes_follow_the_df_layout() -> None:
    model = build_model(TINY)
    images = torch.rand(3, 3, 32, 32)
    codes = model.encoder(images)
    assert codes.shape == (3, 8 * TINY.e_dims * 2 * 2)  # lowest = 32 // 16 = 2
    assert model.inter(codes).shape == (3, TINY.ae_dims, 4, 4)  # one upscale: lowest * 2
    assert model.inter.dense1.out_features == TINY.ae_dims


def test_swap_matches_the_two_decoders() -> None:
    torch.manual_seed(1)
    model = build_model(TINY).eval()
    images = torch.rand(2, 3, 32, 32)
    dst_mask, celeb_face, celeb_mask = model.swap(images)
    assert dst_mask.shape == (2, 1, 32, 32)
    assert celeb_face.shape == (2, 3, 32, 32)
    assert celeb_mask.shape == (2, 1, 32, 32)
    src_face, src_mask = model(images, "src")
    dst_face, expected_dst_mask = model(images, "dst")
    torch.testing.assert_close(celeb_face, src_face)
    torch.testing.assert_close(celeb_mask, src_mask)
    torch.testing.assert_close(dst_mask, expected_dst_mask)
    assert not torch.allclose(src_face, dst_face)  # two independent decoders


def test_bad_side_and_bad_shape_are_rejected() -> None:
    model = build_model(TINY)
    with pytest.raises(ValueError, match="'both'"):
        model(torch.rand(1, 3, 32, 32), "both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        model(torch.rand(1, 3, 64, 64), "src")


def test_count_parameters_counts_only_trainable() -> None:
    model = build_model(TINY)
    total = count_parameters(model)
    assert total == sum(parameter.numel() for parameter in model.parameters())
    encoder_count = sum(parameter.numel() for parameter in model.encoder.parameters())
    model.encoder.requires_grad_(False)
    assert count_parameters(model) == total - encoder_count
    # First encoder conv: 5x5 kernels from 3 to e_dims channels, plus biases.
    assert sum(p.numel() for p in model.encoder.downscales[0].parameters()) == 5 * 5 * 3 * 8 + 8


def test_reset_inter_changes_only_the_inter() -> None:
    model = build_model(TINY)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.reset_inter()
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("inter.") for name in changed)
    assert "inter.dense1.weight" in changed


@pytest.mark.parametrize("dynamo", [False, True])
def test_swap_exports_to_onnx_with_a_dynamic_batch(tmp_path: Path, dynamo: bool) -> None:
    torch.manual_seed(2)
    model = build_model(TINY).eval()
    path = tmp_path / "swap.onnx"
    shape_options = ({"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamo
                     else {"dynamic_axes": {"images": {0: "batch"}}})
    torch.onnx.export(SwapModule(model), (torch.rand(2, 3, 32, 32),), str(path), dynamo=dynamo,
                      input_names=["images"], output_names=["dst_mask", "celeb_face", "celeb_mask"], **shape_options)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.rand(3, 3, 32, 32)  # another batch size than the export's
    outputs = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = model.swap(images)
    assert [output.shape for output in outputs] == [(3, 1, 32, 32), (3, 3, 32, 32), (3, 1, 32, 32)]
    for output, reference in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(output, reference.numpy(), atol=1e-5)


def test_overfits_one_batch(real_faces: torch.Tensor) -> None:
    torch.manual_seed(3)
    model = build_model(TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    masks = torch.zeros(4, 1, 32, 32)
    masks[:, :, 6:26, 6:26] = 1.0
    totals = []
    for _ in range(60):
        optimizer.zero_grad()
        face, mask = model(real_faces, "src")
        loss = reconstruction_loss(face, real_faces, mask, masks, masked=False)["total"]
        loss.backward()
        optimizer.step()
        totals.append(float(loss.detach()))
    assert totals[-1] < 0.5 * totals[0], totals


# The DF model's state_dict keys, as checkpoints written before the other architectures hold them.
DF_STATE_KEYS = (
    [f"encoder.downscales.{index}.conv.{kind}" for index in range(4) for kind in ("weight", "bias")]
    + [f"inter.{layer}.{kind}" for layer in ("dense1", "dense2", "upscale.conv") for kind in ("weight", "bias")]
    + [f"decoder_{side}.{layer}.{kind}" for side in ("src", "dst") for layer in (
        *(f"face_upscales.{index}.conv" for index in range(3)),
        *(f"face_residuals.{index}.{conv}" for index in range(3) for conv in ("conv1", "conv2")),
        "face_out", *(f"mask_upscales.{index}.conv" for index in range(3)), "mask_out") for kind in ("weight", "bias")]
)


def test_plain_df_keeps_its_state_dict_keys_and_shapes() -> None:
    model = build_model(TINY)
    state = model.state_dict()
    assert sorted(state) == sorted(DF_STATE_KEYS)
    assert state["inter.dense1.weight"].shape == (32, 8 * 8 * 2 * 2)
    assert state["decoder_src.face_out.weight"].shape == (3, 16, 1, 1)
    assert state["decoder_dst.mask_out.weight"].shape == (1, 8, 1, 1)


def test_registry_covers_every_base_and_the_interface_is_abstract() -> None:
    assert set(ARCHITECTURE_CLASSES) == set(get_args(ArchitectureBase))
    assert isinstance(build_model(tiny_config("df-ud")), DFAutoencoder)
    assert isinstance(build_model(tiny_config("liae-t")), LIAEAutoencoder)
    with pytest.raises(TypeError, match="abstract"):
        SwapAutoencoder(TINY)  # type: ignore[abstract]


@pytest.mark.parametrize("archi", ARCHITECTURES)
def test_every_architecture_reconstructs_swaps_and_learns(archi: str) -> None:
    torch.manual_seed(4)
    config = tiny_config(archi)
    model = build_model(config)
    images = torch.rand(2, 3, 32, 32)
    outputs = {side: model(images, side) for side in ("src", "dst")}
    for face, mask in outputs.values():
        assert face.shape == (2, 3, 32, 32) and mask.shape == (2, 1, 32, 32)
        assert 0.0 <= float(torch.minimum(face.min(), mask.min())) and float(torch.maximum(face.max(), mask.max())) <= 1.0
    assert not torch.allclose(outputs["src"][0], outputs["dst"][0])  # the two identities paint differently
    reconstruction = model.reconstruct(model.encode(images), "dst")
    assert reconstruction.code.shape == (2, config.code_channels, config.code_resolution, config.code_resolution)
    with torch.no_grad():
        dst_mask, celeb_face, celeb_mask = model.swap(images)
    # Both architectures paint the swap exactly as they reconstruct src, and mask it as dst's own path does.
    torch.testing.assert_close(celeb_face, outputs["src"][0])
    torch.testing.assert_close(celeb_mask, outputs["src"][1])
    torch.testing.assert_close(dst_mask, outputs["dst"][1])
    total = sum(face.mean() + mask.mean() for face, mask in outputs.values())
    total.backward()
    for group, parameters in model.parameter_groups().items():
        assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in parameters), group


def test_double_resolution_runs_the_inter_and_decoders_at_half_size() -> None:
    shapes = {}
    for archi in ("df", "df-d", "liae-d"):
        model = build_model(tiny_config(archi, resolution=64))
        decoder = model.decoder_src if isinstance(model, DFAutoencoder) else model.decoder
        inter = model.inter if isinstance(model, DFAutoencoder) else model.inter_AB
        shapes[archi] = record_output_shapes({"encoder": model.encoder.downscales[-1], "inter": inter,
                                              "face": decoder.face_residuals[-1], "mask": decoder.mask_upscales[-1]})
        model(torch.rand(1, 3, 64, 64), "src")
    assert shapes["df"]["encoder"] == shapes["df-d"]["encoder"] == (1, 32, 4, 4)  # the encoder still sees R
    assert shapes["df"]["inter"][2:] == (8, 8) and shapes["df-d"]["inter"][2:] == (4, 4)
    assert shapes["df"]["face"][2:] == (64, 64) and shapes["df-d"]["face"][2:] == (32, 32)
    assert shapes["liae-d"]["face"][2:] == (32, 32) and shapes["liae-d"]["inter"] == (1, 32, 4, 4)
    # The mask branch takes one more upscale (to d_mask_dims channels) to reach R.
    assert shapes["df"]["mask"] == (1, 2 * 2, 64, 64) and shapes["df-d"]["mask"] == (1, 2, 64, 64)


def test_deeper_adds_an_encoder_downscale_and_a_decoder_stage() -> None:
    plain, deeper = build_model(tiny_config("df", 64)), build_model(tiny_config("df-t", 64))
    assert (len(plain.encoder.downscales), len(deeper.encoder.downscales)) == (4, 5)
    assert (len(plain.decoder_src.face_upscales), len(deeper.decoder_src.face_upscales)) == (3, 4)
    assert (len(plain.decoder_src.mask_upscales), len(deeper.decoder_src.mask_upscales)) == (3, 4)
    shapes = record_output_shapes({"encoder": deeper.encoder.last_residual, "inter": deeper.inter,
                                   "first": deeper.decoder_src.face_residuals[0]})
    deeper(torch.rand(1, 3, 64, 64), "src")
    assert shapes["encoder"] == (1, 32, 2, 2)  # 64 / 2**5
    assert shapes["inter"] == (1, 16, 4, 4)  # no upscale in the inter: 64 / 16
    assert shapes["first"] == (1, 32, 8, 8)


def test_pixel_norm_gives_encoder_vectors_unit_mean_square() -> None:
    torch.manual_seed(5)
    images = torch.rand(3, 3, 32, 32)
    normalised = build_model(tiny_config("liae-u")).encode(images)
    # mean(x^2) / (mean(x^2) + 1e-6) is 1 up to the epsilon's share of a small mean square.
    torch.testing.assert_close(normalised.pow(2).mean(dim=1), torch.ones(3), atol=5e-3, rtol=0)
    plain = build_model(tiny_config("liae")).encode(images)
    assert float(plain.pow(2).mean(dim=1).max()) < 0.5


def test_liae_swap_reads_inter_ab_only() -> None:
    torch.manual_seed(6)
    model = build_model(tiny_config("liae-ud")).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        dst_before, swap_before = model(images, "dst"), model.swap(images)
        for parameter in model.inter_B.parameters():
            parameter.zero_()
        dst_after, swap_after = model(images, "dst"), model.swap(images)
    assert not torch.allclose(dst_before[0], dst_after[0])  # the dst recon reads inter_B
    assert not torch.allclose(swap_before[0], swap_after[0])  # so does the swap's dst mask
    torch.testing.assert_close(swap_before[1:], swap_after[1:])  # the painted face and its mask do not


def test_liae_reset_inter_changes_both_inters_only() -> None:
    model = build_model(tiny_config("liae-ud"))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.reset_inter()
    changed = {name for name, value in model.state_dict().items() if not torch.equal(before[name], value)}
    assert {name.split(".")[0] for name in changed} == {"inter_AB", "inter_B"}
    assert {"inter_AB.dense1.weight", "inter_B.dense2.weight"} <= changed


@pytest.mark.parametrize("archi", ["df", "liae-udt"])
def test_parameter_groups_split_every_parameter_once(archi: str) -> None:
    model = build_model(tiny_config(archi))
    groups = model.parameter_groups()
    identities = [id(parameter) for parameters in groups.values() for parameter in parameters]
    assert len(identities) == len(set(identities)) == len(list(model.parameters()))
    assert all(groups.values())


@pytest.mark.parametrize("archi", ["df-ud", "liae-udt"])
def test_variants_export_to_onnx(tmp_path: Path, archi: str) -> None:
    torch.manual_seed(7)
    model = build_model(tiny_config(archi)).eval()
    path = tmp_path / "swap.onnx"
    torch.onnx.export(SwapModule(model), (torch.rand(2, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.rand(3, 3, 32, 32)
    outputs = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = model.swap(images)
    for output, reference in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(output, reference.numpy(), atol=1e-5)
