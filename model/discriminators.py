"""Discriminators for SAEHD-style adversarial terms.

CodeDiscriminator ("true face power"): reads the shared inter code of a face and tells src codes
from dst codes. Training the autoencoder to fool it pushes dst codes towards the src distribution,
so the src decoder paints a face closer to src when swapping.

UNetPatchDiscriminator (GAN): a U-Net that scores a face twice: one logit per patch of about
``patch_size`` pixels from its bottleneck, and one logit per pixel from its decoder, which sees the
whole image through the skip connections. Each encoder level is a 3x3 stride-2 convolution, so the
patch logits' receptive field is 2 ** (levels + 1) - 1 pixels; the level count is the one whose
receptive field is nearest ``patch_size``. (DeepFaceLab searches kernel sizes and strides to hit the
patch size exactly and adds residual blocks per level; this keeps one uniform level instead.)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional

from model.config import ModelConfig
from model.blocks import Upscale

DISCRIMINATOR_SLOPE = 0.2
CODE_DISCRIMINATOR_DIMS = 256  # DeepFaceLab's width for the true-face discriminator
MAX_CHANNEL_MULTIPLE = 8


class CodeDiscriminator(nn.Module):
    """Inter code -> logits that it came from a src face: (B, C, S, S) -> (B, 1, S', S').

    1 + S // 8 stride-2 3x3 convolutions with dims, 2*dims, 4*dims, ... (at most 8*dims) channels,
    then a 1x1 convolution to one logit per position; S' = ceil(S / 2 ** (1 + S // 8)).
    Average the loss over the positions.
    """

    def __init__(self, code_channels: int, code_resolution: int, dims: int = CODE_DISCRIMINATOR_DIMS) -> None:
        """Args:
            code_channels: Channels C of the codes it judges (``ModelConfig.code_channels``).
            code_resolution: Their side S (``ModelConfig.code_resolution``).
            dims: Channels of the first convolution.

        Raises:
            ValueError: A size is not a positive integer.
        """
        super().__init__()
        check_positive(code_channels=code_channels, code_resolution=code_resolution, dims=dims)
        self.code_channels = code_channels
        self.code_resolution = code_resolution
        levels = 1 + code_resolution // 8
        channels = [code_channels] + [dims * min(2 ** level, MAX_CHANNEL_MULTIPLE) for level in range(levels)]
        self.convs = nn.ModuleList(
            [nn.Conv2d(channels[level], channels[level + 1], kernel_size=3, stride=2, padding=1)
             for level in range(levels)]
        )
        self.out = nn.Conv2d(channels[-1], 1, kernel_size=1)
        self.output_resolution = code_resolution
        for _ in range(levels):
            self.output_resolution = math.ceil(self.output_resolution / 2)

    def forward(self, codes: Tensor) -> Tensor:
        features = codes
        for conv in self.convs:
            features = functional.leaky_relu(conv(features), DISCRIMINATOR_SLOPE)  # halves H and W
        return self.out(features)  # (B, 1, S', S')


class PatchLogits(NamedTuple):
    """What the patch discriminator says about (B, 3, R, R) images (raw logits, real = positive).

    Attributes:
        patches: (B, 1, R / 2**levels, R / 2**levels): one logit per patch, from the bottleneck.
        pixels: (B, 1, R, R): one logit per pixel, from the U-Net decoder.
    """

    patches: Tensor
    pixels: Tensor


def patch_receptive_field(levels: int) -> int:
    """Pixels seen by one patch logit after ``levels`` 3x3 stride-2 convolutions: 2 ** (levels + 1) - 1."""
    field, step = 1, 1
    for _ in range(levels):
        field += 2 * step  # a 3x3 kernel reaches one input step either side
        step *= 2
    return field


def choose_patch_levels(resolution: int, patch_size: int) -> int:
    """The level count whose receptive field is nearest ``patch_size`` (fewer levels on a tie),
    among those that leave a bottleneck grid of at least 2x2 and divide ``resolution`` exactly."""
    candidates = [levels for levels in range(1, resolution.bit_length())
                  if resolution % 2 ** levels == 0 and resolution // 2 ** levels >= 2]
    return min(candidates, key=lambda levels: abs(patch_receptive_field(levels) - patch_size))


class UNetPatchDiscriminator(nn.Module):
    """U-Net GAN discriminator: (B, 3, R, R) -> PatchLogits(patches, pixels).

    Attributes:
        levels: The number of stride-2 encoder levels.
        receptive_field: Pixels seen by one patch logit.
    """

    def __init__(self, resolution: int, patch_size: int, dims: int) -> None:
        """Args:
            resolution: Side R of the images it judges; even, at least 4.
            patch_size: Wanted side of the patch behind each patch logit, 3 to R.
            dims: Channels of the first level (later levels double, up to 8x).

        Raises:
            ValueError: A size is not a positive integer, or the patch does not fit the image.
        """
        super().__init__()
        check_positive(resolution=resolution, patch_size=patch_size, dims=dims)
        if resolution % 2 or resolution < 4:
            raise ValueError(f"patch discriminator resolution must be even and at least 4, got {resolution}")
        if not 3 <= patch_size <= resolution:
            raise ValueError(f"patch discriminator patch_size {patch_size} must be between 3 and the resolution "
                             f"{resolution}; DeepFaceLab's default is resolution // 8 = {max(3, resolution // 8)}")
        self.resolution = resolution
        self.levels = choose_patch_levels(resolution, patch_size)
        self.receptive_field = patch_receptive_field(self.levels)
        channels = [dims * min(2 ** level, MAX_CHANNEL_MULTIPLE) for level in range(self.levels + 1)]
        self.stem = nn.Conv2d(3, channels[0], kernel_size=1)
        self.downs = nn.ModuleList(
            [nn.Conv2d(channels[level], channels[level + 1], kernel_size=3, stride=2, padding=1)
             for level in range(self.levels)]
        )
        self.center = nn.Conv2d(channels[-1], channels[-1], kernel_size=1)
        self.center_out = nn.Conv2d(channels[-1], 1, kernel_size=1)
        # Going up, level i's upscale output is concatenated with the encoder's level i - 1 features.
        self.ups = nn.ModuleList([Upscale(channels[level + 1], channels[level]) for level in range(self.levels)])
        self.fuses = nn.ModuleList(
            [nn.Conv2d(channels[level] * 2, channels[level], kernel_size=3, padding=1) for level in range(self.levels)]
        )
        self.out = nn.Conv2d(channels[0], 1, kernel_size=1)

    def forward(self, images: Tensor) -> PatchLogits:
        features = functional.leaky_relu(self.stem(images), DISCRIMINATOR_SLOPE)  # (B, dims, R, R)
        skips = []
        for down in self.downs:
            skips.append(features)
            features = functional.leaky_relu(down(features), DISCRIMINATOR_SLOPE)  # halves H and W
        features = functional.leaky_relu(self.center(features), DISCRIMINATOR_SLOPE)
        patches = self.center_out(features)  # (B, 1, R / 2**levels, R / 2**levels)
        for level in reversed(range(self.levels)):
            upscaled = self.ups[level](features)  # doubles H and W, to the channels of skips[level]
            features = torch.cat([upscaled, skips[level]], dim=1)
            features = functional.leaky_relu(self.fuses[level](features), DISCRIMINATOR_SLOPE)
        return PatchLogits(patches=patches, pixels=self.out(features))  # pixels: (B, 1, R, R)


def check_positive(**values: int) -> None:
    """Raise ValueError naming the first value that is not a positive integer."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"discriminator {name} must be a positive integer, got {value!r}")


def build_code_discriminator(config: ModelConfig, dims: int = CODE_DISCRIMINATOR_DIMS) -> CodeDiscriminator:
    """A code discriminator sized for ``config``'s shared inter code (see ``Reconstruction.code``).

    Args:
        config: The autoencoder's hyperparameters.
        dims: Channels of its first convolution.

    Returns:
        A freshly initialised discriminator reading (B, code_channels, code_resolution, code_resolution).
    """
    return CodeDiscriminator(config.code_channels, config.code_resolution, dims)


def build_patch_discriminator(resolution: int, patch_size: int, dims: int) -> UNetPatchDiscriminator:
    """A U-Net patch discriminator for (B, 3, resolution, resolution) faces.

    Args:
        resolution: The model's resolution.
        patch_size: Wanted patch side (DeepFaceLab's gan_patch_size, by default resolution // 8).
        dims: Channels of the first level (DeepFaceLab's gan_dims, by default 16).

    Returns:
        A freshly initialised discriminator.

    Raises:
        ValueError: The sizes do not fit (see ``UNetPatchDiscriminator``).
    """
    return UNetPatchDiscriminator(resolution, patch_size, dims)
