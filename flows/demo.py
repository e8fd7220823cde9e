"""The bundled demo clips as the default raw inputs, tracked with DVC like a user's own videos."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_CLIPS = {"src": "data/demo/src_pexels_8136210.mp4", "dst": "data/demo/dst_pexels_7154235.mp4"}


def restore_demo_data(root: Path) -> list[Path]:
    """Put the demo clip of each side into an empty or missing data/raw/<side>, then ``dvc add`` it.

    A side that already holds files (your own videos) is left alone. Returns the folders filled.
    """
    filled = []
    for side, clip in DEMO_CLIPS.items():
        folder = root / "data" / "raw" / side
        if folder.is_dir() and any(path for path in folder.iterdir() if not path.name.startswith(".")):
            logger.info("%s already holds inputs; not touching it", folder)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / clip, folder / Path(clip).name)
        filled.append(folder)
    targets = [str(Path("data") / "raw" / side) for side in DEMO_CLIPS]
    dvc = str(Path(sys.executable).with_name("dvc"))
    result = subprocess.run([dvc, "add", "--quiet", *targets], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"dvc add {' '.join(targets)} failed in {root}:\n{result.stderr or result.stdout}")
    return filled
