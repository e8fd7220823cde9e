"""merge: the final model swaps the face in every frame of each dst video -> renders/<name>.mp4."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.params import load_params
from flows.progress import progress_bar
from flows.stages import checkpoint_dir, faces_table, write_metrics
from tasks.images import list_media
from tasks.merge import FaceSwapper, MergeOptions, RenderReport, render_video
from tasks.provenance import container_metadata, pipeline_revision, write_sidecar
from tasks.video import probe_video


@task(retries=1, cache_policy=NONE)
def render_dst_video(video: Path, faces: Path, swapper: FaceSwapper, output: Path, options: MergeOptions, revision: dict) -> dict:
    """Render one dst video and write its provenance sidecar."""
    metadata = container_metadata(revision) if options.label_synthetic else {}
    with progress_bar(f"merge {video.name}", probe_video(video).frame_count) as advance:
        report: RenderReport = render_video(video, faces, swapper, output, options, metadata, on_frame=advance)
    if options.label_synthetic:
        write_sidecar(output, revision, {"render": asdict(report)})
    return asdict(report)


@flow(name="merge", log_prints=True)
def merge_flow(root: Path | None = None) -> dict:
    """Swap the face in every frame of each dst video with the last training stage's model."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    params = load_params(root / "params.yaml")
    options = params.merge
    if not options.label_synthetic:
        logger.warning("merge.label_synthetic is off: renders carry no synthetic-media label or provenance record")
    model_dir = root / checkpoint_dir(params.train.final_stage)
    swapper = FaceSwapper.from_checkpoint(model_dir)
    videos, _ = list_media(root / "data" / "raw" / "dst")
    if not videos:
        raise FileNotFoundError(f"{root / 'data/raw/dst'} holds no video to merge into; add one (see the README)")
    renders = root / "renders"
    shutil.rmtree(renders, ignore_errors=True)
    renders.mkdir(parents=True)
    revision = pipeline_revision(root, params.model_dump(mode="json"))
    logger.info("read %s and %d dst video(s)", model_dir, len(videos))
    reports = []
    for video in videos:
        output = renders / f"{video.stem}.mp4"
        reports.append(render_dst_video(video, root / faces_table("dst"), swapper, output, options, revision))
        logger.info("wrote %s: %d frames, %d faces swapped", output, reports[-1]["frames"], reports[-1]["swapped_faces"])
    metrics = {
        "frames": sum(report["frames"] for report in reports),
        "swapped_faces": sum(report["swapped_faces"] for report in reports),
        "frames_without_face": sum(report["frames_without_face"] for report in reports),
    }
    write_metrics(root / "metrics" / "merge.json", metrics)
    return {"renders": [report["output"] for report in reports], **metrics}
