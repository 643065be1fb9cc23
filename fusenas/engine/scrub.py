"""Scrub: read every stripe of an open volume, verify checksums and parity, repair.

``fusenas scrub`` runs it offline (``fusenas.cli.offline``) or online in the daemon's nursery
(``fusenas.cli.control.Jobs``), rate-limited, while the files keep changing. Per stripe (row),
in order:

1. **checksums** — every mapped, written block of the row is read from the member(s) holding
   it (every copy, for mirrors) and compared with the crc32c of its extent map; a mismatch is
   healed by ``Array.read_verified`` (good bytes from redundancy, bad copy rewritten);
2. **redundancy** — under the row lock, the row is read again and parity recomputed from the
   data (RAID5/6) or the copies compared (RAID1/10); a mismatch is repaired by rewriting the
   parity (or the other copies) from the data, which step 1 just verified where it is mapped.

Counts: bytes checked, checksum mismatches, parity/copy mismatches, repaired, unrecoverable.
Rate limit: the scrub sleeps so its reads stay under ``rate`` bytes per second.
Progress: ``Engine.integrity.progress["scrub"]`` (member-row bytes), and every checksum
mismatch found is counted in ``Engine.integrity`` (repaired or not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import crc32c
import trio

from fusenas.engine.core import Engine
from fusenas.units import BLOCK_SIZE
from fusenas.volume import parity
from fusenas.volume.layout import Level
from fusenas.volume.writes import MemberWrite


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

    def __init__(self, vol: Engine) -> None:
        self.vol = vol
        self.lsn = vol.wal.last_lsn
        self.map = _crc_map(vol)

    def refresh(self) -> None:
        if self.vol.wal.last_lsn != self.lsn:
            self.lsn = self.vol.wal.last_lsn
            self.map = _crc_map(self.vol)


def _crc_map(vol: Engine) -> dict[int, int]:
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
    vol: Engine,
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
                (k, (base + k - vol.blocks.data_start) // BLOCK_SIZE)
                for k in range(0, g.chunk, BLOCK_SIZE)
                if base + k >= vol.blocks.data_start
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
                vol.integrity.checksum_errors_found += 1
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
        vol.integrity.progress["scrub"] = (report.bytes_checked, total)
        if progress is not None:
            progress(report.bytes_checked, total)
        if rate:
            ahead = report.bytes_checked / rate - (trio.current_time() - start)
            if ahead > 0:
                await trio.sleep(ahead)
    await array.flush()
    return report


async def _check_row(vol: Engine, s: int, report: ScrubReport) -> None:
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
