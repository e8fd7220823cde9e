"""FLOPs of a training iteration and model FLOPs utilisation (MFU).

The count comes from torch's FlopCounterMode watching a real forward and backward pass of the
model's architecture, not from hand formulas, so it follows any change to the networks. It counts
matrix multiplications and convolutions (2 FLOPs per multiply-add, the convention of peak-FLOPs
figures); element-wise work (activations, losses, optimizer) is left out, as it is a few percent
of the total and bound by memory rather than arithmetic.

One training iteration = for each side, a forward pass of a batch through that side's path, then one
backward pass to every trainable parameter: roughly 3x the forward FLOPs (the backward computes a
gradient for the activations and one for the weights), less the input gradient of the first
convolution, which is not needed.

The pass runs on torch's "meta" device: a copy of the architecture with shapes but no data, so
counting the FLOPs of a 128 px SAEHD model takes milliseconds and touches neither the model's
weights nor its gradients.
"""

from __future__ import annotations

import logging
from typing import get_args

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.networks import Side, SwapAutoencoder, build_model

logger = logging.getLogger(__name__)


def count_training_flops(model: SwapAutoencoder, resolution: int, batch_size: int) -> int:
    """FLOPs of one training iteration of ``model``: both sides' forward passes and the backward pass.

    Args:
        model: The autoencoder; its config decides the architecture and which parameters are
            trainable (``requires_grad``) decides how much of the backward pass is counted.
        resolution: The side of the training images; must be ``model.config.resolution``.
        batch_size: Images per side per iteration.

    Returns:
        The FLOP count (2 per multiply-add) of convolutions and matrix multiplications.

    Raises:
        ValueError: ``resolution`` differs from the model's, or ``batch_size`` is not positive.
    """
    if resolution != model.config.resolution:
        raise ValueError(f"resolution {resolution} differs from the model's ({model.config.resolution}); "
                         "a model only runs at the resolution it was built for")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    with torch.device("meta"):
        shadow = build_model(model.config)  # same architecture, no storage
    trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    for name, parameter in shadow.named_parameters():
        parameter.requires_grad_(trainable[name])
    parameters = [parameter for parameter in shadow.parameters() if parameter.requires_grad]
    images = torch.empty(batch_size, 3, resolution, resolution, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        total = torch.zeros((), device="meta")
        for side in get_args(Side):
            face, mask = shadow(images, side)
            total = total + face.mean() + mask.mean()  # a stand-in loss: its own FLOPs are not counted
        if parameters:
            torch.autograd.grad(total, parameters)
    flops = int(counter.get_total_flops())
    logger.debug("%s at %d px, batch %d: %.3g FLOPs per iteration", model.config.archi, resolution, batch_size, flops)
    return flops


def model_flops_utilisation(flops_per_iteration: float, seconds_per_iteration: float, peak_flops: float) -> float:
    """The share of the hardware's peak arithmetic that training uses (MFU).

    Args:
        flops_per_iteration: From ``count_training_flops``.
        seconds_per_iteration: Measured wall time of one iteration.
        peak_flops: The device's peak FLOP/s for the data type trained in, e.g. about 9.9e14 for
            dense bf16 on an H100 SXM (vendor figure).

    Returns:
        flops_per_iteration / seconds_per_iteration / peak_flops, e.g. 0.35 for 35 %.

    Raises:
        ValueError: An argument is not positive.
    """
    for name, value in (("flops_per_iteration", flops_per_iteration),
                        ("seconds_per_iteration", seconds_per_iteration), ("peak_flops", peak_flops)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    return flops_per_iteration / seconds_per_iteration / peak_flops
