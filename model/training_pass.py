"""One training forward pass: the autoencoder and its optional discriminators, called once per step.

A training step needs each side's reconstruction through its own decoder, and for the optional
SAEHD terms more: the swap (dst faces painted by the src decoder) for the style losses, the code
discriminator's verdict on the src codes for "true face", and the patch discriminator's verdict on
the src reconstructions for the GAN. ``TrainingPass.forward`` computes all of them in one call, so
the module can be wrapped in DistributedDataParallel, which forbids two forward calls sharing
parameters before one backward. The losses are computed from its outputs by the trainer.

Both sides go through the shared encoder as one batch (one call instead of two; the encoder treats
each face on its own, so the features are those of two calls).

The discriminators are trained on detached outputs with their own optimizers; the trainer calls
them directly for that (``code_discriminator``, ``patch_discriminator``). Under DDP they would be
wrapped on their own.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from model.discriminators import CodeDiscriminator, PatchLogits, UNetPatchDiscriminator
from model.networks import Reconstruction, SwapAutoencoder


class TrainingOutputs(NamedTuple):
    """What one training forward pass produced.

    Attributes:
        src: src faces reconstructed by the src path: face (B, 3, R, R), mask (B, 1, R, R), code.
        dst: dst faces reconstructed by the dst path.
        swap: dst faces painted as src (the src path on dst features): the face the style losses
            compare to the dst target; None unless asked for.
        src_code_logits: The code discriminator's logits for the src codes (B, 1, S', S'); None
            without a code discriminator.
        src_patch_logits: The patch discriminator's logits for the (masked) src reconstructions;
            None without a patch discriminator.
    """

    src: Reconstruction
    dst: Reconstruction
    swap: Reconstruction | None
    src_code_logits: Tensor | None
    src_patch_logits: PatchLogits | None


class TrainingPass(nn.Module):
    """The autoencoder and the discriminators a stage trains, with a single forward for the generator.

    Attributes:
        model: The swap autoencoder.
        code_discriminator: Judges shared codes ("true face"), or None.
        patch_discriminator: Judges faces (GAN), or None.
    """

    def __init__(self, model: SwapAutoencoder, code_discriminator: CodeDiscriminator | None = None,
                 patch_discriminator: UNetPatchDiscriminator | None = None) -> None:
        super().__init__()
        self.model = model
        self.code_discriminator = code_discriminator
        self.patch_discriminator = patch_discriminator

    def forward(self, src_inputs: Tensor, dst_inputs: Tensor, need_swap: bool,
                src_gan_weights: Tensor | None = None) -> TrainingOutputs:
        """Reconstruct both sides (and the swap when asked) and let the discriminators judge the src side.

        Args:
            src_inputs: (B, 3, R, R) src faces in [0, 1] (augmented, warped).
            dst_inputs: (B', 3, R, R) dst faces in [0, 1].
            need_swap: Also paint the dst faces as src (for the style losses).
            src_gan_weights: Optional (B, 1, R, R) weights the src reconstructions are multiplied by
                before the patch discriminator sees them (masked training: the softened target
                mask, so the background is not judged); None judges the whole crops.

        Returns:
            The reconstructions, the swap and the discriminators' logits (see ``TrainingOutputs``).

        Raises:
            ValueError: An input is not (B, 3, R, R) for the model's R.
        """
        self.model.check_images(src_inputs)
        self.model.check_images(dst_inputs)
        features = self.model.encode(torch.cat([src_inputs, dst_inputs]))  # (B + B', F)
        src_features, dst_features = features.split([src_inputs.shape[0], dst_inputs.shape[0]])
        src = self.model.reconstruct(src_features, "src")
        dst = self.model.reconstruct(dst_features, "dst")
        swap = self.model.reconstruct(dst_features, "src") if need_swap else None
        code_logits = self.code_discriminator(src.code) if self.code_discriminator is not None else None
        patch_logits = None
        if self.patch_discriminator is not None:
            judged = src.face if src_gan_weights is None else src.face * src_gan_weights
            patch_logits = self.patch_discriminator(judged)
        return TrainingOutputs(src, dst, swap, code_logits, patch_logits)
