"""Merge mask modes, the mask's temporal smoothing along a track, and the flicker measure on real frames."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.merge_masks import (MASK_MODE_CHOICES, MASK_RECIPES, FlickerMeter, MaskSmoother, MergeMaskError, build_face_mask,
                               needs_dst_mask)
from tasks.video import iter_frames

SIDE = 64


@pytest.fixture(scope="module")
def masks() -> dict[str, np.ndarray]:
    """Three overlapping (S, S) masks: a hull disc, a soft predicted square, a dst band."""
    rows, columns = np.mgrid[:SIDE, :SIDE]
    hull = ((rows - 32) ** 2 + (columns - 32) ** 2 < 24 ** 2).astype(np.float32)
    predicted = np.zeros((SIDE, SIDE), np.float32)
    predicted[8:48, 8:48] = 0.75
    dst = np.zeros((SIDE, SIDE), np.float32)
    dst[20:60, :] = 0.5
    return {"hull": hull, "predicted": predicted, "dst": dst}


def test_every_mode_has_a_recipe_and_the_xseg_modes_are_deepfacelabs() -> None:
    assert set(MASK_RECIPES) == set(MASK_MODE_CHOICES)
    assert {mode for mode in MASK_MODE_CHOICES if "xseg" in mode} == {
        "xseg_predicted", "xseg_dst", "xseg_both", "learned_xseg_all"}


@pytest.mark.parametrize("mode, expected", [
    ("hull", lambda m: m["hull"]),
    ("learned_predicted", lambda m: m["predicted"]),
    ("learned_dst", lambda m: m["dst"]),
    ("learned_both", lambda m: m["predicted"] * m["dst"]),
    ("learned_either", lambda m: np.maximum(m["predicted"], m["dst"])),
    ("hull_learned_predicted", lambda m: m["hull"] * m["predicted"]),
    ("hull_learned_dst", lambda m: m["hull"] * m["dst"]),
    ("hull_learned_both", lambda m: m["hull"] * m["predicted"] * m["dst"]),
])
def test_modes_combine_the_masks_as_deepfacelab_names_them(masks, mode, expected) -> None:
    combined = build_face_mask(mode, masks["hull"], masks["predicted"], masks["dst"])
    assert combined.dtype == np.float32 and combined.shape == (SIDE, SIDE)
    np.testing.assert_allclose(combined, expected(masks), atol=1e-6)


def test_only_modes_using_the_dst_mask_ask_for_the_second_decoder_pass(masks) -> None:
    assert {mode for mode in MASK_MODE_CHOICES if needs_dst_mask(mode)} == {
        "learned_dst", "learned_both", "learned_either", "hull_learned_dst", "hull_learned_both", "learned_xseg_all"}
    # modes without it work when it is not given
    build_face_mask("hull_learned_predicted", masks["hull"], masks["predicted"])
    with pytest.raises(MergeMaskError, match="'learned_both' needs the learned dst mask"):
        build_face_mask("learned_both", masks["hull"], masks["predicted"])


def test_learned_mask_noise_is_cleared_and_bad_inputs_are_named(masks) -> None:
    noisy = masks["predicted"] + 0.002  # below one 8-bit level outside the square
    combined = build_face_mask("learned_predicted", masks["hull"], noisy)
    assert combined[0, 0] == 0.0 and combined[20, 20] == pytest.approx(0.752)
    with pytest.raises(MergeMaskError, match="'xseg_dst' needs the xseg_dst mask of XSeg"):
        build_face_mask("xseg_dst", masks["hull"], masks["predicted"])
    with pytest.raises(MergeMaskError, match="unknown mask mode 'xseg'"):
        build_face_mask("xseg", masks["hull"], masks["predicted"])  # type: ignore[arg-type]
    with pytest.raises(MergeMaskError, match=r"predicted mask has shape \(32, 32\)"):
        build_face_mask("learned_predicted", masks["hull"], masks["predicted"][:32, :32])


def test_smoothing_averages_a_track_over_consecutive_frames_only() -> None:
    smoother = MaskSmoother(previous_weight=0.5)
    ones, zeros = np.ones((4, 4), np.float32), np.zeros((4, 4), np.float32)

    assert smoother.smooth(track_id=1, frame_index=10, mask=ones) is ones  # a track's first frame is as given
    np.testing.assert_allclose(smoother.smooth(1, 11, zeros), 0.5)
    np.testing.assert_allclose(smoother.smooth(1, 12, zeros), 0.25)
    np.testing.assert_allclose(smoother.smooth(2, 12, zeros), 0.0, err_msg="another track keeps its own history")
    np.testing.assert_allclose(smoother.smooth(1, 14, ones), 1.0, err_msg="a skipped frame starts the track over")
    off = MaskSmoother(previous_weight=0.0)
    off.smooth(1, 0, ones)
    assert off.smooth(1, 1, zeros) is zeros
    with pytest.raises(MergeMaskError, match=r"\[0, 1\)"):
        MaskSmoother(1.0)


def test_smoothing_steadies_a_flickering_mask() -> None:
    rng = np.random.default_rng(0)
    smoother = MaskSmoother(previous_weight=0.6)
    raw = [np.clip(0.5 + rng.normal(0.0, 0.2, (8, 8)), 0, 1).astype(np.float32) for _ in range(30)]
    smoothed = [smoother.smooth(0, index, mask) for index, mask in enumerate(raw)]

    def change(sequence: list[np.ndarray]) -> float:
        return float(np.mean([np.abs(after - before).mean() for before, after in zip(sequence, sequence[1:])]))

    assert change(smoothed) < 0.6 * change(raw)


@pytest.fixture(scope="module")
def clip_frames(media_dir) -> list[np.ndarray]:
    frames = []
    for index, _, frame in iter_frames(media_dir / "videos/talking_head_glasses_audio.mp4"):
        frames.append(frame)
        if index == 11:
            return frames
    raise AssertionError("the clip is shorter than 12 frames")


def test_flicker_is_one_for_the_dst_itself_and_zero_for_a_frozen_render(clip_frames) -> None:
    face_box = [np.array([[180.0, 120.0], [340.0, 330.0]])]  # two corners are enough for the box
    same, frozen = FlickerMeter(), FlickerMeter()
    for index, frame in enumerate(clip_frames):
        same.add(index, frame, frame, face_box)
        frozen.add(index, frame, clip_frames[0], face_box)

    assert same.dst_change > 0
    assert same.ratio == pytest.approx(1.0)
    assert frozen.ratio == pytest.approx(0.0)


def test_flicker_counts_only_consecutive_frames_with_faces(clip_frames) -> None:
    meter = FlickerMeter()
    box = [np.array([[180.0, 120.0], [340.0, 330.0]])]
    meter.add(0, clip_frames[0], clip_frames[0], box)
    meter.add(2, clip_frames[2], clip_frames[5], box)  # frame 1 missing: no pair
    assert meter.ratio is None
    meter.add(3, clip_frames[3], clip_frames[3], [])  # no swapped face: nothing measured
    assert meter.ratio is None
    meter.add(4, clip_frames[4], clip_frames[4], box)
    assert meter.ratio == pytest.approx(1.0)
