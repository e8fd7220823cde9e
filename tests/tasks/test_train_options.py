"""Tests for tasks/train_options.py: validation that names the key, runtime resolution, and what each
sampling option does to the batches a stage draws."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import get_args

import cv2
import numpy as np
import pydantic
import pytest
import torch

from model.config import ModelConfig
from model.optimizers import OPTIMIZER_CHOICES
from tasks.color import COLOR_TRANSFER_CHOICES
from tasks.faceset_reader import ArrayFaceset
from tasks.loader import compute_sampling_weights, make_batch
from tasks.train_options import (
    PrecisionChoice,
    RuntimeOptions,
    StageOptions,
    TrainOptionsError,
    find_compiler,
    resolve_runtime,
)
from tests.tasks.test_train_resume import load_faces

PLAIN = StageOptions(batch_size=4, random_warp=False, random_src_flip=False, random_dst_flip=False)


@pytest.fixture(scope="module")
def readers(media_dir: Path) -> dict[str, ArrayFaceset]:
    return load_faces(media_dir)


def background_detail(side_batch: tuple[np.ndarray, ...]) -> float:
    """Variance of the Laplacian of the targets outside their masks: high-frequency background detail."""
    _, targets, masks, *_ = side_batch
    laplacians = np.stack([cv2.Laplacian(cv2.cvtColor(target, cv2.COLOR_BGR2GRAY), cv2.CV_32F) for target in targets])
    return float(laplacians[masks == 0].var())


def test_unknown_keys_and_bad_choices_are_named() -> None:
    adapter = pydantic.TypeAdapter(StageOptions)
    assert adapter.validate_python({"iterations": 5, "optimizer": "rmsprop"}) == StageOptions(iterations=5,
                                                                                              optimizer="rmsprop")
    with pytest.raises(pydantic.ValidationError, match="random_flip"):
        adapter.validate_python({"random_flip": True})  # replaced by random_src_flip and random_dst_flip
    with pytest.raises(pydantic.ValidationError, match="optimizer"):
        adapter.validate_python({"optimizer": "sgd"})
    with pytest.raises(TrainOptionsError, match=r"optimizer must be one of \['adabelief', 'adam', 'rmsprop'\]"):
        StageOptions(optimizer="sgd")
    with pytest.raises(TrainOptionsError, match="color_transfer must be one of"):
        StageOptions(color_transfer="reinhard")
    for choice in OPTIMIZER_CHOICES:  # the choices come from the optimizer registry's Literal
        assert StageOptions(optimizer=choice).optimizer == choice
    for choice in COLOR_TRANSFER_CHOICES:
        assert StageOptions(color_transfer=choice).color_transfer == choice


@pytest.mark.parametrize(("key", "value"), [
    ("batch_size", 0), ("learning_rate", 0.0), ("save_every", 0), ("seed", -1), ("collapse_factor", 0.5),
    ("lr_dropout", 1.0), ("lr_dropout", -0.1), ("clip_grad", -1.0), ("random_hsv_power", 1.5),
    ("true_face_power", 2.0), ("face_style_power", 101.0), ("bg_style_power", -1.0), ("gan_power", 11.0),
    ("gan_patch_size", 2), ("gan_dims", 2),
])
def test_out_of_range_values_name_the_key(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=key):
        StageOptions(**{key: value})


def test_defaults_follow_saehd_and_the_gan_patch_fits_the_model() -> None:
    options = StageOptions()
    assert options.optimizer == "adabelief" and options.random_warp and options.random_dst_flip
    assert not options.random_src_flip and options.masked_training and options.gan_power == 0
    assert not (options.needs_swap or options.uses_gan or options.uses_true_face)
    assert StageOptions(gan_power=0.1).patch_size(128) == 16 and StageOptions(gan_power=0.1).patch_size(16) == 3
    with pytest.raises(TrainOptionsError, match="gan_patch_size 64 is larger than the model resolution 32"):
        StageOptions(gan_power=0.1, gan_patch_size=64).check_fits(ModelConfig(resolution=32))


def test_runtime_resolves_auto_for_the_cpu() -> None:
    runtime = resolve_runtime(RuntimeOptions(workers=0))
    if torch.cuda.is_available():
        pytest.skip("auto picks CUDA on this machine; the CPU resolution is what this test checks")
    assert runtime.device == torch.device("cpu") and runtime.autocast_dtype is None and not runtime.channels_last
    explicit = resolve_runtime(RuntimeOptions(precision="bf16", channels_last=True))
    assert explicit.autocast_dtype == torch.bfloat16 and explicit.channels_last and explicit.workers == 1
    with pytest.raises(TrainOptionsError, match=r"train\.runtime\.device is cuda"):
        resolve_runtime(RuntimeOptions(device="cuda"))
    with pytest.raises(ValueError, match=r"train\.runtime workers"):
        RuntimeOptions(workers=-1)
    with pytest.raises(ValueError, match=r"train\.runtime precision must be one of"):
        RuntimeOptions(precision="fp16")
    assert set(get_args(PrecisionChoice)) == {"auto", "fp32", "bf16"}
    if find_compiler() is None:
        with pytest.raises(TrainOptionsError, match="compile"):
            resolve_runtime(RuntimeOptions(compile=True))


def test_flips_are_per_side_and_colour_options_touch_src_only() -> None:
    options = StageOptions(random_src_flip=True, random_dst_flip=False, random_hsv_power=0.2, color_transfer="mkl",
                           uniform_yaw=True, eyes_mouth_priority=True, blur_out_mask=True)
    by_side = options.batch_options()
    assert by_side["src"].random_flip and not by_side["dst"].random_flip
    assert (by_side["src"].hsv_power, by_side["src"].color_transfer) == (0.2, "mkl")
    assert (by_side["dst"].hsv_power, by_side["dst"].color_transfer) == (0.0, "none")
    assert all(side.uniform_yaw and side.eyes_mouth and side.blur_out_mask for side in by_side.values())


def test_uniform_yaw_changes_the_sampling_weights(readers) -> None:
    src = readers["src"]
    yaw = np.r_[np.zeros(len(src) - 2), 60.0, -60.0].astype(np.float32)  # two profiles among frontal faces
    faces = src.faces.copy()
    faces[-2:] = 255  # the profiles are white: recognisable after the random transform
    skewed = {"src": ArrayFaceset(faces, src.masks, yaw=yaw), "dst": readers["dst"]}
    weights = compute_sampling_weights(skewed, replace(PLAIN, uniform_yaw=True).batch_options())
    assert weights["src"][-1] == pytest.approx(1 / 3) and weights["src"][0] == pytest.approx(1 / 3 / (len(src) - 2))
    assert compute_sampling_weights(skewed, PLAIN.batch_options())["src"] is None
    drawn = [make_batch(skewed, replace(PLAIN, uniform_yaw=True).batch_options(), 0, step)["src"][1] for step in range(10)]
    share = np.mean([face.min() == 255 for batch in drawn for face in batch])
    assert share > 0.4, f"the two profile faces were {share:.0%} of the draws; uniform yaw should make them about 2/3"


def test_color_transfer_recolours_src_samples_to_dst_faces(readers) -> None:
    tinted = {"src": readers["src"],
              "dst": ArrayFaceset(np.clip(readers["dst"].faces.astype(int) + [60, 0, -40], 0, 255).astype(np.uint8),
                                  readers["dst"].masks)}
    plain = make_batch(tinted, PLAIN.batch_options(), 0, 5)
    recoloured = make_batch(tinted, replace(PLAIN, color_transfer="rct").batch_options(), 0, 5)

    def blue_minus_red(batch: dict, side: str) -> float:
        targets = batch[side][1].astype(float)
        return float((targets[..., 0] - targets[..., 2]).mean())

    # src takes on the bluer colours of the dst faces; the dst faces keep theirs.
    assert blue_minus_red(recoloured, "src") > blue_minus_red(plain, "src") + 40
    assert abs(blue_minus_red(recoloured, "dst") - blue_minus_red(plain, "dst")) < 25


def test_blur_out_mask_and_eyes_mouth_change_the_targets_and_add_masks(readers, media_dir: Path) -> None:
    large = load_faces(media_dir, 128)  # the blur's sigma is resolution / 128: a pixel at 128 px
    plain = make_batch(large, PLAIN.batch_options(), 0, 3)
    blurred = make_batch(large, replace(PLAIN, blur_out_mask=True).batch_options(), 0, 3)
    inside = plain["src"][2] == 255
    assert np.array_equal(plain["src"][1][inside], blurred["src"][1][inside]), "the face is kept"
    assert background_detail(blurred["src"]) < 0.5 * background_detail(plain["src"])
    with_priority = make_batch(large, replace(PLAIN, eyes_mouth_priority=True).batch_options(), 0, 3)
    assert len(plain["src"]) == 3 and len(with_priority["src"]) == 4
    priority = with_priority["src"][3]
    assert priority.shape == plain["src"][2].shape and 0 < (priority > 127).mean() < 0.3
    assert all(np.array_equal(a, b) for a, b in zip(plain["src"], with_priority["src"][:3], strict=True))
