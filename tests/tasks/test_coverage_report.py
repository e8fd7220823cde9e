"""Pose coverage: gaps are the poses the dst needs and the src lacks, with advice that fits them."""

from __future__ import annotations

import numpy as np

from tasks.coverage_report import compare_coverage, render_markdown, render_plot


def poses(yaw_center: float, count: int, spread: float = 3.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(yaw_center, spread, count).astype(np.float32), rng.normal(0, 3, count).astype(np.float32)


def test_a_frontal_src_against_a_turning_dst_has_named_gaps():
    src_yaw, src_pitch = poses(0, 200)
    dst_yaw = np.concatenate([poses(0, 50)[0], poses(35, 50, seed=1)[0]])
    dst_pitch = np.zeros_like(dst_yaw)
    report = compare_coverage(src_yaw, src_pitch, dst_yaw, dst_pitch)
    assert any(gap.startswith("yaw +30") for gap in report.gaps)
    assert not any(gap.startswith("yaw +0") for gap in report.gaps)
    assert any("Add src footage with the head turned" in line for line in report.advice)


def test_mirroring_is_advised_when_the_other_side_is_covered():
    src_yaw, src_pitch = poses(-35, 100)
    dst_yaw, dst_pitch = poses(35, 100, seed=2)
    report = compare_coverage(src_yaw, src_pitch, dst_yaw, dst_pitch)
    assert report.gaps and any("random_src_flip" in line for line in report.advice)


def test_full_coverage_says_so_and_renders():
    src_yaw, src_pitch = poses(0, 300, spread=20)
    dst_yaw, dst_pitch = poses(0, 100, spread=5, seed=3)
    report = compare_coverage(src_yaw, src_pitch, dst_yaw, dst_pitch)
    assert report.gaps == [] and report.advice == ["The src covers every pose the dst shows."]
    markdown = render_markdown(report)
    assert "| yaw +0..+10 |" in markdown and "## Advice" in markdown
    plot = render_plot(report)
    assert plot.dtype == np.uint8 and plot.shape[1] == 900 and plot.std() > 10
