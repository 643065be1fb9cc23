"""``fusenas scrub VOLUME-DIR``: read every stripe, verify checksums and parity, repair.

Offline (the volume is locked like fsck), or online: ``fusenas scrub MOUNTPOINT`` asks the
daemon through its control socket (``fusenas.control.Jobs``) to run ``scrub_volume`` in its
nursery, rate-limited, while the files keep changing. Per stripe (row), in order:

1. **checksums** — every mapped, written block of the row is read from the member(s) holding
   it (every copy, for mirrors) and compared with the crc32c of its extent map; a mismatch is
   healed by ``Array.read_verified`` (good bytes from redundancy, bad copy rewritten);
2. **redundancy** — under the row lock, the row is read again and parity recomputed from the
   data (RAID5/6) or the copies compared (RAID1/10); a mismatch is repaired by rewriting the
   parity (or the other copies) from the data, which step 1 just verified where it is mapped.

Counts: bytes checked, checksum mismatches, parity/copy mismatches, repaired, unrecoverable.
Rate limit: the scrub sleeps so its reads stay under ``rate`` bytes per second.
Exit status: 0 when nothing is unrecoverable (mismatches that were repaired included), 1
otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import crc32c
import trio

from fusenas.errors import FusenasError
from fusenas.filesystem import Volume, open_volume
from fusenas.metrics import INTEGRITY
from fusenas.units import BLOCK_SIZE
from fusenas.voldir import lock_volume
from fusenas.volume import parity
from fusenas.volume.array import MemberWrite
from fusenas.volume.layout import Level


@dataclass
class ScrubReport:
    stripes: int = 0
    bytes_checked: int = 0
    blocks_checked: int = 0
    checksum_mismatches: int = 0
    parity_mismatches: int = 0
    repaired: int = 0
    unrecoverable: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"checked {self.stripes} stripes ({self.bytes_checked} bytes, "
            f"{self.blocks_checked} data blocks); mismatches: {self.checksum_mismatches} "
            f"checksum, {self.parity_mismatches} parity/copy; repaired {self.repaired}; "
            f"unrecoverable {self.unrecoverable}"
        )


class _Crcs:
    """The crc map, rebuilt when metadata changed since (online: files keep changing)."""

    def __init__(self, vol: Volume) -> None:
        self.vol = vol
        self.lsn = vol.wal.last_lsn
        self.map = _crc_map(vol)

    def refresh(self) -> None:
        if self.vol.wal.last_lsn != self.lsn:
            self.lsn = self.vol.wal.last_lsn
            self.map = _crc_map(self.vol)


def _crc_map(vol: Volume) -> dict[int, int]:
    """Volume block → crc32c of every mapped, written block."""
    out: dict[int, int] = {}
    for _ino, node in vol.meta.inodes.items():
        if node.extents is None:
            continue
        for m in vol.meta.map(_ino, 0, node.extents.end_block()):
            if m.vol_block is None:
                continue
            for i, crc in enumerate(m.crcs):
                if crc >= 0:
                    out[m.vol_block + i] = crc
    return out


def _bad(got: dict[int, bytes], k: int, want: int) -> bool:
    """True if some copy of the block at row offset ``k`` fails ``want`` (or none was read)."""
    if not got:
        return True
    return any(crc32c.crc32c(d[k : k + BLOCK_SIZE]) != want for d in got.values())


async def scrub_volume(
    vol: Volume,
    *,
    rate: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    online: bool = False,
) -> ScrubReport:
    """Scrub every stripe of ``vol`` (see the module docstring). ``progress(done, total)`` in
    member-row bytes. ``online``: the volume is mounted and files change meanwhile (a block
    that fails its check is looked at again after the stripe cache was flushed and the crc
    map refreshed, so a block rewritten during the scrub is not reported)."""
    array = vol.members.array
    g = array.geometry
    table = _Crcs(vol)
    report = ScrubReport()
    total = g.stripes * g.chunk * g.members
    start = trio.current_time()
    for s in range(g.stripes):
        member_off = s * g.chunk
        # 1. checksums of the mapped blocks of the row, every copy.
        for i in range(g.data_per_stripe):
            copies = g.data_copies(s, i)
            base = s * g.stripe_data_size + i * g.chunk
            blocks = [
                (k, (base + k - vol.data_start) // BLOCK_SIZE)
                for k in range(0, g.chunk, BLOCK_SIZE)
                if base + k >= vol.data_start
            ]
            if not any(vb in table.map for _k, vb in blocks):
                continue
            got = await array._read_row_raw(copies, member_off, g.chunk)
            settled = False
            for k, vb in blocks:
                want = table.map.get(vb)
                if want is None:
                    continue
                if _bad(got, k, want) and online and not settled:
                    # A mounted volume: the block may have been remapped since the map was
                    # built, or its new bytes may still sit in the stripe cache. Settle both,
                    # then look again at the whole row.
                    await vol.cache.flush()
                    table.refresh()
                    got = await array._read_row_raw(copies, member_off, g.chunk)
                    settled = True
                    want = table.map.get(vb)
                    if want is None:
                        continue
                report.blocks_checked += 1
                if not _bad(got, k, want):
                    continue
                report.checksum_mismatches += 1

                def ok(b: bytes, w: int = want) -> bool:
                    return bool(crc32c.crc32c(b) == w)

                result = await array.read_verified(base + k, BLOCK_SIZE, ok)
                if result.data is None and online:
                    await vol.cache.flush()
                    table.refresh()
                    if table.map.get(vb) != want:  # rewritten meanwhile: not a loss
                        report.checksum_mismatches -= 1
                        continue
                if result.data is None:
                    report.unrecoverable += 1
                    report.problems.append(f"volume block {vb}: no good copy left")
                else:
                    report.repaired += len(result.repaired)
        # 2. parity / copies, under the row lock.
        async with array.stripe_lock(s):
            await _check_row(vol, s, report)
        report.stripes += 1
        report.bytes_checked += g.chunk * g.members
        INTEGRITY.progress["scrub"] = (report.bytes_checked, total)
        if progress is not None:
            progress(report.bytes_checked, total)
        if rate:
            ahead = report.bytes_checked / rate - (trio.current_time() - start)
            if ahead > 0:
                await trio.sleep(ahead)
    await array.flush()
    return report


async def _check_row(vol: Volume, s: int, report: ScrubReport) -> None:
    array = vol.members.array
    g = array.geometry
    member_off = s * g.chunk
    writes: list[MemberWrite] = []
    if g.parity_count:
        dmembers = [g.data_copies(s, i)[0] for i in range(g.data_per_stripe)]
        pmembers = list(g.parity_members(s))
        got = await array._read_row_raw([*dmembers, *pmembers], member_off, g.chunk)
        if any(m not in got for m in dmembers):
            return  # degraded row: nothing to compare against
        data = [got[m] for m in dmembers]
        want = [parity.gen_p(data)] if len(pmembers) == 1 else list(parity.gen_pq(data))
        for m, pv in zip(pmembers, want, strict=True):
            if m in got and got[m] != pv:
                writes.append(MemberWrite(m, array.data_offset + member_off, pv))
    elif g.level != Level.RAID0:
        for i in range(g.data_per_stripe):
            copies = g.data_copies(s, i)
            got = await array._read_row_raw(copies, member_off, g.chunk)
            ref = next((got[m] for m in copies if m in got), None)
            for m in copies:
                if ref is not None and m in got and got[m] != ref:
                    writes.append(MemberWrite(m, array.data_offset + member_off, ref))
    if writes:
        report.parity_mismatches += 1
        await array.issue(writes)
        report.repaired += len(writes)


async def run_scrub(voldir: Path, *, rate: float | None = None, quiet: bool = False) -> int:
    """The ``fusenas scrub`` command on an unmounted volume: progress bar, summary, status."""
    from rich.console import Console

    from fusenas.progress import byte_progress

    fd = lock_volume(voldir)
    console = Console(stderr=True)
    try:
        async with open_volume(voldir, checkpointer=False) as vol:
            for note in vol.notes:
                print(f"fusenas scrub: {note}")
            with byte_progress(console, quiet=quiet) as bar:
                task = bar.add_task("scrub", total=None)

                def progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                try:
                    report = await scrub_volume(vol, rate=rate, progress=progress)
                except FusenasError as exc:  # inside the volume's nursery: report it here
                    print(f"fusenas scrub: {exc}", file=sys.stderr)
                    return 1
    except FusenasError as exc:
        print(f"fusenas scrub: {exc}", file=sys.stderr)
        return 1
    finally:
        import os

        os.close(fd)
    for p in report.problems[:50]:
        print(f"fusenas scrub: {p}")
    print(f"fusenas scrub: {report.summary()}")
    return 1 if report.unrecoverable else 0
