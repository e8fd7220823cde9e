"""merge: the final model swaps the target's face in every frame of each dst video -> renders/<name>.mp4.

With merge.codec png a video renders to renders/<name>/<frame>.png instead. Earlier renders stay in
place until their replacement is complete; renders of videos no longer in data/raw/dst are removed
at the end. With merge.label_synthetic (the default) every frame carries the invisible watermark,
the finished file (or every PNG frame) is signed with a C2PA manifest saying it is AI-generated, and
the provenance sidecar, written last, records the SHA-256 of the signed file.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.params import load_params
from flows.progress import progress_bar
from flows.stages import XSEG_CHECKPOINT, checkpoint_dir, faces_table, selection_file, write_metrics
from tasks.images import list_media
from tasks.merge import (
    FaceSwapper,
    MergeError,
    MergeOptions,
    RenderReport,
    check_face_type,
    load_xseg_for,
    read_other_people,
    render_video,
)
from tasks.merge_predict import resolve_precision
from tasks.xseg_masks import XsegMasker
from tasks.c2pa_signing import SigningIdentity, ensure_signing_identity, sign_render
from tasks.provenance import SIDECAR_SUFFIX, container_metadata, pipeline_revision, revision_summary, write_sidecar
from tasks.video import probe_video
from tasks.watermark import MAGIC, encode_payload


def choose_render_path(renders: Path, video: Path, options: MergeOptions) -> Path:
    """renders/<stem>.mp4, or the folder renders/<stem>/ of PNG frames."""
    return renders / (video.stem if options.codec == "png" else f"{video.stem}.mp4")


def check_writable(folder: Path) -> None:
    """Raise MergeError now, before any work, when renders cannot be written into ``folder``."""
    probe = folder / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise MergeError(f"{folder}: renders cannot be written here ({error}); make it writable or free some space") from None


@task(retries=1, cache_policy=NONE)
def render_dst_video(video: Path, faces: Path, swapper: FaceSwapper, output: Path, options: MergeOptions, revision: dict,
                     other_people: frozenset[str], identity: SigningIdentity | None, xseg: XsegMasker | None = None) -> dict:
    """Render one dst video; label it (watermark, C2PA signature, provenance sidecar) unless labelling is off."""
    label = options.label_synthetic
    metadata = container_metadata(revision) if label else {}
    summary = revision_summary(revision)
    payload = encode_payload(summary["watermark_revision_tag"]) if label else None
    total = probe_video(video).frame_count - options.start_frame
    if options.end_frame is not None:
        total = min(total, options.end_frame - options.start_frame + 1)
    with progress_bar(f"merge {video.name}", total) as advance:
        report: RenderReport = render_video(video, faces, swapper, output, options, metadata, on_frame=advance,
                                            other_people=other_people, watermark=payload, xseg=xseg)
    sidecar = output.with_name(output.name + SIDECAR_SUFFIX)  # for PNG frames the record sits beside their folder
    if label:  # identity: the project's signer (None only when labelling is off)
        signed = sign_render(output, identity, summary)
        labels = {"c2pa_signed_files": signed, "watermark": {"magic": f"0x{MAGIC:05X}",
                                                             "revision_tag": summary["watermark_revision_tag"]}}
        # auto precision depends on the machine (bf16 where the CPU has it): record what this render used
        precision = str(resolve_precision(options.precision)).removeprefix("torch.")
        write_sidecar(output, revision, {"render": asdict(report), "labels": labels, "model_precision": precision})
    else:
        sidecar.unlink(missing_ok=True)  # an earlier labelled render's record no longer describes this file
    return asdict(report)


def summarize(reports: list[dict]) -> dict:
    """metrics/merge.json: counts over every render and the flicker ratio over all of them."""
    dst_change = sum(report["dst_change"] for report in reports)
    render_change = sum(report["render_change"] for report in reports)
    return {
        "frames": sum(report["frames"] for report in reports),
        "swapped_faces": sum(report["swapped_faces"] for report in reports),
        "other_person_faces": sum(report["other_person_faces"] for report in reports),
        "frames_without_face": sum(report["frames_without_face"] for report in reports),
        # mean |frame-to-frame change| in the face boxes, render / dst: 1.0 = as steady as the dst
        "flicker": round(render_change / dst_change, 4) if dst_change > 0 else None,
    }


@flow(name="merge", log_prints=True)
def merge_flow(root: Path | None = None) -> dict:
    """Swap the target's face in every frame of each dst video with the last training stage's model."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    params = load_params(root / "params.yaml")
    options = params.merge
    if not options.label_synthetic:
        logger.warning("merge.label_synthetic is off: renders carry no C2PA manifest, no watermark and no provenance "
                       "record; do not publish them without saying they are synthetic")
    videos, _ = list_media(root / "data" / "raw" / "dst")
    if not videos:
        raise FileNotFoundError(f"{root / 'data/raw/dst'} holds no video to merge into; add one (see the README)")
    renders = root / "renders"
    check_writable(renders)
    model_dir = root / checkpoint_dir(params.train.final_stage)
    swapper = FaceSwapper.from_checkpoint(model_dir)
    check_face_type(swapper.face_type, params.train.model.face_type, model_dir)
    other_people = read_other_people(root / selection_file("dst"))
    revision = pipeline_revision(root, params.model_dump(mode="json"))
    identity = ensure_signing_identity(root) if options.label_synthetic else None
    xseg = load_xseg_for(options.mask_mode, root / XSEG_CHECKPOINT)
    logger.info("read %s and %d dst video(s); %d faces of other people stay as they are", model_dir, len(videos),
                len(other_people))
    reports, outputs = [], set()
    for video in videos:
        output = choose_render_path(renders, video, options)
        reports.append(render_dst_video(video, root / faces_table("dst"), swapper, output, options, revision, other_people,
                                        identity, xseg))
        outputs |= {output.name, f"{output.name}{SIDECAR_SUFFIX}"}
        logger.info("wrote %s: %d frames, %d faces swapped, flicker %s", output, reports[-1]["frames"],
                    reports[-1]["swapped_faces"], reports[-1]["flicker"])
    for stale in sorted(set(path.name for path in renders.iterdir()) - outputs):
        logger.info("removing %s: its dst video is gone or it was rendered in another format", renders / stale)
        stale_path = renders / stale
        shutil.rmtree(stale_path) if stale_path.is_dir() else stale_path.unlink()
    metrics = summarize(reports)
    write_metrics(root / "metrics" / "merge.json", metrics)
    return {"renders": [report["output"] for report in reports], **metrics}
