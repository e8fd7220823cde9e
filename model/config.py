"""The hyperparameters of the face-swap autoencoder.

A ``ModelConfig`` is frozen and saved inside every checkpoint, so a checkpoint can rebuild the exact
model that wrote it without any other file. The pydantic config on the dataclass makes the lead's
params model reject misspelled keys in ``params.yaml``; ``from_dict`` does the same for plain dicts.

Architectures use DeepFaceLab's spelling: a base name, optionally followed by "-" and variant letters
written in the order "u", "d", "t" (e.g. "df", "liae-ud", "df-udt"). The order is fixed so that one
network has one spelling: a checkpoint's config is compared by value, and "df-du" would otherwise
differ from "df-ud" while meaning the same model.
    u  pixel-normalise the encoder's output vector.
    d  "double resolution": the inter and the decoders work at half the output size and the
       decoders end with a pixel shuffle; the resolution must then divide by 32.
    t  deeper: one more encoder downscale (plus two residual blocks) and one more decoder stage.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import ConfigDict, with_config

ArchitectureBase = Literal["df", "liae"]
ArchitectureVariant = Literal["u", "d", "t"]  # in the order they must be written
FaceType = Literal["half", "mid_full", "full", "whole_face", "head"]
PresetName = Literal["quick96", "saehd"]

# The encoder halves the image four times (five with "t", whose extra halving feeds a dense layer,
# so any size works); "d" makes the decoders stop one halving short, so the inter's grid is R / 32.
RESOLUTION_MULTIPLE = 16
DOUBLE_RESOLUTION_MULTIPLE = 32

ARCHITECTURES: tuple[str, ...] = tuple(
    base + ("-" + "".join(letters) if letters else "")
    for base in get_args(ArchitectureBase)
    for count in range(len(get_args(ArchitectureVariant)) + 1)
    for letters in itertools.combinations(get_args(ArchitectureVariant), count)
)


def parse_architecture(archi: Any) -> tuple[ArchitectureBase, str]:
    """Split an architecture name into its base and its variant letters.

    Args:
        archi: e.g. "liae-ud".

    Returns:
        (base, letters), e.g. ("liae", "ud"); letters is "" for a plain base.

    Raises:
        ValueError: ``archi`` is not one of ``ARCHITECTURES``; the message lists the valid forms.
    """
    if isinstance(archi, str) and archi in ARCHITECTURES:
        base, _, letters = archi.partition("-")
        return base, letters  # type: ignore[return-value]
    hint = ""
    if isinstance(archi, str) and "-" in archi:
        base, _, letters = archi.partition("-")
        ordered = "".join(letter for letter in get_args(ArchitectureVariant) if letter in letters)
        if base in get_args(ArchitectureBase) and sorted(ordered) == sorted(letters) and ordered:
            hint = f"; write the variant letters in the order u, d, t: {base}-{ordered}"
    raise ValueError(
        f"model archi {archi!r} is not valid{hint}. Use a base from {list(get_args(ArchitectureBase))}, "
        f"optionally followed by '-' and variant letters from {''.join(get_args(ArchitectureVariant))!r} in that "
        f"order, each at most once: one of {list(ARCHITECTURES)}"
    )


def config_from_dict(cls: type, data: Any, label: str) -> Any:
    """An instance of the config dataclass ``cls`` from a dict such as a checkpoint's JSON holds.

    Raises:
        ValueError: ``data`` is not a mapping, names a key ``cls`` lacks (``label`` names the config in
            the message) or holds an invalid value.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{label} must be a mapping of field -> value, got {type(data).__name__}")
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {label} key(s) {unknown}; valid keys are {sorted(known)}")
    return cls(**data)


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class ModelConfig:
    """Shape of a DF- or LIAE-style autoencoder.

    Attributes:
        archi: "df" (shared encoder + inter, one decoder per side) or "liae" (shared encoder,
            inter_AB and inter_B, one shared decoder), optionally with variant letters, e.g. "liae-ud".
        resolution: Side of the square face crop the model sees, a multiple of 16 (32 with "d").
        ae_dims: Width of the bottleneck vector and of the inter's output feature map (2x for LIAE).
        e_dims: Channels of the first encoder convolution (later ones use 2x, 4x, 8x).
        d_dims: Channel unit of the face decoders (upscales use 8x, 4x, 2x).
        d_mask_dims: Channel unit of the mask branch of each decoder.
        face_type: The face framing the model is trained on; the trainer crops it from the faceset.
    """

    archi: str = "df"
    resolution: int = 128
    ae_dims: int = 256
    e_dims: int = 64
    d_dims: int = 64
    d_mask_dims: int = 22
    face_type: FaceType = "whole_face"

    def __post_init__(self) -> None:
        parse_architecture(self.archi)
        for name in ("resolution", "ae_dims", "e_dims", "d_dims", "d_mask_dims"):
            value = getattr(self, name)
            # bool is an int subclass; a YAML "yes" must not become a width of 1.
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model {name} must be a positive integer, got {value!r}")
        if self.face_type not in get_args(FaceType):
            raise ValueError(f"model face_type {self.face_type!r} is not valid; choose one of {list(get_args(FaceType))}")
        multiple = self.resolution_multiple
        if self.resolution % multiple != 0:
            lower = self.resolution - self.resolution % multiple
            suggestion = f"{lower} or {lower + multiple}" if lower > 0 else str(multiple)
            reason = (f"archi {self.archi!r} has 'd', whose inter works at resolution / 32" if self.double_resolution
                      else "the encoder halves it four times")
            raise ValueError(
                f"model resolution {self.resolution} is not a multiple of {multiple} ({reason}); use e.g. {suggestion}"
            )

    @property
    def base(self) -> ArchitectureBase:
        """The architecture without its variant letters: "df" or "liae"."""
        return parse_architecture(self.archi)[0]

    @property
    def pixel_norm(self) -> bool:
        """Variant "u": the encoder's output vector is pixel-normalised."""
        return "u" in parse_architecture(self.archi)[1]

    @property
    def double_resolution(self) -> bool:
        """Variant "d": inter and decoders run at half size; the decoders end with a pixel shuffle."""
        return "d" in parse_architecture(self.archi)[1]

    @property
    def deeper(self) -> bool:
        """Variant "t": an extra encoder downscale and an extra decoder stage."""
        return "t" in parse_architecture(self.archi)[1]

    @property
    def resolution_multiple(self) -> int:
        """What the resolution must divide by: 16, or 32 with "d"."""
        return DOUBLE_RESOLUTION_MULTIPLE if self.double_resolution else RESOLUTION_MULTIPLE

    @property
    def lowest_resolution(self) -> int:
        """Side of the inter's dense grid: resolution // 16, or // 32 with "d"."""
        return self.resolution // self.resolution_multiple

    @property
    def encoder_downscales(self) -> int:
        """Stride-2 convolutions in the encoder: 4, or 5 with "t"."""
        return 5 if self.deeper else 4

    @property
    def encoder_resolution(self) -> int:
        """Side of the encoder's last feature map (each 5x5 stride-2 convolution rounds up)."""
        side = self.resolution
        for _ in range(self.encoder_downscales):
            side = math.ceil(side / 2)
        return side

    @property
    def code_channels(self) -> int:
        """Channels of one inter's output: ae_dims for DF, 2 * ae_dims for LIAE (as in DeepFaceLab)."""
        return self.ae_dims * (2 if self.base == "liae" else 1)

    @property
    def code_resolution(self) -> int:
        """Side of one inter's output: lowest_resolution * 2, or lowest_resolution with "t" (no upscale)."""
        return self.lowest_resolution * (1 if self.deeper else 2)

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
        return config_from_dict(cls, data, "model config")

    @classmethod
    def preset(cls, name: PresetName, **overrides: Any) -> ModelConfig:
        """Return one of DeepFaceLab's named model settings, optionally with some fields changed.

        Args:
            name: A key of ``PRESETS``: "quick96" (DFL's Quick96) or "saehd" (SAEHD's defaults).
            overrides: Field name -> value to change, e.g. ``resolution=192``.

        Returns:
            The validated config.

        Raises:
            ValueError: ``name`` is not a preset, an override names no field, or a value is invalid.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {list(get_args(PresetName))}")
        return cls.from_dict({**PRESETS[name].to_dict(), **overrides})


PRESETS: dict[PresetName, ModelConfig] = {
    "quick96": ModelConfig(archi="df-ud", resolution=96, ae_dims=128, e_dims=64, d_dims=64, d_mask_dims=16,
                           face_type="full"),
    "saehd": ModelConfig(archi="liae-ud", resolution=128, ae_dims=256, e_dims=64, d_dims=64, d_mask_dims=22,
                         face_type="full"),
}
assert set(PRESETS) == set(get_args(PresetName)), "PRESETS must cover every PresetName"
