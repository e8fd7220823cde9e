"""One training step: SAEHD's losses and the updates of the model and of its discriminators.

Per step: one forward pass of ``model.training_pass.TrainingPass`` (both sides, the swap when a
style loss needs it, the discriminators' verdicts on the src side), the generator losses from its
outputs, one optimizer step of the autoencoder; then, on the detached outputs, one step of each
discriminator with its own optimizer (DeepFaceLab's alternating updates). With several data-parallel
processes the forward module is wrapped in DistributedDataParallel and the discriminators' gradients
are averaged before their steps, so every process takes the same step.

Generator losses, by side (each side's "<side>_total" is the sum of its terms, "total" of both):
    <side>_dssim, <side>_mse, <side>_mask   reconstruction (model.losses.reconstruction_loss)
    <side>_eyes_mouth                        300 * L1 in the eyes/mouth masks (eyes_mouth_priority)
    src_true_face                            the code discriminator's term (true_face_power)
    src_face_style, src_background_style     the swap against the dst faces (face/bg_style_power)
    src_gan                                  the patch discriminator's term on patches and pixels (gan_power)
The style, true-face and GAN terms train the src path, so they count on the src side, as in
DeepFaceLab. The discriminators' own losses are reported as "code_discriminator" and
"patch_discriminator"; they are not part of "total".
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.checkpoint import CheckpointError, NetworkState
from model.config import ModelConfig
from model.discriminators import build_code_discriminator, build_patch_discriminator
from model.losses import (
    background_style_loss,
    discriminator_gan_loss,
    face_style_loss,
    generator_gan_loss,
    reconstruction_loss,
    soften_mask,
    true_face_loss,
)
from model.networks import SwapAutoencoder
from model.optimizers import build_optimizer
from model.training_pass import TrainingOutputs, TrainingPass
from tasks.collapse import set_learning_rate
from tasks.distributed import average_gradients, wrap_module
from tasks.train_options import Runtime, StageOptions

logger = logging.getLogger(__name__)

CODE_DISCRIMINATOR = "code_discriminator"
PATCH_DISCRIMINATOR = "patch_discriminator"
NETWORK_SEED_OFFSETS = {CODE_DISCRIMINATOR: 1, PATCH_DISCRIMINATOR: 2}  # their LR-dropout masks differ from the model's

Batches = dict[str, tuple[Tensor, ...]]  # side -> (inputs, targets, target masks[, eyes/mouth masks]), (B, C, R, R)


@dataclass
class TrainingParts:
    """What a stage trains.

    Attributes:
        model: The autoencoder (training mode, on the training device).
        optimizer: Its optimizer.
        networks: Name (CODE_DISCRIMINATOR, PATCH_DISCRIMINATOR) -> (discriminator, its optimizer),
            only those the stage's options use.
        training_pass: The forward module (a ``TrainingPass`` over them; DDP-wrapped across processes, compiled
            with runtime.compile).
    """

    model: SwapAutoencoder
    optimizer: torch.optim.Optimizer
    networks: dict[str, tuple[nn.Module, torch.optim.Optimizer]]
    training_pass: nn.Module

    def network_states(self) -> dict[str, NetworkState]:
        """The networks' live state_dicts (references), as ``model.checkpoint`` saves them."""
        return {name: NetworkState(network.state_dict(), optimizer.state_dict())
                for name, (network, optimizer) in self.networks.items()}

    def set_learning_rate(self, learning_rate: float) -> None:
        """Set the learning rate of every optimizer."""
        for optimizer in [self.optimizer, *(optimizer for _, optimizer in self.networks.values())]:
            set_learning_rate(optimizer, learning_rate)


def build_networks(config: ModelConfig, options: StageOptions) -> dict[str, nn.Module]:
    """Freshly initialised discriminators the options ask for (their weights come from torch's global RNG)."""
    networks: dict[str, nn.Module] = {}
    if options.uses_true_face:
        networks[CODE_DISCRIMINATOR] = build_code_discriminator(config)
    if options.uses_gan:
        networks[PATCH_DISCRIMINATOR] = build_patch_discriminator(config.resolution, options.patch_size(config.resolution),
                                                                  options.gan_dims)
    return networks


