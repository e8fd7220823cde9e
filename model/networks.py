"""DeepFaceLab's DF and LIAE face-swap autoencoders, with the "u", "d" and "t" variants.

DF: one shared encoder and inter, one decoder per identity. Both identities go through the same
encoder and inter, so the bottleneck learns an identity-free description of pose, expression and
lighting; each decoder learns to paint its own identity from it. Swap = encode dst, decode with src's.

LIAE: one shared encoder, two inters and ONE shared decoder. inter_AB sees both identities, inter_B
only dst faces; the decoder reads the two codes side by side on channels:
    src recon  decoder(cat(AB(src), AB(src)))
    dst recon  decoder(cat(B(dst),  AB(dst)))
    swap       decoder(cat(AB(dst), AB(dst)))   (the dst mask comes from the dst recon path)
so inter_B carries what makes dst look like dst, and dropping it paints the src identity.

Shapes, with R = config.resolution, L = config.lowest_resolution (R / 16, or R / 32 with "d"),
E = config.encoder_resolution (R / 16, ceil(R / 32) with "t"), C = config.code_channels (ae_dims for
DF, 2 * ae_dims for LIAE as in DeepFaceLab) and S = config.code_resolution (2L, or L with "t"):
    encoder  (B, 3, R, R) -> (B, 8*e_dims * E * E), pixel-normalised with "u"
    inter    (B, 8*e_dims * E * E) -> (B, ae_dims) -> (B, C, L, L) -> (B, C, S, S) (no upscale with "t")
    decoder  (B, C, S, S) for DF, (B, 2C, S, S) for LIAE -> face (B, 3, R, R), mask (B, 1, R, R)
The decoders upscale 3 times (4 with "t") to R, or to R / 2 with "d", where the face ends with a 3x3
convolution to 12 channels + pixel shuffle and the mask with one more upscale: most convolutions then
run on a quarter of the pixels. (DeepFaceLab ends "d" faces with four separate convolutions whose
outputs it interleaves; one convolution to 12 channels is the same family of functions.)
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from model.blocks import Decoder, Encoder, Inter
from model.config import ArchitectureBase, ModelConfig

logger = logging.getLogger(__name__)

Side = Literal["src", "dst"]
ParameterGroup = Literal["encoder", "inter", "decoder"]

class Reconstruction(NamedTuple):
    """One side's reconstruction and the shared code it was painted from.

    Attributes:
        face: (B, 3, R, R) in [0, 1].
        mask: (B, 1, R, R) in [0, 1].
        code: (B, C, S, S) with C = config.code_channels, S = config.code_resolution: the output of
            the inter both identities share (DF's inter, LIAE's inter_AB), which a code
            discriminator may judge so that it carries no identity.
    """

    face: Tensor
    mask: Tensor
    code: Tensor


class SwapAutoencoder(nn.Module, ABC):
    """The interface every face-swap architecture implements; the shared encoder lives here.

    Subclasses implement the hooks ``reconstruct``, ``swap_features``, ``inter_modules`` and
    ``decoder_modules``; ``forward``, ``swap``, ``reset_inter`` and ``parameter_groups`` are built on them.

    Attributes:
        config: The hyperparameters the model was built from (saved with every checkpoint).
        encoder: The shared encoder.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)

    def build_inter(self) -> Inter:
        """A fresh inter for this config: (B, F) -> (B, code_channels, S, S), F = 8 * e_dims * E * E."""
        config = self.config
        return Inter(config.e_dims * 8 * config.encoder_resolution ** 2, config.ae_dims, config.code_channels,
                     config.lowest_resolution, upscale=not config.deeper)

    def encode(self, images: Tensor) -> Tensor:
        """Run the shared encoder: (B, 3, R, R) -> features (B, F)."""
        return self.encoder(images)

    @abstractmethod
    def reconstruct(self, features: Tensor, side: Side) -> Reconstruction:
        """Paint encoder ``features`` (B, F) as ``side``'s own faces; ``side`` is checked."""

    @abstractmethod
    def swap_features(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encoder ``features`` of dst faces -> dst_mask, celeb_face, celeb_mask (see ``swap``)."""

    @abstractmethod
    def inter_modules(self) -> list[Inter]:
        """The inters, which ``reset_inter`` re-initialises."""

    @abstractmethod
    def decoder_modules(self) -> list[nn.Module]:
        """The decoders."""

    def forward(self, images: Tensor, side: Side) -> tuple[Tensor, Tensor]:
        """Reconstruct faces as one side's identity.

        Args:
            images: (B, 3, R, R) BGR faces in [0, 1].
            side: "src" or "dst": which identity paints the output.

        Returns:
            face (B, 3, R, R) and mask (B, 1, R, R), both in [0, 1].

        Raises:
            ValueError: ``side`` is not "src" or "dst", or ``images`` has the wrong shape.
        """
        self.check_images(images)
        face, mask, _ = self.reconstruct(self.encode(images), side)
        return face, mask

    def swap(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Turn dst faces into the src identity (the merge and export path).

        Args:
            images: (B, 3, R, R) BGR dst faces in [0, 1].

        Returns:
            dst_mask (B, 1, R, R) of the dst face as the dst path paints it, celeb_face (B, 3, R, R)
            and celeb_mask (B, 1, R, R) painted as the src identity; all in [0, 1].

        Raises:
            ValueError: ``images`` has the wrong shape.
        """
        self.check_images(images)
        return self.swap_features(self.encode(images))  # encoded once, decoded twice

    def reset_inter(self) -> None:
        """Re-initialise the inter layers (e.g. to retrain the bottleneck for a new face pair)."""
        for inter in self.inter_modules():
            inter.reset_parameters()

    def parameter_groups(self) -> dict[ParameterGroup, list[nn.Parameter]]:
        """The parameters by role, e.g. to freeze the encoder or give the decoders their own learning rate."""
        return {
            "encoder": list(self.encoder.parameters()),
            "inter": [parameter for inter in self.inter_modules() for parameter in inter.parameters()],
            "decoder": [parameter for decoder in self.decoder_modules() for parameter in decoder.parameters()],
        }

    def check_images(self, images: Tensor) -> None:
        """Raise ValueError unless ``images`` is (B, 3, R, R) for this model's R."""
        if torch.jit.is_tracing():
            return  # the TorchScript exporter sees shapes as traced tensors; checking them would bake in constants
        resolution = self.config.resolution
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, resolution, resolution):
            raise ValueError(
                f"expected images of shape (B, 3, {resolution}, {resolution}), got {tuple(images.shape)}"
            )


