from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tasks.provenance import (SYNTHETIC_LABEL, ProvenanceError, container_metadata, file_sha256, pipeline_revision,
                              revision_summary, verify_file, watermark_tag, write_sidecar)


def test_revision_and_sidecar_name_the_commit_and_label(tmp_path):
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t.invalid"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    subprocess.run(["git", "add", "dvc.lock"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=tmp_path, check=True, env={**env, "PATH": "/usr/bin:/bin"})
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    revision = pipeline_revision(tmp_path, {"merge": {"crf": 18}})
    assert revision["git"] == {"commit": commit, "dirty": False} and revision["dvc_lock_sha256"]
    assert container_metadata(revision)["comment"] == SYNTHETIC_LABEL
    render = tmp_path / "out.mp4"
    render.write_bytes(b"video bytes")
    record = json.loads(write_sidecar(render, revision, {"frames": 3}).read_text())
    assert record["synthetic"] is True and record["label"] == SYNTHETIC_LABEL and record["frames"] == 3
    assert record["revision"]["params"] == {"merge": {"crf": 18}} and len(record["file_sha256"]) == 64


def test_outside_a_repository_the_commit_is_unknown(tmp_path):
    assert pipeline_revision(tmp_path, {})["git"]["commit"] is None


def test_revision_summary_and_watermark_tag_follow_the_revision(tmp_path):
    revision = pipeline_revision(tmp_path, {"merge": {"crf": 18}})
    summary = revision_summary(revision)
    assert summary["label"] == SYNTHETIC_LABEL and len(summary["params_sha256"]) == 64
    assert summary == revision_summary(pipeline_revision(tmp_path, {"merge": {"crf": 18}})), "deterministic"
    changed = revision_summary(pipeline_revision(tmp_path, {"merge": {"crf": 19}}))
    assert changed["params_sha256"] != summary["params_sha256"]
    assert 0 <= summary["watermark_revision_tag"] < 256 and summary["watermark_revision_tag"] == watermark_tag(summary)


def test_folder_digest_covers_every_frame(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "000000.png").write_bytes(b"a")
    (folder / "000001.png").write_bytes(b"b")
    before = file_sha256(folder)
    (folder / "000001.png").write_bytes(b"c")
    assert before != file_sha256(folder) and len(before) == 64 and file_sha256(tmp_path / "absent") is None


def test_verify_reports_missing_labels_and_a_stale_sidecar(tmp_path, media_dir):
    clip = tmp_path / "clip.mp4"
    shutil.copy(media_dir / "videos/talking_head_a.mp4", clip)
    report = verify_file(clip, sample_frames=6)
    assert [check.status for check in report.checks] == ["missing", "missing", "missing"] and not report.all_found
    write_sidecar(clip, pipeline_revision(tmp_path, {}), {})
    clip.write_bytes(clip.read_bytes() + b"\0")  # changed after its record was written
    sidecar = {check.name: check for check in verify_file(clip, sample_frames=6).checks}["sidecar"]
    assert sidecar.status == "invalid" and "SHA-256 differs" in sidecar.details["problem"]


def test_verify_names_what_it_cannot_read(tmp_path):
    with pytest.raises(ProvenanceError, match="absent.mp4: no such file"):
        verify_file(tmp_path / "absent.mp4")
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(ProvenanceError, match="text.mp4: not a video or image"):
        verify_file(tmp_path / "text.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProvenanceError, match="without PNG or JPEG frames"):
        verify_file(tmp_path / "empty")