def assemble_parts(
    model: SwapAutoencoder,
    config: ModelConfig,
    options: StageOptions,
    runtime: Runtime,
    learning_rate: float,
    optimizer_state: dict | None,
    saved_networks: dict[str, NetworkState],
    resuming: bool,
) -> TrainingParts:
    """Put the model, its optimizer and the stage's discriminators together on the training device.

    Args:
        model: The autoencoder, new or loaded.
        config: Its config.
        options: The stage's options (optimizer, LR dropout, clipping, which discriminators).
        runtime: Device, layout and compilation.
        learning_rate: The learning rate of every optimizer.
        optimizer_state: The model's optimizer state to continue, or None for a fresh optimizer.
        saved_networks: Discriminators saved in the checkpoint the stage starts from; those the
            stage uses continue from their weights (and optimizer state when ``optimizer_state``
            is continued too), the others are ignored. A missing one starts fresh.
        resuming: The checkpoint is this run's own: a saved discriminator that does not fit is an
            error instead of a fresh start.

    Returns:
        The parts, in training mode.

    Raises:
        CheckpointError: Resuming and a saved discriminator does not fit the options.
    """
    device = runtime.device
    model = model.to(device).train()
    optimizer = build_optimizer(options.optimizer, model.parameters(), learning_rate, options.lr_dropout,
                                options.clip_grad, options.seed)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    networks: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
    for name, network in build_networks(config, options).items():
        saved = saved_networks.get(name)
        loaded = saved is not None and load_network_weights(network, saved, name, resuming)
        network = network.to(device).train()
        network_optimizer = build_optimizer(options.optimizer, network.parameters(), learning_rate, options.lr_dropout,
                                            options.clip_grad, options.seed + NETWORK_SEED_OFFSETS[name])
        if loaded and saved.optimizer_state is not None and optimizer_state is not None:
            network_optimizer.load_state_dict(saved.optimizer_state)
        logger.info("%s %s", "continuing the" if loaded else "starting a fresh", name.replace("_", " "))
        networks[name] = (network, network_optimizer)
    training_pass: nn.Module = TrainingPass(model, networks.get(CODE_DISCRIMINATOR, (None,))[0],
                                            networks.get(PATCH_DISCRIMINATOR, (None,))[0])
    if runtime.channels_last:
        training_pass = training_pass.to(memory_format=torch.channels_last)
    training_pass = wrap_module(training_pass, runtime.group, device)  # DDP when there are several processes
    if runtime.compile:
        training_pass = torch.compile(training_pass)
    parts = TrainingParts(model, optimizer, networks, training_pass)
    parts.set_learning_rate(learning_rate)  # the stage's (or the run's) learning rate wins over a loaded one
    return parts


def load_network_weights(network: nn.Module, saved: NetworkState, name: str, resuming: bool) -> bool:
    """Load saved weights into a fresh discriminator; False (it stays fresh) when they do not fit a new stage's."""
    try:
        network.load_state_dict(saved.weights)
    except RuntimeError as error:
        if resuming:
            raise CheckpointError(f"the saved {name} does not fit this run's options ({error}); the work dir is "
                                  "inconsistent: delete it and train the stage again") from error
        logger.info("the saved %s was built with other settings (gan_patch_size, gan_dims); starting a fresh one", name)
        return False
    return True


