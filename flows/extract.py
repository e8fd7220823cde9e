"""extract@<side>: videos and photos in data/raw/<side> -> data/<side>/faces.lance."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.params import Side, load_params
from flows.progress import progress_bar
from tasks.extract import (
    FaceOptions,
    SideOptions,
    SourceReport,
    create_face_analyzer,
    expected_frames,
    extract_source,
    plan_extraction,
    settings_fingerprint,
)
from tasks.decisions import load_landmark_overrides
from tasks.faceset import finalize_table, open_faces
from tasks.video import VideoError


class ExtractionError(RuntimeError):
    """Some sources could not be read; the faces of every other source were kept."""


def retry_unless_bad_media(task, task_run, state) -> bool:
    """Retry I/O hiccups, not files that are broken (retrying cannot fix those)."""
    try:
        state.result()
    except (VideoError, ValueError):
        return False
    except Exception:
        return True
    return False


@task(retries=2, retry_delay_seconds=1, retry_condition_fn=retry_unless_bad_media, cache_policy=NONE)
def extract_source_faces(
    path: Path, source_id: str, table: Path, analyzer, faces: FaceOptions, side: SideOptions, root: Path, overrides: dict
) -> SourceReport:
    """Append the faces of one source file to the faces table."""
    logger = get_run_logger()
    with progress_bar(f"extract {path.name}", expected_frames(path, side)) as advance:
        report = extract_source(path, source_id, table, analyzer, faces, side, root, on_frame=advance, overrides=overrides)
    if report.status == "failed":
        logger.error("%s: %s (kept the %d faces found before the error)", path, report.error, report.faces)
    else:
        logger.info("%s: %d faces in %d analysed frames", path, report.faces, report.frames)
    return report


@flow(name="extract", log_prints=True)
def extract_flow(side: Side, root: Path | None = None) -> dict:
    """Extract the faces of one side, skipping sources the table already holds."""
    logger = get_run_logger()
    root = (root or Path.cwd()).resolve()
    params = load_params(root / "params.yaml")
    faces, side_options = params.extract.faces, params.extract.side(side)
    raw_dir, table = root / "data" / "raw" / side, root / "data" / side / "faces.lance"
    overrides = load_landmark_overrides(root / "data" / side / "landmarks.yaml")
    plan = plan_extraction(raw_dir, table, settings_fingerprint(faces, side_options), root, overrides)
    logger.info("read %s: %d sources to extract, %d already in %s", raw_dir, len(plan.pending), len(plan.done), table)
    reports: list[SourceReport] = []
    if plan.pending:
        analyzer = create_face_analyzer(faces, side_options)
        for path, source_id in plan.pending.items():
            reports.append(extract_source_faces(path, source_id, table, analyzer, faces, side_options, root, overrides))
    finalize_table(table)
    total = open_faces(table).count_rows()
    logger.info("wrote %s: %d faces", table, total)
    if total == 0:
        logger.warning(
            "no faces found in %s: the table is empty. Add videos or photos in which a face is clearly visible, "
            "or lower extract.%s.min_face_size / raise extract.%s.upsample",
            raw_dir, side, side,
        )
    failed = [report for report in reports if report.status == "failed"]
    if failed:
        names = "\n".join(f"  {report.path}: {report.error}" for report in failed)
        raise ExtractionError(
            f"{len(failed)} source(s) in {raw_dir} could not be read to the end:\n{names}\n"
            f"Faces from every other source (and those read before each error) are kept in {table}. "
            "Re-encode or remove the file(s) and run again: finished sources are not extracted twice."
        )
    return {"side": side, "faces": total, "extracted": [report.path for report in reports]}
