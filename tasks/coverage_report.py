"""Pose coverage: do the source faces cover the poses the destination shows?

A model can only paint the src face at poses it has seen. This compares the yaw and pitch
histograms of the (curated) src faces with the dst faces, names the poses the dst needs and the
src lacks, and says what would help (mirroring, uniform yaw sampling, more footage).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from tasks.pose import PITCH_EDGES, YAW_EDGES, pose_bins

NEEDED_SHARE = 0.02  # a dst bin matters when it holds at least 2% of the dst faces
MINIMUM_SRC_FACES = 5  # ... and is covered when the src has at least this many faces there

SRC_COLOR = (200, 120, 40)  # BGR blue
DST_COLOR = (40, 140, 240)  # BGR orange
GAP_COLOR = (60, 60, 220)  # BGR red


@dataclass
class AxisCoverage:
    name: str
    edges: np.ndarray
    src_counts: np.ndarray
    dst_counts: np.ndarray
    gaps: list[int] = field(default_factory=list)  # bin indices the dst needs and the src lacks

    def label(self, index: int) -> str:
        return f"{self.name} {self.edges[index]:+.0f}..{self.edges[index + 1]:+.0f}"


@dataclass
class CoverageReport:
    axes: list[AxisCoverage]
    src_faces: int
    dst_faces: int
    advice: list[str]

    @property
    def gaps(self) -> list[str]:
        return [axis.label(index) for axis in self.axes for index in axis.gaps]


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.bincount(pose_bins(values, edges), minlength=len(edges) - 1)


def find_gaps(src_counts: np.ndarray, dst_counts: np.ndarray) -> list[int]:
    needed = dst_counts >= max(1, NEEDED_SHARE * dst_counts.sum())
    return [int(index) for index in np.nonzero(needed & (src_counts < MINIMUM_SRC_FACES))[0]]


def advise(yaw: AxisCoverage, pitch: AxisCoverage, src_yaw: np.ndarray) -> list[str]:
    """Concrete steps for each gap, most effective first."""
    advice = []
    mirrored = histogram(-src_yaw, yaw.edges)
    fixed_by_flip = [index for index in yaw.gaps if mirrored[index] + yaw.src_counts[index] >= MINIMUM_SRC_FACES]
    if fixed_by_flip:
        labels = ", ".join(yaw.label(index) for index in fixed_by_flip)
        advice.append(f"Turn random_src_flip on in training: mirrored src faces cover {labels}.")
    rest = [index for index in yaw.gaps if index not in fixed_by_flip]
    if rest:
        labels = ", ".join(yaw.label(index) for index in rest)
        advice.append(f"Add src footage with the head turned to {labels} degrees; nothing in the src covers it.")
    if pitch.gaps:
        labels = ", ".join(pitch.label(index) for index in pitch.gaps)
        advice.append(f"Add src footage looking {labels} degrees up/down (positive pitch is up).")
    if yaw.src_counts.max(initial=0) > 0 and yaw.dst_counts.astype(bool).sum() >= 3:
        share = yaw.src_counts.max() / max(1, yaw.src_counts.sum())
        if share > 0.6:
            advice.append(f"{share:.0%} of the src faces share one yaw bin: uniform yaw sampling in training would balance them.")
    return advice or ["The src covers every pose the dst shows."]


def compare_coverage(src_yaw: np.ndarray, src_pitch: np.ndarray, dst_yaw: np.ndarray, dst_pitch: np.ndarray) -> CoverageReport:
    """Histograms of both sides, the gaps and the advice."""
    axes = []
    for name, edges, src, dst in (("yaw", YAW_EDGES, src_yaw, dst_yaw), ("pitch", PITCH_EDGES, src_pitch, dst_pitch)):
        src_counts, dst_counts = histogram(src, edges), histogram(dst, edges)
        axes.append(AxisCoverage(name, edges, src_counts, dst_counts, find_gaps(src_counts, dst_counts)))
    return CoverageReport(axes, len(src_yaw), len(dst_yaw), advise(axes[0], axes[1], src_yaw))


def render_markdown(report: CoverageReport) -> str:
    lines = [
        "# Pose coverage: src against dst",
        "",
        f"{report.src_faces} src faces (after curation), {report.dst_faces} dst faces.",
        "",
    ]
    for axis in report.axes:
        lines += [f"## {axis.name.capitalize()} (degrees)", "", "| bin | src | dst | |", "| --- | ---: | ---: | --- |"]
        for index in range(len(axis.src_counts)):
            if axis.src_counts[index] or axis.dst_counts[index]:
                flag = "**gap**" if index in axis.gaps else ""
                lines.append(f"| {axis.label(index)} | {axis.src_counts[index]} | {axis.dst_counts[index]} | {flag} |")
        lines.append("")
    lines += ["## Gaps", ""] + ([f"- {gap}" for gap in report.gaps] or ["- none"]) + ["", "## Advice", ""]
    lines += [f"- {line}" for line in report.advice]
    return "\n".join(lines) + "\n"


def draw_axis(axis: AxisCoverage, width: int, height: int) -> np.ndarray:
    """One axis as a paired bar chart: src and dst shares per bin, gap bins shaded."""
    canvas = np.full((height, width, 3), 255, np.uint8)
    bins = len(axis.src_counts)
    left, bottom, top = 50, height - 40, 30
    slot = (width - left - 10) / bins
    shares = [counts / max(1, counts.sum()) for counts in (axis.src_counts, axis.dst_counts)]
    peak = max(float(share.max(initial=0)) for share in shares) or 1.0
    for index in range(bins):
        x0 = int(left + index * slot)
        if index in axis.gaps:
            cv2.rectangle(canvas, (x0, top), (int(x0 + slot), bottom), (225, 225, 250), -1)
        for offset, (share, color) in enumerate(zip(shares, (SRC_COLOR, DST_COLOR), strict=True)):
            bar_height = int((bottom - top) * share[index] / peak)
            bx = int(x0 + slot * (0.1 + 0.4 * offset))
            cv2.rectangle(canvas, (bx, bottom - bar_height), (int(bx + slot * 0.38), bottom), color, -1)
        if index % 2 == 0:
            cv2.putText(canvas, f"{axis.edges[index]:+.0f}", (x0, bottom + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.line(canvas, (left, bottom), (width - 10, bottom), (0, 0, 0), 1)
    cv2.putText(canvas, f"{axis.name} (deg): share of faces per bin", (left, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def render_plot(report: CoverageReport, width: int = 900) -> np.ndarray:
    """Both axes stacked, with a legend: blue src, orange dst, red band = gap."""
    legend = np.full((34, width, 3), 255, np.uint8)
    for x, color, text in ((50, SRC_COLOR, "src"), (140, DST_COLOR, "dst"), (230, (225, 225, 250), "gap: dst needs, src lacks")):
        cv2.rectangle(legend, (x, 10), (x + 18, 26), color, -1)
        cv2.putText(legend, text, (x + 24, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([legend] + [draw_axis(axis, width, 220) for axis in report.axes])
