"""Tests for model/config.py."""

from __future__ import annotations

import dataclasses
import json

import pydantic
import pytest

from model.config import ModelConfig


def test_defaults_are_the_df_128_model() -> None:
    config = ModelConfig()
    assert (config.archi, config.resolution, config.ae_dims, config.e_dims, config.d_dims, config.d_mask_dims) == (
        "df", 128, 256, 64, 64, 22)
    assert config.lowest_resolution == 8


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


def test_unknown_architecture_is_rejected() -> None:
    with pytest.raises(ValueError, match="'liae'"):
        ModelConfig(archi="liae")  # type: ignore[arg-type]


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
    with pytest.raises(pydantic.ValidationError):
        adapter.validate_python({"archi": "liae"})
    with pytest.raises(pydantic.ValidationError, match="multiple of 16"):
        adapter.validate_python({"resolution": 100})