def autocast(runtime_device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast of the forward passes to ``dtype`` on the device's type, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime_device.type, dtype=dtype)


def generator_losses(outputs: TrainingOutputs, batches: Batches, options: StageOptions,
                     gan_weights: Tensor | None) -> dict[str, Tensor]:
    """The autoencoder's loss terms (see the module docstring), in fp32, "total" differentiable."""
    terms: dict[str, Tensor] = {}
    for side, reconstruction in (("src", outputs.src), ("dst", outputs.dst)):
        _, targets, target_masks, *extra = batches[side]
        priority = extra[0] if options.eyes_mouth_priority else None
        losses = reconstruction_loss(reconstruction.face.float(), targets, reconstruction.mask.float(), target_masks,
                                     masked=options.masked_training, eyes_mouth_mask=priority)
        losses.pop("total")
        terms.update({f"{side}_{name}": value for name, value in losses.items()})
    _, dst_targets, dst_masks, *_ = batches["dst"]
    if options.uses_true_face:
        terms["src_true_face"] = true_face_loss(outputs.src_code_logits.float(), options.true_face_power)
    if options.face_style_power > 0:
        terms["src_face_style"] = face_style_loss(outputs.swap.face.float(), dst_targets, dst_masks,
                                                  options.face_style_power)
    if options.bg_style_power > 0:
        terms["src_background_style"] = background_style_loss(outputs.swap.face.float(), dst_targets, dst_masks,
                                                              options.bg_style_power)
    if options.uses_gan:
        patches, pixels = outputs.src_patch_logits
        terms["src_gan"] = options.gan_power * (generator_gan_loss(patches.float()) + generator_gan_loss(pixels.float()))
    for side in ("src", "dst"):
        terms[f"{side}_total"] = sum(value for name, value in terms.items() if name.startswith(f"{side}_"))
    terms["total"] = terms["src_total"] + terms["dst_total"]
    return terms


def train_code_discriminator(network: nn.Module, optimizer: torch.optim.Optimizer, outputs: TrainingOutputs,
                             runtime: Runtime) -> Tensor:
    """One step of the code discriminator: dst codes are real, src codes fake (detached). Returns its loss."""
    optimizer.zero_grad(set_to_none=True)  # drops what the generator's backward left in its gradients
    with autocast(runtime.device, runtime.autocast_dtype):
        real, fake = network(outputs.dst.code.detach()), network(outputs.src.code.detach())
    loss = discriminator_gan_loss(real.float(), fake.float())
    loss.backward()
    average_gradients(network, runtime.group)
    optimizer.step()
    return loss.detach()


def train_patch_discriminator(network: nn.Module, optimizer: torch.optim.Optimizer, outputs: TrainingOutputs,
                              src_targets: Tensor, gan_weights: Tensor | None, runtime: Runtime) -> Tensor:
    """One step of the patch discriminator: src targets are real, src reconstructions fake. Returns its loss."""
    optimizer.zero_grad(set_to_none=True)
    fakes = outputs.src.face.detach()
    reals, fakes = (src_targets, fakes) if gan_weights is None else (src_targets * gan_weights, fakes * gan_weights)
    with autocast(runtime.device, runtime.autocast_dtype):
        real, fake = network(reals), network(fakes.to(reals.dtype))
    loss = (discriminator_gan_loss(real.patches.float(), fake.patches.float())
            + discriminator_gan_loss(real.pixels.float(), fake.pixels.float()))
    loss.backward()
    average_gradients(network, runtime.group)
    optimizer.step()
    return loss.detach()


def train_step(parts: TrainingParts, batches: Batches, options: StageOptions, runtime: Runtime) -> dict[str, float]:
    """Run one step: the autoencoder's update, then each discriminator's.

    Args:
        parts: The model, discriminators and optimizers (see ``assemble_parts``).
        batches: side -> (inputs (B, 3, R, R), targets (B, 3, R, R), target masks (B, 1, R, R)
            [, eyes/mouth masks (B, 1, R, R) with eyes_mouth_priority]), float32 in [0, 1] on the device.
        options: The stage's options (which terms, their powers).
        runtime: Device and autocast dtype.

    Returns:
        The losses before the step, by name (see the module docstring).
    """
    src_inputs, src_targets, src_masks, *_ = batches["src"]
    gan_weights = soften_mask(src_masks) if options.uses_gan and options.masked_training else None
    parts.optimizer.zero_grad(set_to_none=True)
    with autocast(runtime.device, runtime.autocast_dtype):
        outputs = parts.training_pass(src_inputs, batches["dst"][0], options.needs_swap, gan_weights)
    terms = generator_losses(outputs, batches, options, gan_weights)
    terms["total"].backward()
    parts.optimizer.step()
    if CODE_DISCRIMINATOR in parts.networks:
        terms[CODE_DISCRIMINATOR] = train_code_discriminator(*parts.networks[CODE_DISCRIMINATOR], outputs, runtime)
    if PATCH_DISCRIMINATOR in parts.networks:
        terms[PATCH_DISCRIMINATOR] = train_patch_discriminator(*parts.networks[PATCH_DISCRIMINATOR], outputs,
                                                               src_targets, gan_weights, runtime)
    names = list(terms)
    values = torch.stack([terms[name].detach().float() for name in names]).tolist()  # one device sync for all
    return dict(zip(names, values, strict=True))
