"""Progress bars for long stages (rich), silenced by ``faceflow --quiet`` or FACEFLOW_PROGRESS=0."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_enabled() -> bool:
    return os.environ.get("FACEFLOW_PROGRESS", "1") != "0"


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n=1)``; draws nothing when progress is silenced."""
    if not progress_enabled():
        yield lambda count=1: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(file=sys.stderr), transient=False) as progress:
        task_id = progress.add_task(description, total=total)
        yield lambda count=1: progress.advance(task_id, count)
