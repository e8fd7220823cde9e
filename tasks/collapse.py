"""The collapse guard: spots a training step whose loss shows the model breaking down, and rolls it back.

A model "collapses" when an update blows its weights up: the loss turns non-finite (NaN or inf) or
jumps far above where it was. DeepFaceLab users then restore a backup by hand and lower the learning
rate; the trainer does that itself (see ``tasks.train``): on a rejected loss it rolls the model and
optimizer back to the last good in-memory copy, multiplies the learning rate by ``BACKOFF`` and goes
on; after ``MAX_CONSECUTIVE_ROLLBACKS`` rollbacks without an accepted loss in between it gives up.

The guard judges each step's total loss against an exponential moving average of the accepted ones.
Rejected losses never enter the average, so one spike does not raise the bar for the next.

The rollback targets are ``Snapshot``s: CPU copies of the model, optimizer, the networks trained
beside it (discriminators, each with its optimizer), RNG and run state that the trainer takes at
each periodic save (``save_every``) and trusts once the following step's loss is accepted, since a
step can wreck the weights without its own loss showing it. The same copies are what the work
dir's checkpoints are written from.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from model.checkpoint import NetworkState

if TYPE_CHECKING:  # annotations only: run_state imports this module
    from tasks.run_state import RunProgress

logger = logging.getLogger(__name__)

AVERAGE_WEIGHT = 0.95  # weight of the past in the running average (about the last 20 accepted losses)
WARMUP = 20  # accepted losses before the spike test starts: a stage's first steps may move the loss a lot
BACKOFF = 0.5  # learning rate multiplier after each rollback
MAX_CONSECUTIVE_ROLLBACKS = 4  # rollbacks in a row before training gives up

# name -> (network, its optimizer): the networks trained beside the model, e.g. discriminators.
Networks = Mapping[str, tuple[torch.nn.Module, torch.optim.Optimizer]]


class TrainingCollapseError(RuntimeError):
    """Training kept collapsing although it was rolled back and its learning rate lowered."""


@dataclass
class CollapseGuard:
    """Judges losses; its fields are the JSON-able state a resumed run restores.

    Attributes:
        factor: A finite loss above ``factor`` times the running average is a spike (after
            ``WARMUP`` accepted losses); 0 disables the spike test. Non-finite losses are always
            rejected.
        average: Exponential moving average of the accepted losses (None before the first).
        accepted: Losses accepted so far.
        consecutive_rollbacks: Rollbacks since the last accepted loss.
    """

    factor: float
    average: float | None = None
    accepted: int = 0
    consecutive_rollbacks: int = 0

    def judge(self, loss: float) -> str | None:
        """Return why ``loss`` shows a collapse, or None when it looks healthy (nothing is updated)."""
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if self.factor > 0 and self.average is not None and self.accepted >= WARMUP and loss > self.factor * self.average:
            return f"loss {loss:.4g} spiked above {self.factor:g} x its running average {self.average:.4g}"
        return None

    def accept(self, loss: float) -> None:
        """Take a healthy loss into the running average and end a run of rollbacks."""
        self.average = loss if self.average is None else AVERAGE_WEIGHT * self.average + (1 - AVERAGE_WEIGHT) * loss
        self.accepted += 1
        self.consecutive_rollbacks = 0

    @property
    def may_roll_back(self) -> bool:
        """Whether another rollback is allowed (fewer than ``MAX_CONSECUTIVE_ROLLBACKS`` in a row so far)."""
        return self.consecutive_rollbacks < MAX_CONSECUTIVE_ROLLBACKS

    def count_rollback(self) -> None:
        """Count a rollback towards the consecutive limit."""
        self.consecutive_rollbacks += 1

    def to_state(self) -> dict[str, Any]:
        """The guard as a JSON-able dict (see ``from_state``)."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CollapseGuard:
        """Rebuild a guard saved by ``to_state``."""
        return cls(**state)

    def restore_average(self, state: dict[str, Any]) -> None:
        """Go back to the running average of an earlier ``to_state`` (a rollback), keeping the rollback count."""
        self.average, self.accepted = state["average"], state["accepted"]


@dataclass
class Snapshot:
    """A CPU copy of everything that decides how training goes on after one iteration.

    Attributes:
        model_state: The model's state_dict.
        optimizer_state: The optimizer's state_dict.
        run: The JSON-able run state (see ``tasks.run_state.RunProgress``).
        rng_tensors: "torch_rng" (and "cuda_rng.<device>") uint8 RNG states.
        networks: Name -> the weights and optimizer state of each network trained beside the model.
    """

    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    run: dict[str, Any]
    rng_tensors: dict[str, Tensor]
    networks: dict[str, NetworkState] = field(default_factory=dict)


