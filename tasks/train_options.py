"""The options of a training stage (params.yaml train.stages.<name>) and of the machine it runs on (train.runtime).

``StageOptions`` decide a stage's weights and are part of its DVC params and its run's lineage; the
names follow DeepFaceLab SAEHD's where it has the option. ``RuntimeOptions`` only say how the same
computation runs (device, precision, memory layout, compilation, loader processes): they change
results no more than numerics do, so they are neither DVC params nor part of the lineage.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from pydantic import ConfigDict, with_config

from model.config import ModelConfig
from model.optimizers import OptimizerName
from tasks.color import ColorTransfer
from tasks.distributed import ProcessGroup, process_device
from tasks.loader import BatchOptions

logger = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cpu", "cuda"]
PrecisionChoice = Literal["auto", "fp32", "bf16"]
MIN_GAN_PATCH_SIZE = 3
GAN_PATCH_DIVISOR = 8  # DeepFaceLab's default patch size is resolution // 8
GAN_DIMS_RANGE = (4, 512)
MAX_TRUE_FACE_POWER = 1.0
MAX_STYLE_POWER = 100.0
MAX_GAN_POWER = 10.0


class TrainOptionsError(ValueError):
    """A train stage or runtime option is out of range or cannot be served here; names the key."""


def check_range(name: str, value: float, low: float, high: float | None = None, high_open: bool = False,
                section: str = "train stage option") -> None:
    """Raise TrainOptionsError naming ``name`` unless low <= value <= high (or < high when ``high_open``)."""
    above = high is not None and (value >= high if high_open else value > high)
    if value < low or above:
        bound = "" if high is None else (f" and below {high:g}" if high_open else f" and at most {high:g}")
        raise TrainOptionsError(f"{section} {name} must be at least {low:g}{bound}, got {value!r}")


def check_choice(name: str, value: object, choices: tuple, section: str = "train stage option") -> None:
    """Raise TrainOptionsError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise TrainOptionsError(f"{section} {name} must be one of {list(choices)}, got {value!r}")


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class StageOptions:
    """Options of one training stage (params.yaml train.stages.<name>); DeepFaceLab's names where it has them.

    Attributes:
        iterations: Optimizer steps in this stage.
        batch_size: Faces per side per step.
        learning_rate: Learning rate (overrides the init checkpoint's; a run resumed from its work
            dir keeps its own, which collapse rollbacks may have lowered).
        optimizer: "adabelief" (SAEHD's default), "adam" or "rmsprop" (Quick96's).
        lr_dropout: Probability that an element's update is DROPPED at a step, in [0, 1); 0 is off.
            DeepFaceLab's "lr_dropout: y" keeps 30 % of the updates: that is 0.7 here.
        clip_grad: Clip the gradients to this global L2 norm; 0 is off (DeepFaceLab's "y" is 1.0).
        random_warp: Warp the network input so the model must learn faces, not copy pixels.
        random_src_flip: Allow horizontal flips of src faces (a flipped src face is a face src never made).
        random_dst_flip: Allow horizontal flips of dst faces.
        masked_training: Compute the face loss only inside the (softened) face mask.
        eyes_mouth_priority: Add 300 * L1 inside the eyes and mouth (from each face's landmarks).
        uniform_yaw: Draw faces so every yaw range is equally likely, not just the common frontal one.
        blur_out_mask: Blur the targets' background next to the face.
        random_hsv_power: Random hue/saturation/value shift of the src inputs, in [0, 1] (DFL suggests 0.05).
        color_transfer: Recolour src samples to random dst faces: none, rct, lct, mkl, idt or sot.
        true_face_power: Weight of the code discriminator term that pulls the src codes towards the
            dst codes' region (the swap looks more like src), in [0, 1]; DFL suggests 0.01.
        face_style_power: Weight, 0..100, of the loss that gives the swapped face the dst face's colours.
        bg_style_power: Weight, 0..100, of the loss that makes the swap reproduce the dst background.
        gan_power: Weight of the patch GAN term on the src reconstructions, in [0, 10]; DFL suggests 0.1
            in a last stage, once the faces are sharp.
        gan_patch_size: Side of the patch the GAN judges; None is resolution // 8.
        gan_dims: Channels of the GAN discriminator's first level (DFL default 16).
        pretrain: Train both sides on the generic faceset of ``train.pretrain_faceset`` instead of src/dst.
        seed: Seeds python, numpy and torch; with the model's iteration count it fixes each batch.
        preview_every: Iterations between preview grids, held-out scores and loss-history rows.
        save_every: Iterations between the copies the collapse guard rolls back to, which are also
            the periodic checkpoints of the work dir (a crash loses at most this many iterations).
        collapse_factor: A loss above this many times its running average is a collapse, rolled
            back (after a 20-iteration warm-up); 0 turns the spike test off. A non-finite loss is
            always rolled back.
        reset_inter: Re-initialise the inter layers (and start a fresh optimizer) when continuing
            from an init checkpoint; no effect on a new model.
    """

    iterations: int = 1000
    batch_size: int = 8
    learning_rate: float = 5e-5
    optimizer: OptimizerName = "adabelief"
    lr_dropout: float = 0.0
    clip_grad: float = 0.0
    random_warp: bool = True
    random_src_flip: bool = False
    random_dst_flip: bool = True
    masked_training: bool = True
    eyes_mouth_priority: bool = False
    uniform_yaw: bool = False
    blur_out_mask: bool = False
    random_hsv_power: float = 0.0
    color_transfer: ColorTransfer = "none"
    true_face_power: float = 0.0
    face_style_power: float = 0.0
    bg_style_power: float = 0.0
    gan_power: float = 0.0
    gan_patch_size: int | None = None
    gan_dims: int = 16
    pretrain: bool = False
    seed: int = 0
    preview_every: int = 100
    save_every: int = 500
    collapse_factor: float = 4.0
    reset_inter: bool = False

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "preview_every", "save_every"):
            check_range(name, getattr(self, name), 1)
        if not self.learning_rate > 0:
            raise TrainOptionsError(f"train stage option learning_rate must be positive, got {self.learning_rate}")
        check_choice("optimizer", self.optimizer, get_args(OptimizerName))
        check_choice("color_transfer", self.color_transfer, get_args(ColorTransfer))
        check_range("lr_dropout", self.lr_dropout, 0.0, 1.0, high_open=True)
        check_range("clip_grad", self.clip_grad, 0.0)
        check_range("random_hsv_power", self.random_hsv_power, 0.0, 1.0)
        check_range("true_face_power", self.true_face_power, 0.0, MAX_TRUE_FACE_POWER)
        check_range("face_style_power", self.face_style_power, 0.0, MAX_STYLE_POWER)
        check_range("bg_style_power", self.bg_style_power, 0.0, MAX_STYLE_POWER)
        check_range("gan_power", self.gan_power, 0.0, MAX_GAN_POWER)
        if self.gan_patch_size is not None:
            check_range("gan_patch_size", self.gan_patch_size, MIN_GAN_PATCH_SIZE)
        check_range("gan_dims", self.gan_dims, *GAN_DIMS_RANGE)
        check_range("seed", self.seed, 0)
        if not (self.collapse_factor == 0 or self.collapse_factor > 1):
            raise TrainOptionsError(
                f"train stage option collapse_factor must be 0 (off) or above 1, got {self.collapse_factor}")

    @property
    def needs_swap(self) -> bool:
        """Whether a step paints the swap (the style losses compare it to the dst faces)."""
        return self.face_style_power > 0 or self.bg_style_power > 0

    @property
    def uses_true_face(self) -> bool:
        """Whether the stage trains a code discriminator."""
        return self.true_face_power > 0

    @property
    def uses_gan(self) -> bool:
        """Whether the stage trains a patch discriminator."""
        return self.gan_power > 0

    def patch_size(self, resolution: int) -> int:
        """The GAN's patch side for a model of ``resolution``: gan_patch_size, or resolution // 8 (at least 3)."""
        return self.gan_patch_size or max(MIN_GAN_PATCH_SIZE, resolution // GAN_PATCH_DIVISOR)

    def check_fits(self, config: ModelConfig) -> None:
        """Raise TrainOptionsError for options the model cannot take (a GAN patch larger than its faces)."""
        if self.uses_gan and self.patch_size(config.resolution) > config.resolution:
            raise TrainOptionsError(f"train stage option gan_patch_size {self.gan_patch_size} is larger than the model "
                                    f"resolution {config.resolution}; lower it or leave it out (resolution // 8)")

    def batch_options(self) -> dict[str, BatchOptions]:
        """Each side's sampling and augmentation: flips per side; HSV shift and colour transfer on src only
        (as DeepFaceLab); warp, uniform yaw, blur-out and eyes/mouth masks on both."""
        shared = {"batch_size": self.batch_size, "random_warp": self.random_warp, "uniform_yaw": self.uniform_yaw,
                  "blur_out_mask": self.blur_out_mask, "eyes_mouth": self.eyes_mouth_priority}
        return {"src": BatchOptions(**shared, random_flip=self.random_src_flip, hsv_power=self.random_hsv_power,
                                    color_transfer=self.color_transfer),
                "dst": BatchOptions(**shared, random_flip=self.random_dst_flip)}


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class RuntimeOptions:
    """How training runs on this machine (params.yaml train.runtime); never part of a stage's DVC params.

    Attributes:
        device: "auto" (CUDA when available, else the CPU), "cpu" or "cuda".
        precision: "auto" (bf16 autocast on a CUDA device that supports it, fp32 on the CPU), "fp32"
            or "bf16" (autocast of the forward passes; the losses are computed in fp32).
        channels_last: NHWC memory layout for the networks and batches; "auto" turns it on for CUDA.
        compile: Compile the training forward pass with torch.compile (needs a C++ compiler on the
            CPU and Triton on CUDA; the first steps are slow while it compiles).
        workers: Loader processes that prepare batches ahead of the training step; 0 prepares them
            in the training process. The batches are the same whatever the count.
        processes: Data-parallel training processes (``tasks.distributed``): one per GPU; each takes
            an equal share of every batch, so the stage's batch_size must be a multiple of it. The
            result is the same whatever the count; on the CPU more processes only split its cores.
    """

    device: DeviceChoice = "auto"
    precision: PrecisionChoice = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    workers: int = 1
    processes: int = 1

    def __post_init__(self) -> None:
        check_choice("device", self.device, get_args(DeviceChoice), "train.runtime")
        check_choice("precision", self.precision, get_args(PrecisionChoice), "train.runtime")
        check_choice("channels_last", self.channels_last, (True, False, "auto"), "train.runtime")
        check_range("workers", self.workers, 0, section="train.runtime")
        check_range("processes", self.processes, 1, section="train.runtime")


@dataclass(frozen=True)
class Runtime:
    """``RuntimeOptions`` resolved for this machine.

    Attributes:
        device: Where the networks train.
        autocast_dtype: The autocast dtype of the forward passes, or None for fp32.
        channels_last: Whether networks and batches use the NHWC layout.
        compile: Whether the training forward pass is compiled.
        workers: Loader processes.
        group: This process's place among the data-parallel training processes.
    """

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    compile: bool
    workers: int
    group: ProcessGroup = ProcessGroup()


def check_processes(options: RuntimeOptions) -> None:
    """Raise TrainOptionsError when there are more CUDA training processes than GPUs."""
    if options.processes > 1 and options.device != "cpu" and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if options.processes > gpus:
            raise TrainOptionsError(f"train.runtime.processes is {options.processes} but torch sees {gpus} GPU(s) here; "
                                    f"set it to at most {gpus} (one process per GPU)")


def resolve_runtime(options: RuntimeOptions, group: ProcessGroup = ProcessGroup()) -> Runtime:
    """Decide the device, precision and layout "auto" stands for here, for the process ``group`` places.

    Raises:
        TrainOptionsError: CUDA or bf16 is asked for where it is not available, or compile where no
            C++ compiler is found for the CPU.
    """
    cuda = torch.cuda.is_available()
    if options.device == "cuda" and not cuda:
        raise TrainOptionsError("train.runtime.device is cuda but torch sees no CUDA device here; "
                                "set it to auto or cpu (or install a CUDA build of torch)")
    device = torch.device("cuda" if options.device == "cuda" or (options.device == "auto" and cuda) else "cpu")
    bf16_supported = device.type == "cpu" or torch.cuda.is_bf16_supported()
    if options.precision == "bf16" and not bf16_supported:
        raise TrainOptionsError(f"train.runtime.precision is bf16 but {torch.cuda.get_device_name(device)} does not "
                                "support it; set precision to auto or fp32")
    use_bf16 = options.precision == "bf16" or (options.precision == "auto" and device.type == "cuda" and bf16_supported)
    if options.compile and device.type == "cpu" and find_compiler() is None:
        raise TrainOptionsError("train.runtime.compile is true but no C++ compiler (cc, gcc, g++ or clang) was found "
                                "for torch.compile on the CPU; install one or set compile: false")
    channels_last = device.type == "cuda" if options.channels_last == "auto" else bool(options.channels_last)
    device = process_device(group, device)
    runtime = Runtime(device, torch.bfloat16 if use_bf16 else None, channels_last, options.compile, options.workers, group)
    logger.info("training on %s, %s, %s layout%s, %d loader workers", device, "bf16 autocast" if use_bf16 else "fp32",
                "channels-last" if channels_last else "NCHW", ", compiled" if options.compile else "", options.workers)
    return runtime


def find_compiler() -> str | None:
    """The path of a C++ compiler torch.compile can use on the CPU, or None."""
    for name in ("c++", "g++", "gcc", "cc", "clang++", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None
