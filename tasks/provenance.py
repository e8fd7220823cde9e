"""Provenance of renders: what made them, so every output can be traced and labelled as synthetic."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

SYNTHETIC_LABEL = "AI-generated synthetic media (face swap) made with faceflow"


def git_revision(root: Path) -> dict:
    """The project's git commit and whether the work tree had uncommitted changes."""
    def run(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = run("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(run("status", "--porcelain", "--untracked-files=no")) if commit else None}


def file_sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def pipeline_revision(root: Path, params: dict) -> dict:
    """Git commit, dvc.lock hash and the params used: enough to reproduce an output."""
    return {
        "git": git_revision(root),
        "dvc_lock_sha256": file_sha256(root / "dvc.lock"),
        "params": params,
    }


def container_metadata(revision: dict) -> dict[str, str]:
    """Metadata tags written into a rendered video's container."""
    return {
        "comment": SYNTHETIC_LABEL,
        "description": SYNTHETIC_LABEL,
        "encoder_pipeline": f"faceflow git:{(revision['git'].get('commit') or 'unknown')[:12]}",
    }


def write_sidecar(output: Path, revision: dict, extra: dict) -> Path:
    """Write ``<output>.provenance.json`` beside a render."""
    record = {
        "label": SYNTHETIC_LABEL,
        "synthetic": True,
        "file": output.name,
        "file_sha256": file_sha256(output),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": revision,
        **extra,
    }
    path = output.with_name(output.name + ".provenance.json")
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(temporary, path)
    return path
