"""Optimizers for the face-swap autoencoder: AdaBelief, Adam, RMSprop, with learning-rate dropout and clipping.

``build_optimizer`` is the one entry point: it picks an optimizer from the registry and attaches, as
step hooks, the two DeepFaceLab training options that work with any optimizer:

- gradient clipping by global norm (before the step), and
- learning-rate dropout (after the step): each element of each parameter's update is kept with
  probability ``1 - lr_dropout`` and otherwise undone, a random sparse update that helps a model
  that has stopped improving settle into sharper detail.

Every value an optimizer keeps is a tensor or a plain number, so ``model.checkpoint`` saves it as
safetensors + JSON. Learning-rate dropout draws its masks from a torch.Generator re-seeded from
(seed, step count, group index) at every step, and the step count lives in the param group, so a
checkpoint restores the exact sequence of masks without storing any generator state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

OptimizerName = Literal["adabelief", "adam", "rmsprop"]
OPTIMIZER_CHOICES: tuple[str, ...] = get_args(OptimizerName)

# The param-group key holding how many steps learning-rate dropout has masked (saved in checkpoints).
DROPOUT_STEP_KEY = "lr_dropout_step"
# DeepFaceLab's RMSprop: decay 0.9 and float32's resolution as the denominator's stabiliser.
RMSPROP_ALPHA = 0.9
RMSPROP_EPS = 1e-6


class OptimizerError(ValueError):
    """An optimizer was asked for with an unknown name or an out-of-range setting."""


class AdaBelief(torch.optim.Optimizer):
    """AdaBelief (Zhuang et al., NeurIPS 2020): Adam whose step size follows the belief in the gradient.

    Adam divides by the running second moment of the gradient; AdaBelief divides by the running
    variance of the gradient around its own moving average, so steps are large where the gradient
    is predictable and small where it is noisy. Per parameter, at step t:

        m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        s_t = beta2 * s_{t-1} + (1 - beta2) * (g_t - m_t)^2 + eps
        theta_t = theta_{t-1} - lr * (m_t / (1 - beta1^t)) / (sqrt(s_t / (1 - beta2^t)) + eps)

    Weight decay is decoupled (theta *= 1 - lr * weight_decay before the step, as in AdamW) unless
    ``decoupled_weight_decay`` is False, when it is added to the gradient instead.

    State per parameter: "step" (int), "exp_avg" (m) and "exp_avg_belief" (s), tensors like the parameter.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = True,
    ) -> None:
        """Args:
            params: Parameters or param-group dicts to optimize.
            lr: Learning rate (> 0).
            betas: Decay rates of the mean and of the belief (each in [0, 1)).
            eps: Added to the belief each step and to the denominator (>= 0); 1e-16 as in the authors' code.
            weight_decay: L2 penalty factor (>= 0).
            decoupled_weight_decay: Decay the weights directly (AdamW style) instead of through the gradient.

        Raises:
            OptimizerError: A setting is out of range.
        """
        if not lr > 0:
            raise OptimizerError(f"AdaBelief learning rate must be positive, got {lr}")
        if not all(0.0 <= beta < 1.0 for beta in betas) or len(betas) != 2:
            raise OptimizerError(f"AdaBelief betas must be two values in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise OptimizerError(f"AdaBelief eps and weight_decay must be >= 0, got {eps} and {weight_decay}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "decoupled_weight_decay": decoupled_weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Apply one update to every parameter that has a gradient; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            learning_rate, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                gradient = parameter.grad
                if gradient.is_sparse:
                    raise OptimizerError("AdaBelief does not support sparse gradients; use dense embeddings")
                state = self.state[parameter]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                    state["exp_avg_belief"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"]
                if weight_decay:
                    if group["decoupled_weight_decay"]:
                        parameter.mul_(1.0 - learning_rate * weight_decay)
                    else:
                        gradient = gradient.add(parameter, alpha=weight_decay)
                exp_avg, exp_avg_belief = state["exp_avg"], state["exp_avg_belief"]
                exp_avg.lerp_(gradient, 1.0 - beta1)  # m_t
                surprise = gradient - exp_avg  # g_t - m_t: how far the gradient strays from its trend
                exp_avg_belief.mul_(beta2).addcmul_(surprise, surprise, value=1.0 - beta2).add_(eps)  # s_t
                bias_correction1 = 1.0 - beta1**step
                bias_correction2 = 1.0 - beta2**step
                denominator = (exp_avg_belief.sqrt() / math.sqrt(bias_correction2)).add_(eps)
                parameter.addcdiv_(exp_avg, denominator, value=-learning_rate / bias_correction1)
        return loss


def clip_gradients(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale all gradients down together so their global L2 norm is at most ``max_norm``.

    Args:
        parameters: Parameters whose ``.grad`` to clip (those without a gradient are skipped).
        max_norm: The largest global norm allowed; 0 turns clipping off.

    Returns:
        The global gradient norm before clipping, a scalar tensor (0 when no parameter has a gradient).

    Raises:
        OptimizerError: ``max_norm`` is negative.
    """
    if max_norm < 0:
        raise OptimizerError(f"gradient clipping max_norm must be >= 0 (0 turns it off), got {max_norm}")
    with_gradients = [parameter for parameter in parameters if parameter.grad is not None]
    if not with_gradients:
        return torch.zeros(())
    if max_norm == 0:
        return torch.nn.utils.get_total_norm([parameter.grad for parameter in with_gradients])
    return torch.nn.utils.clip_grad_norm_(with_gradients, max_norm)


class GradientClipping:
    """A step pre-hook: clip the optimizer's gradients by global norm before every step."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        if not max_norm > 0:
            raise OptimizerError(f"clip_grad must be positive to attach clipping, got {max_norm}")
        self.max_norm = max_norm
        self.handle = optimizer.register_step_pre_hook(self.clip)

    def clip(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
        clip_gradients(parameters, self.max_norm)


class LearningRateDropout:
    """Step hooks that keep each element of every parameter update with probability ``1 - dropout``.

    Before the step the parameters that have gradients are copied; after it, each element either
    keeps its new value or is put back (a Bernoulli(1 - dropout) mask per element). The optimizer's
    own state (moments, step counts) still advances on every element, as in DeepFaceLab.

    The masks come from a torch.Generator per device, re-seeded at every step from (seed, the
    group's dropout step count, the group index); the count is kept in each param group under
    DROPOUT_STEP_KEY, so it is saved with ``optimizer.state_dict()`` and a resumed run draws the
    same masks as an uninterrupted one. Memory: one extra copy of the parameters during a step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, dropout: float, seed: int = 0) -> None:
        """Args:
            optimizer: The optimizer to hook (any torch.optim.Optimizer).
            dropout: Probability in (0, 1) that an element's update is dropped.
            seed: Seeds the masks; equal seeds and step counts give equal masks.

        Raises:
            OptimizerError: ``dropout`` is not in (0, 1).
        """
        if not 0.0 < dropout < 1.0:
            raise OptimizerError(f"lr_dropout must be in (0, 1) to attach it (0 turns it off), got {dropout}")
        self.dropout = dropout
        self.seed = seed
        self.generators: dict[torch.device, torch.Generator] = {}
        self.before: list[tuple[Tensor, Tensor]] = []
        for group in optimizer.param_groups:
            group.setdefault(DROPOUT_STEP_KEY, 0)
        self.handles = (optimizer.register_step_pre_hook(self.remember_parameters),
                        optimizer.register_step_post_hook(self.drop_updates))

    def generator_for(self, device: torch.device, group_index: int, step: int) -> torch.Generator:
        """The device's generator, re-seeded for this group and step."""
        if device not in self.generators:
            self.generators[device] = torch.Generator(device=device)
        # SeedSequence mixes the three numbers into a well-spread 63-bit seed.
        seed = int(np.random.SeedSequence([self.seed % 2**64, group_index, step]).generate_state(1, dtype=np.uint64)[0])
        return self.generators[device].manual_seed(seed >> 1)

    def remember_parameters(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...],
                            kwargs: dict[str, Any]) -> None:
        self.before = [(parameter, parameter.detach().clone()) for group in optimizer.param_groups
                       for parameter in group["params"] if parameter.grad is not None]

    @torch.no_grad()
    def drop_updates(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        previous = {id(parameter): value for parameter, value in self.before}
        keep_probability = 1.0 - self.dropout
        for group_index, group in enumerate(optimizer.param_groups):
            step = int(group.get(DROPOUT_STEP_KEY, 0))
            generators: dict[torch.device, torch.Generator] = {}
            for parameter in group["params"]:
                old = previous.get(id(parameter))
                if old is None:
                    continue
                device = parameter.device
                if device not in generators:
                    generators[device] = self.generator_for(device, group_index, step)
                keep = torch.rand(parameter.shape, generator=generators[device], device=device) < keep_probability
                parameter.copy_(torch.where(keep, parameter, old))  # exact: kept elements take the new value
            group[DROPOUT_STEP_KEY] = step + 1
        self.before = []


def build_adabelief(parameters: Iterable[Tensor], learning_rate: float) -> torch.optim.Optimizer:
    """AdaBelief with the paper's defaults (betas 0.9/0.999, eps 1e-16, no weight decay)."""
    return AdaBelief(parameters, lr=learning_rate)


def build_adam(parameters: Iterable[Tensor], learning_rate: float) -> torch.optim.Optimizer:
    """torch's Adam with its defaults (betas 0.9/0.999, eps 1e-8)."""
    return torch.optim.Adam(parameters, lr=learning_rate)


def build_rmsprop(parameters: Iterable[Tensor], learning_rate: float) -> torch.optim.Optimizer:
    """torch's RMSprop set up as DeepFaceLab's (decay 0.9, eps 1e-6)."""
    return torch.optim.RMSprop(parameters, lr=learning_rate, alpha=RMSPROP_ALPHA, eps=RMSPROP_EPS)


OPTIMIZERS: dict[str, Callable[[Iterable[Tensor], float], torch.optim.Optimizer]] = {
    "adabelief": build_adabelief,
    "adam": build_adam,
    "rmsprop": build_rmsprop,
}
assert set(OPTIMIZERS) == set(OPTIMIZER_CHOICES), "OPTIMIZERS must cover every OptimizerName"


def build_optimizer(
    name: OptimizerName,
    parameters: Iterable[Tensor],
    learning_rate: float,
    lr_dropout: float = 0.0,
    clip_grad: float = 0.0,
    seed: int = 0,
) -> torch.optim.Optimizer:
    """Build an optimizer from the registry, with optional learning-rate dropout and gradient clipping.

    Args:
        name: One of OPTIMIZER_CHOICES.
        parameters: The parameters to optimize.
        learning_rate: Step size (> 0).
        lr_dropout: Probability in [0, 1) that an element's update is dropped at a step; 0 turns it off.
            DeepFaceLab's "lr_dropout: y" keeps 30 % of the updates, which is lr_dropout=0.7 here.
        clip_grad: Clip gradients to this global L2 norm before each step; 0 turns it off
            (DeepFaceLab's "clipgrad: y" is 1.0).
        seed: Seeds the learning-rate dropout masks.

    Returns:
        The optimizer, its hooks attached; ``optimizer.step()`` clips, steps and masks in that order.

    Raises:
        OptimizerError: Unknown name or a setting out of range.
    """
    builder = OPTIMIZERS.get(name)
    if builder is None:
        raise OptimizerError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZER_CHOICES)}")
    if not learning_rate > 0:
        raise OptimizerError(f"learning_rate must be positive, got {learning_rate}")
    if not 0.0 <= lr_dropout < 1.0:
        raise OptimizerError(f"lr_dropout is the probability of dropping an update and must be in [0, 1), "
                             f"got {lr_dropout}")
    if clip_grad < 0:
        raise OptimizerError(f"clip_grad must be >= 0 (0 turns clipping off), got {clip_grad}")
    optimizer = builder(parameters, learning_rate)
    if clip_grad > 0:
        GradientClipping(optimizer, clip_grad)  # the hooks keep the objects alive
    if lr_dropout > 0:
        LearningRateDropout(optimizer, lr_dropout, seed)
    logger.debug("built %s: lr %g, lr_dropout %g, clip_grad %g", name, learning_rate, lr_dropout, clip_grad)
    return optimizer
