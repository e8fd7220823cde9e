"""The DF face-swap autoencoder: one shared encoder and inter, one decoder per identity.

Both identities go through the same encoder and inter, so the bottleneck learns an identity-free
description of pose, expression and lighting; each decoder learns to paint its own identity from it.
Swapping a face is then: encode a dst face, decode it with the src decoder.

Shapes, with R = config.resolution and L = R // 16:
    encoder  (B, 3, R, R) -> (B, 8*e_dims * L * L)
    inter    (B, 8*e_dims * L * L) -> (B, ae_dims, 2L, 2L)
    decoder  (B, ae_dims, 2L, 2L) -> face (B, 3, R, R), mask (B, 1, R, R)
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional

from model.config import ModelConfig

logger = logging.getLogger(__name__)

Side = Literal["src", "dst"]

LEAKY_SLOPE = 0.1
RESIDUAL_SLOPE = 0.2


class Downscale(nn.Module):
    """5x5 stride-2 convolution + leaky ReLU: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

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


class Encoder(nn.Module):
    """Four downscales then flatten: (B, 3, R, R) -> (B, 8*e_dims * L * L)."""

    def __init__(self, e_dims: int) -> None:
        super().__init__()
        self.downscales = nn.Sequential(
            Downscale(3, e_dims),
            Downscale(e_dims, e_dims * 2),
            Downscale(e_dims * 2, e_dims * 4),
            Downscale(e_dims * 4, e_dims * 8),
        )

    def forward(self, images: Tensor) -> Tensor:
        # (B, 3, R, R) -> (B, 8e, L, L) -> (B, 8e*L*L)
        return torch.flatten(self.downscales(images), start_dim=1)


class Inter(nn.Module):
    """Bottleneck: (B, 8*e_dims * L * L) -> (B, ae_dims) -> (B, ae_dims, L, L) -> (B, ae_dims, 2L, 2L)."""

    def __init__(self, in_features: int, ae_dims: int, lowest: int) -> None:
        super().__init__()
        self.ae_dims = ae_dims
        self.lowest = lowest
        self.dense1 = nn.Linear(in_features, ae_dims)
        self.dense2 = nn.Linear(ae_dims, lowest * lowest * ae_dims)
        self.upscale = Upscale(ae_dims, ae_dims)

    def forward(self, codes: Tensor) -> Tensor:
        codes = self.dense2(self.dense1(codes))  # (B, F) -> (B, ae_dims) -> (B, L*L*ae_dims)
        # -1 instead of B keeps the batch dimension symbolic in an ONNX export.
        features = codes.reshape(-1, self.ae_dims, self.lowest, self.lowest)
        return self.upscale(features)

    def reset_parameters(self) -> None:
        """Draw fresh initial weights for every layer of the inter (uses torch's global RNG)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.reset_parameters()


class Decoder(nn.Module):
    """One identity's painter: (B, ae_dims, R/8, R/8) -> face (B, 3, R, R), mask (B, 1, R, R), in [0, 1]."""

    def __init__(self, in_channels: int, d_dims: int, d_mask_dims: int) -> None:
        super().__init__()
        self.face_upscales = nn.ModuleList(
            [Upscale(in_channels, d_dims * 8), Upscale(d_dims * 8, d_dims * 4), Upscale(d_dims * 4, d_dims * 2)]
        )
        self.face_residuals = nn.ModuleList(
            [ResidualBlock(d_dims * 8), ResidualBlock(d_dims * 4), ResidualBlock(d_dims * 2)]
        )
        self.face_out = nn.Conv2d(d_dims * 2, 3, kernel_size=1)
        self.mask_upscales = nn.Sequential(
            Upscale(in_channels, d_mask_dims * 8),
            Upscale(d_mask_dims * 8, d_mask_dims * 4),
            Upscale(d_mask_dims * 4, d_mask_dims * 2),
        )
        self.mask_out = nn.Conv2d(d_mask_dims * 2, 1, kernel_size=1)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        face = features
        for upscale, residual in zip(self.face_upscales, self.face_residuals, strict=True):
            face = residual(upscale(face))  # (B, C, H, W) -> (B, C', 2H, 2W)
        face = torch.sigmoid(self.face_out(face))  # (B, 2*d_dims, R, R) -> (B, 3, R, R)
        mask = torch.sigmoid(self.mask_out(self.mask_upscales(features)))  # -> (B, 1, R, R)
        return face, mask


