"""Human decisions about faces, kept as small git-tracked files the stages read.

``data/<side>/rejects.yaml`` maps face ids to the reason a person rejected them. Face ids are
derived from content hashes, so the decisions survive re-extraction, and because the file is
versioned with everything else, rolling the pipeline back restores the decisions of that time.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

REJECTS_HEADER = """\
# Faces rejected by hand for this side: face id -> why. Curation leaves them out of training.
# Face ids come from `faceflow faceset review` contact sheets (or the faces table); they stay the
# same when faces are extracted again. Commit this file with your pipeline changes.
"""


class DecisionsError(ValueError):
    """A decisions file cannot be read; the message names it and the problem."""


def load_rejects(path: Path) -> dict[str, str]:
    """face id -> reason; a missing file means no decisions yet.

    Raises:
        DecisionsError: the file is not YAML or not a mapping under ``rejects``.
    """
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise DecisionsError(f"{path} is not valid YAML ({error}); fix it or restore it with git") from None
    rejects = data.get("rejects", {}) if isinstance(data, dict) else None
    if rejects is None:
        rejects = {}
    if not isinstance(rejects, dict) or not all(isinstance(key, str) for key in rejects):
        raise DecisionsError(f"{path}: 'rejects' must map face ids to reasons, e.g. 'rejects: {{abc123-000010-00: blurry}}'")
    unknown = sorted(set(data) - {"rejects"}) if isinstance(data, dict) else []
    if unknown:
        raise DecisionsError(f"{path}: unknown keys {unknown}; the file holds only 'rejects'")
    return {face_id: str(reason or "rejected by hand") for face_id, reason in rejects.items()}


def save_rejects(path: Path, rejects: dict[str, str]) -> None:
    """Write the rejects file atomically, sorted so diffs stay small."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump({"rejects": dict(sorted(rejects.items()))}, sort_keys=False, allow_unicode=True, width=120)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(REJECTS_HEADER + body)
    os.replace(temporary, path)
