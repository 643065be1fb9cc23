"""``fusenas scrub``, ``replace`` and ``add-spare`` on an unmounted volume.

Each command locks the volume directory (like a mount or fsck), opens the volume without the
checkpointer or the spare manager, runs the engine's job with a progress bar on stderr, and
prints one summary line. ``FusenasError``s become one line on stderr and exit status 1; they
are caught inside the open volume too, so that the volume still closes cleanly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from rich.console import Console

from fusenas.cli.progress import byte_progress
from fusenas.engine import Engine, open_volume
from fusenas.engine.config import lock_volume
from fusenas.engine.rebuild import replace
from fusenas.engine.scrub import scrub_volume
from fusenas.engine.spares import add_spare
from fusenas.errors import FusenasError


@asynccontextmanager
async def _opened(voldir: Path, command: str) -> AsyncIterator[Engine]:
    fd = lock_volume(voldir)
    try:
        async with open_volume(voldir, checkpointer=False, spares=False) as vol:
            for note in vol.notes:
                print(f"fusenas {command}: {note}")
            yield vol
    finally:
        os.close(fd)


async def _run(voldir: Path, command: str, body: Callable[[Engine], Awaitable[int]]) -> int:
    try:
        async with _opened(voldir, command) as vol:
            try:
                return await body(vol)
            except FusenasError as exc:  # inside the volume's nursery: report it here
                print(f"fusenas {command}: {exc}", file=sys.stderr)
                return 1
    except FusenasError as exc:
        print(f"fusenas {command}: {exc}", file=sys.stderr)
        return 1


async def scrub(voldir: Path, *, rate: float | None, quiet: bool) -> int:
    """Exit status 0 when nothing is unrecoverable (repaired mismatches included), else 1."""

    async def body(vol: Engine) -> int:
        with byte_progress(Console(stderr=True), quiet=quiet) as bar:
            task = bar.add_task("scrub", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            report = await scrub_volume(vol, rate=rate, progress=progress)
        for p in report.problems[:50]:
            print(f"fusenas scrub: {p}")
        print(f"fusenas scrub: {report.summary()}")
        return 1 if report.unrecoverable else 0

    return await _run(voldir, "scrub", body)


async def replace_member(voldir: Path, old: str, new: Path, *, workers: int, quiet: bool) -> int:
    async def body(vol: Engine) -> int:
        chunk = vol.array.geometry.chunk
        with byte_progress(Console(stderr=True), quiet=quiet) as bar:
            task = bar.add_task("rebuild", total=None)

            def progress(done: int, total: int) -> None:  # stripes: one chunk per member each
                bar.update(task, completed=done * chunk, total=total * chunk)

            stats = await replace(vol, old, new, workers=workers, progress=progress)
        print(
            f"fusenas replace: rebuilt {stats.bytes} bytes per member in "
            f"{stats.seconds:.1f} s ({stats.mb_per_s:.1f} MB/s, {stats.steals} steals)"
        )
        return 0

    return await _run(voldir, "replace", body)


async def add_spare_member(voldir: Path, path: Path) -> int:
    async def body(vol: Engine) -> int:
        added = await add_spare(vol, path)
        print(f"fusenas add-spare: {added} is a spare of {voldir}")
        return 0

    return await _run(voldir, "add-spare", body)
