"""The hyperparameters of the face-swap autoencoder.

A ``ModelConfig`` is frozen and saved inside every checkpoint, so a checkpoint can rebuild the exact
model that wrote it without any other file. The pydantic config on the dataclass makes the lead's
params model reject misspelled keys in ``params.yaml``; ``from_dict`` does the same for plain dicts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import ConfigDict, with_config

Architecture = Literal["df"]

# The encoder halves the image four times, so the resolution must divide by 2**4.
RESOLUTION_MULTIPLE = 16


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class ModelConfig:
    """Shape of a DF-style autoencoder: one shared encoder and inter, one decoder per side.

    Attributes:
        archi: The architecture; "df" is a shared encoder + inter feeding a src and a dst decoder.
        resolution: Side of the square face crop the model sees, a multiple of 16.
        ae_dims: Width of the bottleneck vector and of the inter's output feature map.
        e_dims: Channels of the first encoder convolution (later ones use 2x, 4x, 8x).
        d_dims: Channel unit of the face decoders (upscales use 8x, 4x, 2x).
        d_mask_dims: Channel unit of the mask branch of each decoder.
    """

    archi: Architecture = "df"
    resolution: int = 128
    ae_dims: int = 256
    e_dims: int = 64
    d_dims: int = 64
    d_mask_dims: int = 22

    def __post_init__(self) -> None:
        if self.archi not in get_args(Architecture):
            raise ValueError(
                f"model archi {self.archi!r} is not supported; choose one of {list(get_args(Architecture))}"
            )
        for name in ("resolution", "ae_dims", "e_dims", "d_dims", "d_mask_dims"):
            value = getattr(self, name)
            # bool is an int subclass; a YAML "yes" must not become a width of 1.
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model {name} must be a positive integer, got {value!r}")
        if self.resolution % RESOLUTION_MULTIPLE != 0:
            lower = self.resolution - self.resolution % RESOLUTION_MULTIPLE
            suggestion = f"{lower} or {lower + RESOLUTION_MULTIPLE}" if lower > 0 else str(RESOLUTION_MULTIPLE)
            raise ValueError(
                f"model resolution {self.resolution} is not a multiple of {RESOLUTION_MULTIPLE} "
                f"(the encoder halves it four times); use e.g. {suggestion}"
            )

    @property
    def lowest_resolution(self) -> int:
        """Side of the encoder's output feature map: resolution // 16."""
        return self.resolution // RESOLUTION_MULTIPLE

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-able dict of field name -> value."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from a dict such as one read from a checkpoint's JSON.

        Args:
            data: Field name -> value; missing fields take their defaults.

        Returns:
            The validated config.

        Raises:
            ValueError: A key is not a field of ModelConfig, or a value is invalid.
        """
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a mapping of field -> value, got {type(data).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**data)
