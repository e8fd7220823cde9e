"""`faceflow verify FILE`: read a render's three synthetic-media labels back.

Prints one row per label (C2PA manifest, watermark, provenance sidecar): found, missing or
invalid, with what it says. Exit code 0 when all three are found and valid, 1 when one is missing
or invalid, 2 when the file cannot be read at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tasks.provenance import ProvenanceError, VerifyReport, verify_file

STATUS_STYLES = {"found": "green", "missing": "yellow", "invalid": "bold red"}
EXIT_LABELLED, EXIT_NOT_LABELLED, EXIT_UNREADABLE = 0, 1, 2


def build_table(report: VerifyReport) -> Table:
    """The report as a table: label, status, details (one "key: value" per line)."""
    table = Table(title=f"synthetic-media labels of {escape(str(report.path))}", title_justify="left")
    table.add_column("label")
    table.add_column("status")
    table.add_column("details")
    for check in report.checks:
        details = "\n".join(f"{key}: {value}" for key, value in check.details.items())
        style = STATUS_STYLES[check.status]
        table.add_row(check.name, f"[{style}]{check.status}[/]", escape(details))
    return table


def verify_command(
    file: Annotated[Path, typer.Argument(help="A rendered video or image, or a folder of PNG frames.")],
    root: Annotated[Path | None, typer.Option(
        "--root", help="Project whose signing certificate counts as trusted; default: found above FILE.")] = None,
    frames: Annotated[int, typer.Option("--frames", min=1, max=500, help="Frames read for the watermark.")] = 24,
) -> None:
    """Report the C2PA manifest, invisible watermark and provenance sidecar of a render."""
    console = Console()
    try:
        report = verify_file(file, root.resolve() if root else None, sample_frames=frames)
    except ProvenanceError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(EXIT_UNREADABLE) from None
    console.print(build_table(report))
    if report.all_found:
        console.print("all three labels found: this file is labelled as synthetic media made with faceflow")
    else:
        console.print(f"{sum(check.status != 'found' for check in report.checks)} of 3 labels missing or invalid")
    raise typer.Exit(EXIT_LABELLED if report.all_found else EXIT_NOT_LABELLED)
