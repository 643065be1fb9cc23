"""The one progress bar of long operations (scrub, rebuild, online jobs): bytes, rate, ETA.

Drawn on stderr with rich, and only on a terminal (or not at all when ``quiet``), so scripted
runs get just the summary lines.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def byte_progress(console: Console, *, quiet: bool = False) -> Progress:
    """A progress bar whose tasks count bytes (``completed``/``total`` in bytes)."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
    )
