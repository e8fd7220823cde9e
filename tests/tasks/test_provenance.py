from __future__ import annotations

import json
import subprocess

from tasks.provenance import SYNTHETIC_LABEL, container_metadata, pipeline_revision, write_sidecar


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