class SwapAutoencoder(nn.Module):
    """DF autoencoder: shared encoder + inter, ``decoder_src`` and ``decoder_dst``.

    Attributes:
        config: The hyperparameters the model was built from (saved with every checkpoint).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        lowest = config.lowest_resolution
        self.encoder = Encoder(config.e_dims)
        self.inter = Inter(config.e_dims * 8 * lowest * lowest, config.ae_dims, lowest)
        self.decoder_src = Decoder(config.ae_dims, config.d_dims, config.d_mask_dims)
        self.decoder_dst = Decoder(config.ae_dims, config.d_dims, config.d_mask_dims)

    def encode(self, images: Tensor) -> Tensor:
        """Run the shared encoder and inter: (B, 3, R, R) -> (B, ae_dims, R/8, R/8)."""
        return self.inter(self.encoder(images))

    def forward(self, images: Tensor, side: Side) -> tuple[Tensor, Tensor]:
        """Reconstruct faces through one side's decoder.

        Args:
            images: (B, 3, R, R) BGR faces in [0, 1].
            side: "src" or "dst": which decoder paints the output.

        Returns:
            face (B, 3, R, R) and mask (B, 1, R, R), both in [0, 1].

        Raises:
            ValueError: ``side`` is not "src" or "dst", or ``images`` has the wrong shape.
        """
        self.check_images(images)
        if side == "src":
            decoder = self.decoder_src
        elif side == "dst":
            decoder = self.decoder_dst
        else:
            raise ValueError(f"side must be 'src' or 'dst', got {side!r}")
        return decoder(self.encode(images))

    def swap(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Turn dst faces into the src identity (the merge and export path).

        Args:
            images: (B, 3, R, R) BGR dst faces in [0, 1].

        Returns:
            dst_mask (B, 1, R, R) from the dst decoder, celeb_face (B, 3, R, R) and
            celeb_mask (B, 1, R, R) from the src decoder; all in [0, 1].
        """
        self.check_images(images)
        features = self.encode(images)  # encoded once, decoded twice
        _, dst_mask = self.decoder_dst(features)
        celeb_face, celeb_mask = self.decoder_src(features)
        return dst_mask, celeb_face, celeb_mask

    def reset_inter(self) -> None:
        """Re-initialise the inter layers (e.g. to retrain the bottleneck for a new face pair)."""
        self.inter.reset_parameters()

    def check_images(self, images: Tensor) -> None:
        """Raise ValueError unless ``images`` is (B, 3, R, R) for this model's R."""
        if torch.jit.is_tracing():
            return  # the TorchScript exporter sees shapes as traced tensors; checking them would bake in constants
        resolution = self.config.resolution
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, resolution, resolution):
            raise ValueError(
                f"expected images of shape (B, 3, {resolution}, {resolution}), got {tuple(images.shape)}"
            )


class SwapModule(nn.Module):
    """Wraps a model so that ``forward`` is ``swap``, as exporters and tracers expect."""

    def __init__(self, model: SwapAutoencoder) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # a fresh wrapper would otherwise claim training mode

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.swap(images)


def build_model(config: ModelConfig) -> SwapAutoencoder:
    """Build a freshly initialised autoencoder (initial weights come from torch's global RNG).

    Args:
        config: The hyperparameters.

    Returns:
        The model, on the CPU, in training mode.

    Raises:
        ValueError: ``config.archi`` is not a supported architecture.
    """
    if config.archi != "df":
        raise ValueError(f"model archi {config.archi!r} is not implemented; use 'df'")
    model = SwapAutoencoder(config)
    logger.debug("built %s model with %d parameters", config.archi, count_parameters(model))
    return model


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters of ``model``."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