def check_side(side: str) -> None:
    """Raise ValueError unless ``side`` is "src" or "dst"."""
    if side not in ("src", "dst"):
        raise ValueError(f"side must be 'src' or 'dst', got {side!r}")


class DFAutoencoder(SwapAutoencoder):
    """DF: shared encoder + ``inter``, ``decoder_src`` and ``decoder_dst`` (inputs (B, ae_dims, S, S))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.inter = self.build_inter()
        self.decoder_src = Decoder(config.code_channels, config)
        self.decoder_dst = Decoder(config.code_channels, config)

    def reconstruct(self, features: Tensor, side: Side) -> Reconstruction:
        check_side(side)
        code = self.inter(features)  # (B, F) -> (B, ae_dims, S, S)
        decoder = self.decoder_src if side == "src" else self.decoder_dst
        return Reconstruction(*decoder(code), code)

    def swap_features(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        code = self.inter(features)
        _, dst_mask = self.decoder_dst(code)
        celeb_face, celeb_mask = self.decoder_src(code)
        return dst_mask, celeb_face, celeb_mask

    def inter_modules(self) -> list[Inter]:
        return [self.inter]

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder_src, self.decoder_dst]


class LIAEAutoencoder(SwapAutoencoder):
    """LIAE: shared encoder, ``inter_AB`` and ``inter_B`` (2*ae_dims channels each), one ``decoder``.

    The decoder reads (B, 4*ae_dims, S, S): two inter codes concatenated on channels.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.inter_AB = self.build_inter()
        self.inter_B = self.build_inter()
        self.decoder = Decoder(config.code_channels * 2, config)

    def reconstruct(self, features: Tensor, side: Side) -> Reconstruction:
        check_side(side)
        shared = self.inter_AB(features)  # (B, F) -> (B, 2*ae_dims, S, S)
        # src: (AB, AB); dst: (B, AB), so only dst faces train inter_B.
        identity = shared if side == "src" else self.inter_B(features)
        return Reconstruction(*self.decoder(torch.cat([identity, shared], dim=1)), shared)

    def swap_features(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shared = self.inter_AB(features)
        _, dst_mask = self.decoder(torch.cat([self.inter_B(features), shared], dim=1))
        celeb_face, celeb_mask = self.decoder(torch.cat([shared, shared], dim=1))
        return dst_mask, celeb_face, celeb_mask

    def inter_modules(self) -> list[Inter]:
        return [self.inter_AB, self.inter_B]

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder]


class SwapModule(nn.Module):
    """Wraps a model so that ``forward`` is ``swap``, as exporters and tracers expect."""

    def __init__(self, model: SwapAutoencoder) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # a fresh wrapper would otherwise claim training mode

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.swap(images)


ARCHITECTURE_CLASSES: dict[ArchitectureBase, type[SwapAutoencoder]] = {
    "df": DFAutoencoder,
    "liae": LIAEAutoencoder,
}


def build_model(config: ModelConfig) -> SwapAutoencoder:
    """Build a freshly initialised autoencoder (initial weights come from torch's global RNG).

    Args:
        config: The hyperparameters; ``config.base`` picks the class from ``ARCHITECTURE_CLASSES``.

    Returns:
        The model, on torch's default device (the CPU unless set otherwise), in training mode.
    """
    model = ARCHITECTURE_CLASSES[config.base](config)
    logger.debug("built %s model with %d parameters", config.archi, count_parameters(model))
    return model


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters of ``model``."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
