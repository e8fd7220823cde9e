"""coverage: yaw/pitch of the curated src faces against the dst faces -> reports/coverage.{png,md}."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.stages import faces_table, selection_file
from tasks.coverage_report import compare_coverage, render_markdown, render_plot
from tasks.faceset import open_faces
from tasks.selection import Selection


def read_poses(table: Path, keep: set[str] | None = None):
    rows = open_faces(table).to_table(columns=["face_id", "yaw", "pitch"]).to_pydict()
    pairs = [(yaw, pitch) for face_id, yaw, pitch in zip(rows["face_id"], rows["yaw"], rows["pitch"], strict=True)
             if keep is None or face_id in keep]
    array = np.asarray(pairs, np.float32).reshape(-1, 2)
    return array[:, 0], array[:, 1]


@flow(name="coverage", log_prints=True)
def coverage_flow(root: Path | None = None) -> dict:
    """Compare the pose coverage of src and dst and say what is missing."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    kept = set(Selection.load(root / selection_file("src")).kept)
    src_yaw, src_pitch = read_poses(root / faces_table("src"), kept)
    dst_yaw, dst_pitch = read_poses(root / faces_table("dst"))
    logger.info("read %d curated src faces and %d dst faces", len(src_yaw), len(dst_yaw))
    report = compare_coverage(src_yaw, src_pitch, dst_yaw, dst_pitch)
    output = root / "reports"
    output.mkdir(exist_ok=True)
    markdown = render_markdown(report)
    (output / "coverage.md").write_text(markdown)
    temporary = output / "coverage.tmp.png"
    cv2.imwrite(str(temporary), render_plot(report))
    os.replace(temporary, output / "coverage.png")
    create_markdown_artifact(key="pose-coverage", markdown=markdown, description="Pose coverage of src against dst")
    logger.info("wrote %s and %s; gaps: %s", output / "coverage.md", output / "coverage.png", ", ".join(report.gaps) or "none")
    for line in report.advice:
        logger.info("advice: %s", line)
    return {"gaps": report.gaps, "advice": report.advice}
