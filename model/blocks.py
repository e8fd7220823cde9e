"""The layers DeepFaceLab's autoencoders are made of: encoder, inter (bottleneck) and decoder, and their blocks.

Shapes use the names of ``model.networks``: R the resolution, E the encoder's output resolution, L
the inter's lowest resolution, C the code channels.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.nn import functional

from model.config import ModelConfig

LEAKY_SLOPE = 0.1
RESIDUAL_SLOPE = 0.2
PIXEL_NORM_EPSILON = 1e-6


class Downscale(nn.Module):
    """5x5 stride-2 convolution + leaky ReLU: (B, C_in, H, W) -> (B, C_out, ceil(H/2), ceil(W/2))."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=5, stride=2, padding=2)

    def forward(self, features: Tensor) -> Tensor:
        return functional.leaky_relu(self.conv(features), LEAKY_SLOPE)


class Upscale(nn.Module):
    """3x3 convolution to 4x channels + pixel shuffle: (B, C_in, H, W) -> (B, C_out, 2H, 2W).

    Pixel shuffle upsamples without the checkerboard artefacts of transposed convolutions and
    exports to ONNX as DepthToSpace.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels * 4, kernel_size=3, padding=1)

    def forward(self, features: Tensor) -> Tensor:
        features = functional.leaky_relu(self.conv(features), LEAKY_SLOPE)
        return functional.pixel_shuffle(features, 2)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection; keeps (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, features: Tensor) -> Tensor:
        residual = functional.leaky_relu(self.conv1(features), RESIDUAL_SLOPE)
        residual = self.conv2(residual)
        return functional.leaky_relu(features + residual, RESIDUAL_SLOPE)


def normalize_pixels(codes: Tensor) -> Tensor:
    """Scale each vector to unit root-mean-square: (B, F) -> (B, F), x / sqrt(mean(x^2) + 1e-6)."""
    return codes * torch.rsqrt(codes.pow(2).mean(dim=1, keepdim=True) + PIXEL_NORM_EPSILON)


class Encoder(nn.Module):
    """Downscales then flatten: (B, 3, R, R) -> (B, 8*e_dims * E * E).

    Channels e, 2e, 4e, 8e. With "t" (deeper) a fifth downscale keeps 8e channels, and a residual
    block follows the first and the last downscale, as in DeepFaceLab. With "u" the flattened
    vector is pixel-normalised, which keeps the bottleneck's input scale steady during training.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e_dims = config.e_dims
        channels = [3, e_dims, e_dims * 2, e_dims * 4, e_dims * 8] + ([e_dims * 8] if config.deeper else [])
        self.downscales = nn.Sequential(*(Downscale(*pair) for pair in itertools.pairwise(channels)))
        # Identity holds no weights, so the plain encoder's state_dict keys stay as they were.
        self.first_residual = ResidualBlock(e_dims) if config.deeper else nn.Identity()
        self.last_residual = ResidualBlock(e_dims * 8) if config.deeper else nn.Identity()
        self.pixel_norm = config.pixel_norm

    def forward(self, images: Tensor) -> Tensor:
        features = self.first_residual(self.downscales[0](images))  # (B, 3, R, R) -> (B, e, R/2, R/2)
        for downscale in self.downscales[1:]:
            features = downscale(features)
        features = self.last_residual(features)  # (B, 8e, E, E)
        codes = torch.flatten(features, start_dim=1)  # (B, 8e*E*E)
        return normalize_pixels(codes) if self.pixel_norm else codes


class Inter(nn.Module):
    """Bottleneck: (B, 8*e_dims * E * E) -> (B, ae_dims) -> (B, C, L, L) -> (B, C, 2L, 2L).

    Without ``upscale`` (the "t" variant, whose decoders have one more stage) the output stays (B, C, L, L).
    """

    def __init__(self, in_features: int, ae_dims: int, out_channels: int, lowest: int, upscale: bool = True) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.lowest = lowest
        self.dense1 = nn.Linear(in_features, ae_dims)
        self.dense2 = nn.Linear(ae_dims, lowest * lowest * out_channels)
        self.upscale = Upscale(out_channels, out_channels) if upscale else nn.Identity()

    def forward(self, codes: Tensor) -> Tensor:
        codes = self.dense2(self.dense1(codes))  # (B, F) -> (B, ae_dims) -> (B, L*L*C)
        # -1 instead of B keeps the batch dimension symbolic in an ONNX export.
        features = codes.reshape(-1, self.out_channels, self.lowest, self.lowest)
        return self.upscale(features)

    def reset_parameters(self) -> None:
        """Draw fresh initial weights for every layer of the inter (uses torch's global RNG)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.reset_parameters()


def stage_channels(unit: int, deeper: bool) -> list[int]:
    """Output channels of a decoder's upscale stages: 8, 4, 2 units (8, 8, 4, 2 with "t")."""
    return ([unit * 8] if deeper else []) + [unit * 8, unit * 4, unit * 2]


class Decoder(nn.Module):
    """One painter: (B, C_in, H, H) -> face (B, 3, R, R), mask (B, 1, R, R), in [0, 1].

    Face stages (upscale + residual block) have 8d, 4d, 2d channels (8d, 8d, 4d, 2d with "t");
    the mask branch has the same stages at d_mask_dims without residuals, plus one more upscale
    to d_mask_dims with "d". H = R / 8 (R / 16 with "t" or "d", R / 32 with both).
    """

    def __init__(self, in_channels: int, config: ModelConfig) -> None:
        super().__init__()
        face_channels = [in_channels, *stage_channels(config.d_dims, config.deeper)]
        mask_channels = [in_channels, *stage_channels(config.d_mask_dims, config.deeper)]
        mask_channels += [config.d_mask_dims] if config.double_resolution else []
        self.face_upscales = nn.ModuleList([Upscale(*pair) for pair in itertools.pairwise(face_channels)])
        self.face_residuals = nn.ModuleList([ResidualBlock(channels) for channels in face_channels[1:]])
        self.double_resolution = config.double_resolution
        # "d": (B, 2d, R/2, R/2) -> (B, 12, R/2, R/2), pixel-shuffled to (B, 3, R, R) in forward.
        self.face_out = (nn.Conv2d(config.d_dims * 2, 3 * 4, kernel_size=3, padding=1) if config.double_resolution
                         else nn.Conv2d(config.d_dims * 2, 3, kernel_size=1))
        self.mask_upscales = nn.Sequential(*(Upscale(*pair) for pair in itertools.pairwise(mask_channels)))
        self.mask_out = nn.Conv2d(mask_channels[-1], 1, kernel_size=1)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        face = features
        for upscale, residual in zip(self.face_upscales, self.face_residuals, strict=True):
            face = residual(upscale(face))  # (B, C, H, W) -> (B, C', 2H, 2W)
        face = self.face_out(face)  # -> (B, 3, R, R), or (B, 12, R/2, R/2) with "d"
        if self.double_resolution:
            face = functional.pixel_shuffle(face, 2)
        mask = self.mask_out(self.mask_upscales(features))  # -> (B, 1, R, R)
        return torch.sigmoid(face), torch.sigmoid(mask)
