"""Tests for model/config.py."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import get_args

import pydantic
import pytest

from model.config import ARCHITECTURES, PRESETS, ModelConfig, PresetName, parse_architecture


def test_defaults_are_the_df_128_model() -> None:
    config = ModelConfig()
    assert (config.archi, config.resolution, config.ae_dims, config.e_dims, config.d_dims, config.d_mask_dims) == (
        "df", 128, 256, 64, 64, 22)
    assert config.face_type == "whole_face"
    assert config.lowest_resolution == 8
    assert (config.base, config.pixel_norm, config.double_resolution, config.deeper) == ("df", False, False, False)


def test_dict_round_trip_through_json() -> None:
    config = ModelConfig(resolution=48, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=4)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["resolution"] == 48
    assert ModelConfig.from_dict(data) == config


def test_from_dict_fills_missing_keys_with_defaults() -> None:
    assert ModelConfig.from_dict({"resolution": 64}) == ModelConfig(resolution=64)


def test_from_dict_rejects_unknown_key_by_name() -> None:
    with pytest.raises(ValueError, match="ae_dim"):
        ModelConfig.from_dict({"ae_dim": 128})


@pytest.mark.parametrize("resolution", [100, 8, 130])
def test_resolution_must_be_a_multiple_of_16(resolution: int) -> None:
    with pytest.raises(ValueError, match=rf"resolution {resolution} is not a multiple of 16"):
        ModelConfig(resolution=resolution)


@pytest.mark.parametrize("field", ["resolution", "ae_dims", "e_dims", "d_dims", "d_mask_dims"])
def test_dimensions_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: 0})


def test_every_architecture_spelling_is_listed_once() -> None:
    assert len(ARCHITECTURES) == len(set(ARCHITECTURES)) == 16
    assert {"df", "liae", "df-ud", "liae-ud", "df-udt", "liae-t"} <= set(ARCHITECTURES)


@pytest.mark.parametrize(
    ("archi", "base", "pixel_norm", "double_resolution", "deeper"),
    [("df", "df", False, False, False), ("liae", "liae", False, False, False), ("df-u", "df", True, False, False),
     ("liae-ud", "liae", True, True, False), ("df-dt", "df", False, True, True), ("liae-udt", "liae", True, True, True),
     ("liae-t", "liae", False, False, True)],
)
def test_architecture_letters_set_the_variant_flags(
    archi: str, base: str, pixel_norm: bool, double_resolution: bool, deeper: bool
) -> None:
    config = ModelConfig(archi=archi, resolution=64)
    assert (config.base, config.pixel_norm, config.double_resolution, config.deeper) == (
        base, pixel_norm, double_resolution, deeper)
    assert parse_architecture(archi)[0] == base


@pytest.mark.parametrize("archi", ["liae-x", "dfx", "df-", "df-uu", "DF", "liae_ud", "-ud", "df-udtu", ""])
def test_malformed_architecture_is_rejected_with_the_valid_forms(archi: str) -> None:
    with pytest.raises(ValueError, match=rf"model archi {re.escape(repr(archi))} is not valid.*'liae-udt'"):
        ModelConfig(archi=archi)


@pytest.mark.parametrize(("archi", "canonical"), [("df-du", "df-ud"), ("liae-tu", "liae-ut"), ("df-tdu", "df-udt")])
def test_variant_letters_must_be_in_udt_order(archi: str, canonical: str) -> None:
    with pytest.raises(ValueError, match=f"in the order u, d, t: {canonical}"):
        ModelConfig(archi=archi)


@pytest.mark.parametrize(("archi", "without_d"), [("df-d", "df"), ("liae-ud", "liae-u"), ("df-udt", "df-ut")])
def test_double_resolution_needs_a_multiple_of_32(archi: str, without_d: str) -> None:
    with pytest.raises(ValueError, match=rf"resolution 48 is not a multiple of 32 \(archi '{archi}' has 'd'.*32 or 64"):
        ModelConfig(archi=archi, resolution=48)
    assert ModelConfig(archi=archi, resolution=64).lowest_resolution == 2
    assert ModelConfig(archi=without_d, resolution=48).lowest_resolution == 3  # 16 is enough without d


def test_derived_shapes_follow_the_variants() -> None:
    plain = ModelConfig(archi="df", resolution=96, ae_dims=32)
    assert (plain.encoder_resolution, plain.lowest_resolution, plain.code_resolution, plain.code_channels) == (6, 6, 12, 32)
    deeper = ModelConfig(archi="liae-t", resolution=96, ae_dims=32)
    # Five halvings of 96 round up to 3; the inter keeps its 6x6 grid and does not upscale.
    assert (deeper.encoder_resolution, deeper.lowest_resolution, deeper.code_resolution, deeper.code_channels) == (
        3, 6, 6, 64)
    double = ModelConfig(archi="df-ud", resolution=96)
    assert (double.encoder_resolution, double.lowest_resolution, double.code_resolution) == (6, 3, 6)


def test_face_type_is_validated() -> None:
    assert ModelConfig(face_type="head").face_type == "head"
    with pytest.raises(ValueError, match="face_type 'wf'.*'whole_face'"):
        ModelConfig(face_type="wf")  # type: ignore[arg-type]


def test_presets_hold_deepfacelab_settings() -> None:
    quick = ModelConfig.preset("quick96")
    assert quick == ModelConfig(archi="df-ud", resolution=96, ae_dims=128, e_dims=64, d_dims=64, d_mask_dims=16,
                                face_type="full")
    assert quick.resolution % 32 == 0 and quick.lowest_resolution == 3
    assert ModelConfig.preset("saehd") == ModelConfig(archi="liae-ud", resolution=128, ae_dims=256, e_dims=64,
                                                      d_dims=64, d_mask_dims=22, face_type="full")
    assert set(PRESETS) == set(get_args(PresetName))


def test_preset_overrides_are_validated() -> None:
    assert ModelConfig.preset("saehd", resolution=192).resolution == 192
    with pytest.raises(ValueError, match="not a multiple of 32"):
        ModelConfig.preset("saehd", resolution=144)  # liae-ud needs 32
    with pytest.raises(ValueError, match="resolutoin"):
        ModelConfig.preset("saehd", resolutoin=192)
    with pytest.raises(ValueError, match="'h64'.*'quick96'"):
        ModelConfig.preset("h64")  # type: ignore[arg-type]


def test_old_checkpoint_configs_still_load() -> None:
    old = {"archi": "df", "resolution": 64, "ae_dims": 32, "e_dims": 8, "d_dims": 8, "d_mask_dims": 4}
    config = ModelConfig.from_dict(old)
    assert config.face_type == "whole_face" and config.to_dict() == {**old, "face_type": "whole_face"}


def test_config_is_frozen_and_hashable() -> None:
    config = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.resolution = 64  # type: ignore[misc]
    assert hash(config) == hash(ModelConfig())


def test_pydantic_validation_forbids_misspelled_keys() -> None:
    adapter = pydantic.TypeAdapter(ModelConfig)
    assert adapter.validate_python({"resolution": 64, "ae_dims": 128}) == ModelConfig(resolution=64, ae_dims=128)
    with pytest.raises(pydantic.ValidationError, match="resolutoin"):
        adapter.validate_python({"resolutoin": 64})
    assert adapter.validate_python({"archi": "liae-ud"}).double_resolution
    with pytest.raises(pydantic.ValidationError, match="liae-x"):
        adapter.validate_python({"archi": "liae-x"})
    with pytest.raises(pydantic.ValidationError, match="face_type"):
        adapter.validate_python({"face_type": "wide"})
    with pytest.raises(pydantic.ValidationError, match="multiple of 16"):
        adapter.validate_python({"resolution": 100})
