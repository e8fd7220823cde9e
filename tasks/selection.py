"""A curated selection: the face ids kept for training and why every other face was left out."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

SELECTION_VERSION = 1


@dataclass
class Selection:
    """Face ids kept for training and, for each left-out face, why."""

    kept: list[str]
    rejected: dict[str, str]
    options: dict

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        payload = {"version": SELECTION_VERSION, **asdict(self)}
        temporary.write_text(json.dumps(payload, indent=1, sort_keys=True))
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> Selection:
        data = json.loads(path.read_text())
        if data.get("version") != SELECTION_VERSION:
            raise ValueError(f"{path}: unknown selection format {data.get('version')!r}; re-run the curate stage")
        return cls(kept=data["kept"], rejected=data["rejected"], options=data["options"])
