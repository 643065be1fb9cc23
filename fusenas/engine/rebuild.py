"""Rebuild a member from the others, with a pool of work-stealing workers; replace.

Design note
===========

Units: stripes (rows) for the work split; the superblock's ``recovery_offset`` is a member
byte offset relative to the data area (``stripe * chunk``). ``RECOVERY_COMPLETE`` means "no
rebuild in progress".

Work stealing
    The stripe range ``[start, stripes)`` is cut into one contiguous range per worker. A worker
    rebuilds its range from the bottom up (``Array.rebuild_stripe``, which holds the row lock,
    so a foreground write of the row lands either before the row is read or after the rebuilt
    chunk is written — never overwritten by stale reconstructed bytes). A worker that runs dry
    steals the upper half of the unstarted part of the largest remaining range. All of this
    runs on one trio thread: between awaits nothing else touches the ranges, so no lock.

Progress and resume
    The *done prefix* is the lowest unfinished stripe of any range. Every
    ``CHECKPOINT_BYTES`` of progress the prefix is written to the superblocks as
    ``recovery_offset`` (the member's state stays ``REBUILDING``); an interrupted rebuild (crash,
    unmount) resumes from there on the next open. The new member receives every foreground
    write from the moment it is attached, so stripes below the prefix stay correct.

    Limitation: reconstruction trusts the surviving members; a block that rotted on a survivor
    is rebuilt wrong onto the new member (the block checksums still catch it on read).

Cancellation: cancelling a rebuild leaves the member ``REBUILDING`` with the last recorded
prefix; nothing else to undo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from fusenas.engine.config import save_config
from fusenas.engine.core import Engine
from fusenas.errors import VolumeError
from fusenas.volume.array import Array
from fusenas.volume.device import BlockDevice, DeviceProvider
from fusenas.volume.member import FILES
from fusenas.volume.superblock import (
    RECOVERY_COMPLETE,
    MemberState,
)

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 4
#: Progress between two recovery-offset checkpoints in the superblocks, member bytes.
CHECKPOINT_BYTES = 64 << 20

Progress = Callable[[int, int], None]  # (stripes done, stripes total)


@dataclass
class _Range:
    lo: int  # first unfinished stripe
    hi: int  # end (exclusive)
    busy: bool = False


@dataclass
class RebuildStats:
    stripes: int
    bytes: int
    seconds: float
    steals: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / (1 << 20) / self.seconds if self.seconds > 0 else 0.0


async def rebuild_member(
    vol: Engine,
    member: int,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
    checkpoint_bytes: int = CHECKPOINT_BYTES,
    only: list[tuple[int, int]] | None = None,
) -> RebuildStats:
    """Rebuild ``member`` (state ``REBUILDING``) from the recorded recovery offset, then mark
    it active in the superblocks. ``DataLostError`` if a row cannot be reconstructed;
    ``VolumeError`` if the member fails during the rebuild.

    ``only``: rebuild just these stripe ranges ``[lo, hi)`` (the dirty regions of a
    write-intent bitmap resync); no recovery offset is recorded then (an interrupted resync
    is redone from the bitmap, or in full if the member was recorded as rebuilding)."""
    members = vol.members
    array = members.array
    g = array.geometry
    if array.states[member] != MemberState.REBUILDING:
        raise VolumeError(f"member {member} is not being rebuilt")
    if only is not None:
        start = 0
        checkpoint_bytes = 1 << 62
        parts = [(lo, hi) for lo, hi in only if hi > lo]
        total = sum(hi - lo for lo, hi in parts)
        # Cut the ranges into about ``workers`` pieces of similar size.
        piece = max(1, -(-total // max(1, workers)))
        ranges = [_Range(a, min(hi, a + piece)) for lo, hi in parts for a in range(lo, hi, piece)]
    else:
        recorded = members.template.recovery_offset
        start = 0 if recorded == RECOVERY_COMPLETE else min(recorded // g.chunk, g.stripes)
        total = g.stripes
        n = max(1, min(workers, total - start))
        step = -(-(total - start) // n) if total > start else 0
        ranges = [_Range(start + i * step, min(total, start + (i + 1) * step)) for i in range(n)]
    done = start
    steals = 0
    last_mark = start
    t0 = time.monotonic()

    def prefix() -> int:
        open_ = [r.lo for r in ranges if r.lo < r.hi]
        return min(open_) if open_ else total

    async def mark(stripe: int) -> None:
        await vol.commit_superblocks(recovery_offset=stripe * g.chunk)

    def steal() -> _Range | None:
        nonlocal steals
        best, avail = None, 1
        for r in ranges:
            free_lo = r.lo + (1 if r.busy else 0)
            if r.hi - free_lo > avail:
                best, avail = r, r.hi - free_lo
        if best is None:
            return None
        free_lo = best.lo + (1 if best.busy else 0)
        mid = free_lo + (best.hi - free_lo) // 2
        stolen = _Range(mid, best.hi)
        best.hi = mid
        ranges.append(stolen)
        steals += 1
        return stolen

    async def worker(r: _Range | None) -> None:
        nonlocal done, last_mark
        while r is not None:
            while r.lo < r.hi:
                if not array.is_writable(member):
                    raise VolumeError(f"member {member} failed during the rebuild")
                r.busy = True
                await array.rebuild_stripe(r.lo, member)
                r.busy = False
                r.lo += 1
                done += 1
                vol.integrity.progress["rebuild"] = (done * g.chunk, total * g.chunk)
                if progress is not None:
                    progress(done, total)
                p = prefix()
                if (p - last_mark) * g.chunk >= checkpoint_bytes:
                    last_mark = p
                    await mark(p)
            r = steal()

    async with trio.open_nursery() as nursery:
        for r in list(ranges):
            nursery.start_soon(worker, r)
    await array.flush()
    if not array.is_writable(member):
        raise VolumeError(f"member {member} failed during the rebuild")
    array.states[member] = MemberState.ACTIVE
    await vol.commit_superblocks(recovery_offset=RECOVERY_COMPLETE)
    bitmap = vol.bitmap
    if bitmap is not None and array.is_active(member):
        bitmap.set_tracked(member, members.member_uuids[member])  # in sync from now on
        await bitmap.write()
    secs = time.monotonic() - t0
    stats = RebuildStats(total - start, (total - start) * g.chunk, secs, steals)
    log.info(
        "member %d %s: %d stripes, %.1f MB/s, %d steals",
        member,
        "resynced (dirty regions)" if only is not None else "rebuilt",
        stats.stripes,
        stats.mb_per_s,
        steals,
    )
    return stats


async def readd_member(
    vol: Engine,
    member: int,
    quick: bool,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
) -> RebuildStats:
    """Bring a returning member (faulty, its device present: ``Engine.returning``) back:
    ``quick`` resyncs only the stripes of the regions whose write-intent bit is set, else
    the whole member is rebuilt onto the same device (rules: ``fusenas.volume.bitmap``)."""
    members = vol.members
    array = members.array
    bitmap = vol.bitmap
    if array.states[member] != MemberState.FAULTY or array.devices[member] is None:
        raise VolumeError(f"member {member} is not a returning member")
    if not _usable_without(array, member):
        raise VolumeError(f"cannot resync member {member}: too many other members are down")
    if quick and bitmap is not None:
        # One step, no await: every write the member missed set its bit before this point,
        # and every write from now on reaches the member.
        only = bitmap.dirty_stripe_ranges()
        array.states[member] = MemberState.REBUILDING
        log.warning(
            "member %d is back: resyncing %d dirty regions of %d",
            member,
            len(bitmap.bits),
            bitmap.regions,
        )
        return await rebuild_member(vol, member, workers=workers, progress=progress, only=only)
    if bitmap is not None:
        bitmap.set_tracked(member, None)
    array.states[member] = MemberState.REBUILDING
    if bitmap is not None:
        await bitmap.write()
    await vol.commit_superblocks(recovery_offset=0)
    log.warning("member %d is back: rebuilding it in full", member)
    return await rebuild_member(vol, member, workers=workers, progress=progress)


def member_size(vol: Engine) -> int:
    g = vol.members.array.geometry
    return array_data_offset(vol) + g.member_data_size


def array_data_offset(vol: Engine) -> int:
    return vol.members.array.data_offset


async def open_new_device(provider: DeviceProvider, path: Path, size: int) -> BlockDevice:
    if not path.exists() and provider is FILES:
        await provider.create(path, size)
    elif provider is not FILES:
        with contextlib.suppress(VolumeError):
            await provider.create(path, size)
    dev = await provider.open(path)
    if dev.size < size:
        await dev.aclose()
        raise VolumeError(f"{path} is {dev.size} bytes, smaller than a member ({size})")
    return dev


async def attach_replacement(vol: Engine, member: int, dev: BlockDevice, path: Path) -> None:
    """Put ``dev`` in slot ``member`` as ``REBUILDING`` (recovery offset 0), record it in the
    superblocks and in ``fusenas.toml``; the device it replaces is closed."""
    members = vol.members
    array = members.array
    old = array.devices[member]
    array.attach(member, dev, MemberState.REBUILDING)
    members.devices[member] = dev
    members.paths[member] = path
    members.member_uuids[member] = uuid.uuid4()
    if vol.bitmap is not None:
        vol.bitmap.set_tracked(member, None)  # not in sync until its rebuild ends
        await vol.bitmap.write()
    await vol.commit_superblocks(recovery_offset=0)
    cfg = vol.config
    names = list(cfg.members)
    names[member] = relative_to(path, vol.voldir)
    vol.config = dataclasses.replace(cfg, members=tuple(names))
    await trio.to_thread.run_sync(save_config, vol.voldir, vol.config)
    if old is not None and old is not dev:
        await old.aclose()
    log.warning("member %d replaced by %s; rebuilding", member, path)


def resolve_member(vol: Engine, old: str) -> int:
    """A member index from ``OLD``: an index or a member path (as in ``fusenas.toml``)."""
    n = vol.members.array.geometry.members
    if old.isdigit() and int(old) < n:
        return int(old)
    want = Path(old).absolute()
    for i, p in enumerate(vol.config.member_paths(vol.voldir)):
        if p.absolute() == want or Path(vol.config.members[i]) == Path(old):
            return i
    raise VolumeError(f"{old} is not a member of {vol.voldir} (give its index or path)")


async def replace(
    vol: Engine,
    old: str,
    new: Path,
    *,
    provider: DeviceProvider = FILES,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
) -> RebuildStats:
    """``fusenas replace``: put ``new`` (created sparse if absent) in the slot of ``old``
    and rebuild it. The other members must carry the data: refused if that leaves too few."""
    member = resolve_member(vol, old)
    array = vol.members.array
    others_down = [i for i in array.failed_members if i != member]
    if array.geometry.level == 0 or not _usable_without(array, member):
        raise VolumeError(f"cannot rebuild member {member}: members {others_down} are down as well")
    new = new.absolute()
    current = [p.absolute() for p in vol.config.member_paths(vol.voldir)]
    if new in current and (current.index(new) != member or array.is_active(member)):
        raise VolumeError(f"{new} is already a member")
    if new in current and new.exists() and provider is FILES:
        raise VolumeError(f"{new} still exists; remove it first or give another path")
    mgr = vol.spare_manager
    if mgr is not None and (mgr.rebuilding == member or member in mgr.busy):
        raise VolumeError(f"member {member} is already being rebuilt")
    if mgr is not None:
        mgr.busy.add(member)  # online: the spare manager keeps its hands off this slot
    try:
        dev = await open_new_device(provider, new, member_size(vol))
        await attach_replacement(vol, member, dev, new)
        return await rebuild_member(vol, member, workers=workers, progress=progress)
    finally:
        if mgr is not None:
            mgr.busy.discard(member)


def _usable_without(array: Array, member: int) -> bool:
    saved = array.states[member]
    array.states[member] = MemberState.FAULTY
    try:
        return array.usable
    finally:
        array.states[member] = saved


def relative_to(p: Path, base: Path) -> str:
    try:
        return str(p.relative_to(base))
    except ValueError:
        return str(p)