def copy_weights(module: torch.nn.Module) -> dict[str, Tensor]:
    """A CPU copy of a module's state_dict (a state_dict holds references to the live tensors)."""
    return {name: value.detach().to("cpu", copy=True) for name, value in module.state_dict().items()}


def copy_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A deep copy of an optimizer's state_dict with its tensors on the CPU."""
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    for values in optimizer_state["state"].values():
        for name, value in values.items():
            if isinstance(value, Tensor):
                values[name] = value.to("cpu")
    return optimizer_state


def capture_snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer, run: dict[str, Any],
                     networks: Networks | None = None) -> Snapshot:
    """Copy the model, optimizer, networks, run state and RNG state."""
    copies = {name: NetworkState(copy_weights(network), copy_optimizer_state(network_optimizer))
              for name, (network, network_optimizer) in (networks or {}).items()}
    return Snapshot(copy_weights(model), copy_optimizer_state(optimizer), copy.deepcopy(run), capture_rng(), copies)


def restore_weights(snapshot: Snapshot, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    networks: Networks | None = None) -> None:
    """Load the snapshot's model, optimizer and network states (copies: the snapshot stays usable)."""
    model.load_state_dict(snapshot.model_state)
    optimizer.load_state_dict(copy.deepcopy(snapshot.optimizer_state))
    for name, (network, network_optimizer) in (networks or {}).items():
        network.load_state_dict(snapshot.networks[name].weights)
        network_optimizer.load_state_dict(copy.deepcopy(snapshot.networks[name].optimizer_state))


def capture_rng() -> dict[str, Tensor]:
    """The torch RNG states as uint8 tensors: "torch_rng" and one "cuda_rng.<device>" per GPU."""
    tensors = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_rng.{index}": state for index, state in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def restore_rng(tensors: dict[str, Tensor]) -> None:
    """Set the torch RNG states saved by ``capture_rng`` (the GPU ones only where there are GPUs)."""
    if "torch_rng" in tensors:
        torch.set_rng_state(tensors["torch_rng"].to(torch.uint8))
    cuda_names = sorted((name for name in tensors if name.startswith("cuda_rng.")), key=lambda name: int(name.split(".")[1]))
    cuda_states = [tensors[name] for name in cuda_names]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.to(torch.uint8) for state in cuda_states])


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def roll_back(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    run: RunProgress,
    good: Snapshot,
    reason: str,
    loss: float,
    stage_name: str,
    writer: SummaryWriter | None,
    networks: Networks | None = None,
) -> None:
    """Return to the last good copy with a lower learning rate (for the networks' optimizers too), and
    record the event everywhere.

    Raises:
        TrainingCollapseError: The guard's limit of rollbacks in a row is reached.
    """
    if not run.guard.may_roll_back:
        raise TrainingCollapseError(
            f"training stage {stage_name} kept collapsing: {reason} at iteration {run.iteration} after "
            f"{run.guard.consecutive_rollbacks} rollbacks in a row (learning rate down to {run.learning_rate:g}); "
            f"lower train.stages.{stage_name}.learning_rate in params.yaml, look for broken crops among the "
            "training faces, or set collapse_factor: 0 if the loss is meant to jump")
    run.guard.count_rollback()
    restore_weights(good, model, optimizer, networks)
    run.guard.restore_average(good.run["guard"])
    run.smoothed = dict(good.run["smoothed"])
    run.learning_rate *= BACKOFF
    for each in [optimizer, *(network_optimizer for _, network_optimizer in (networks or {}).values())]:
        set_learning_rate(each, run.learning_rate)
    restored = good.run["start_iteration"] + good.run["stage_iteration"]
    run.collapse_events.append({"iteration": run.iteration, "reason": reason,
                                "loss": loss if math.isfinite(loss) else None,
                                "restored_iteration": restored, "learning_rate": run.learning_rate})
    message = (f"stage {stage_name} iteration {run.iteration}: {reason}; rolled back to iteration {restored} "
               f"with the learning rate lowered to {run.learning_rate:g}")
    logger.warning("%s", message)
    if writer is not None:  # None in the processes other than rank 0
        writer.add_scalar("collapse/rollbacks", len(run.collapse_events), run.iteration)
        writer.add_text("collapse", message, run.iteration)
