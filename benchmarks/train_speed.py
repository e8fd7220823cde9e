"""Training speed: ms/iteration, achieved TFLOP/s and model FLOPs utilisation (MFU), per architecture.

For each model it times full training iterations (both sides: forward, SAEHD loss, backward,
AdaBelief step) on random faces, counts the iteration's FLOPs with torch's FlopCounterMode
(model.flops) and divides by a dense matmul's throughput measured in the same run on the same
device (the achievable peak), so the MFU figure is a ratio of two measurements taken together.
DeepFaceLab's own SAEHD on this 2-core CPU (DESIGN.md) is the anchor for the two settings it was
measured with.

    python benchmarks/train_speed.py                  # CPU (or CUDA when present): liae-ud 128 and 256, the DFL anchors
    python benchmarks/train_speed.py --iterations 5 --models liae-ud-128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import ModelConfig  # noqa: E402
from model.flops import count_training_flops, model_flops_utilisation  # noqa: E402
from model.losses import reconstruction_loss  # noqa: E402
from model.networks import build_model  # noqa: E402
from model.optimizers import build_optimizer  # noqa: E402

BATCH = 8
MODELS = {
    # name: (config, DeepFaceLab SAEHD seconds/iteration on this 2-core CPU, batch 8; None when not measured)
    "liae-ud-128": (ModelConfig(archi="liae-ud", resolution=128, face_type="whole_face", ae_dims=256, e_dims=64, d_dims=64,
                                d_mask_dims=22), 5.3),
    "df-ud-96": (ModelConfig(archi="df-ud", resolution=96, face_type="full", ae_dims=128, e_dims=64, d_dims=64,
                             d_mask_dims=22), 2.3),
    "liae-ud-256": (ModelConfig(archi="liae-ud", resolution=256, face_type="whole_face", ae_dims=256, e_dims=64, d_dims=64,
                                d_mask_dims=22), None),
}


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """FLOP/s of a large dense matmul on this device: the throughput the model's FLOPs are compared with."""
    size = 2048 if device.type == "cpu" else 8192
    left, right = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    torch.mm(left, right)
    synchronize(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(left, right)
        count += 1
    synchronize(device)
    return 2 * size**3 * count / (time.perf_counter() - started)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(config: ModelConfig, device: torch.device, iterations: int, precision: str) -> list[float]:
    """Seconds of each of ``iterations`` training iterations after one warm-up."""
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer("adabelief", model.parameters(), 5e-5)
    shape = (BATCH, 3, config.resolution, config.resolution)
    faces = {side: torch.rand(shape, device=device) for side in ("src", "dst")}
    masks = torch.ones((BATCH, 1, config.resolution, config.resolution), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    for index in range(iterations + 1):
        synchronize(device)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            total = sum(side_loss(model, faces[side], masks, side) for side in ("src", "dst"))
        total.backward()
        optimizer.step()
        synchronize(device)
        if index:
            times.append(time.perf_counter() - started)
    return times


def side_loss(model, images: torch.Tensor, masks: torch.Tensor, side: str) -> torch.Tensor:
    face, mask = model(images, side)
    return reconstruction_loss(face.float(), images, mask.float(), masks, masked=True)["total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    peak = measure_matmul_peak(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {arguments.threads} threads"
    print(f"device: {name}; precision {precision}; dense matmul peak measured now: {peak / 1e12:.3f} TFLOP/s; batch {BATCH}")
    print(f"{'model':<14}{'params':>9}{'GFLOP/it':>10}{'ms/it':>10}{'TFLOP/s':>9}{'MFU':>7}  against DeepFaceLab SAEHD here")
    for key in arguments.models:
        config, anchor = MODELS[key]
        model = build_model(config)
        parameters = sum(parameter.numel() for parameter in model.parameters())
        flops = count_training_flops(model, config.resolution, BATCH)
        seconds = statistics.median(time_iterations(config, device, arguments.iterations, precision))
        achieved = flops / seconds
        against = (f"{anchor * 1000:.0f} ms -> {anchor / seconds:.2f}x faster" if anchor and device.type == "cpu"
                   else "-")
        print(f"{key:<14}{parameters / 1e6:>8.1f}M{flops / 1e9:>10.1f}{seconds * 1000:>10.0f}{achieved / 1e12:>9.3f}"
              f"{model_flops_utilisation(flops, seconds, peak):>7.1%}  {against}")


if __name__ == "__main__":
    main()
