"""One open fusenas volume: members, journal, checkpoints, metadata and stripe cache, wired.

``open_volume`` is the only place that knows the start-up and shut-down order:

start-up (recovery)
    assemble the array from the superblocks → load the newest valid checkpoint (note a bad
    slot) → decode the metadata image → open the WAL at the checkpoint's position → replay:
    ``STRIPE`` records are re-issued to the members, ``DATA`` records go to the stripe cache,
    ``META`` records are applied to the metadata store, all in log order → drop orphans →
    flush the cache, flush members, checkpoint → mark the superblocks dirty (mounted).

shut-down (clean unmount, in this order, also on errors)
    flush the stripe cache → commit the WAL → flush members → checkpoint (so the log is empty
    on the next start) → mark the superblocks clean → close the WAL → close the members.

A crash anywhere is recovered by the next start-up; start-up itself is idempotent.

member failure (``Array.fail_member`` → ``Volume._on_member_failure``, synchronous)
    marks a superblock update pending and wakes the updater task, which writes the new member
    states to the surviving members (events + 1). A checkpoint never completes while an update
    is pending: the checkpoint reclaims the log window that covers the writes the failed
    member missed, so the failure must be on record first. If the failures exceed what the
    level tolerates, the volume turns read-only (one error line): writes and metadata changes
    get EROFS, reads of surviving data keep working, nothing more is written in place or
    checkpointed, and the journal keeps everything fsynced for the next mount.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from fusenas.errors import DataLostError, FsError, NoSpaceError, VolumeError, sole_error
from fusenas.meta.image import decode_image, encode_image
from fusenas.meta.locks import LockShardTable
from fusenas.meta.ops import decode_op
from fusenas.meta.store import MetadataStore
from fusenas.stripe.cache import DEFAULT_MAX_AGE, StripeCache, decode_data, decode_stripe
from fusenas.units import BLOCK_SIZE, ByteData
from fusenas.voldir import VolumeConfig, load_config, save_config
from fusenas.volume.assemble import ArrayMembers, assemble, check_distinct, create_array
from fusenas.volume.device import DeviceProvider
from fusenas.volume.layout import Level, format_size
from fusenas.volume.member import FILES
from fusenas.volume.superblock import DATA_OFFSET, ArrayState, MemberState
from fusenas.wal.checkpoint import CheckpointRegions
from fusenas.wal.format import LogPosition, RecordType
from fusenas.wal.log import WriteAheadLog

if TYPE_CHECKING:
    from fusenas.volume.faults import FaultSpec
    from fusenas.volume.rebuild import SpareManager

log = logging.getLogger(__name__)

DEFAULT_JOURNAL_SIZE = 512 << 20
#: Average bytes of image per inode used to size the inode cap from the checkpoint region.
BYTES_PER_INODE = 512
#: Room reserved in the log before a metadata operation, bytes (ops are far smaller).
META_RESERVE = 1 << 16


def checkpoint_region_size(logical_size: int, stripe: int) -> int:
    """Bytes per checkpoint region: 1/64 of the volume, at least 16 MiB, whole stripes."""
    want = max(16 << 20, logical_size // 64)
    return -(-want // stripe) * stripe


@dataclass
class Volume:
    """An open volume. Offsets handed to ``cache`` are logical; file blocks start at
    ``data_start`` (block ``b`` of the data area is at ``data_start + b * BLOCK_SIZE``)."""

    voldir: Path
    config: VolumeConfig
    members: ArrayMembers
    wal: WriteAheadLog
    checkpoints: CheckpointRegions
    meta: MetadataStore
    cache: StripeCache
    locks: LockShardTable
    readonly: bool
    notes: list[str]
    _previous_start: LogPosition | None = None
    #: Why the volume turned read-only while running (None while healthy).
    failed_readonly: str | None = None
    _sb_pending: bool = False
    _fatal: set[int] = field(default_factory=set)
    _sb_lock: trio.Lock = field(default_factory=trio.Lock)
    _sb_wake: trio.Event = field(default_factory=trio.Event)
    #: Called (synchronously) after every member failure, once recorded: spares, metrics.
    failure_listeners: list[Callable[[int, str], None]] = field(default_factory=list)
    spare_manager: SpareManager | None = None
    #: Members found back at open (recorded failed or missing, device present): member →
    #: True if the write-intent bitmap allows a resync of its dirty regions only, False for
    #: a full rebuild. The spare manager re-adds them (``rebuild.readd_member``).
    returning: dict[int, bool] = field(default_factory=dict)
    #: Ordered writes completed / covered by a member flush (``write_ordered``).
    _ordered_written: int = 0
    _ordered_flushed: int = 0

    def _on_member_failure(self, member: int, reason: str) -> None:
        """``Array.failure_hooks`` entry: schedule the superblock update; go read-only if the
        level no longer covers the failures. Never raises, never blocks."""
        self._sb_pending = True
        self._sb_wake.set()
        array = self.members.array
        if not array.usable:
            self._fatal.add(member)
        if not array.usable:
            self._go_readonly(
                f"members {', '.join(map(str, array.failed_members))} of "
                f"{array.geometry.members} failed, more than "
                f"{array.geometry.level.name} tolerates"
            )
        for listener in self.failure_listeners:
            listener(member, reason)

    def _go_readonly(self, reason: str) -> None:
        """Switch to read-only after data became unreachable (once, one log line)."""
        if self.failed_readonly is not None:
            return
        self.failed_readonly = reason
        self.readonly = True
        log.error(
            "volume %s is now READ-ONLY: %s; fsynced data is kept in the journal, "
            "reads of surviving data still work",
            self.voldir,
            reason,
        )

    async def update_superblocks(self) -> None:
        """Write pending member-state changes to the superblocks (idempotent, serialized).
        Returns once no update is pending or one is in flight no more."""
        async with self._sb_lock:
            while self._sb_pending and not (self.readonly and self.failed_readonly is None):
                self._sb_pending = False
                # The failures past the level's tolerance are not recorded: nothing is written
                # in place after them, so once those members are back the next mount replays
                # the journal over them instead of refusing a failed array.
                array = self.members.array
                recorded = [
                    MemberState.ACTIVE if i in self._fatal else s
                    for i, s in enumerate(array.states)
                ]
                await self.members.commit_superblocks(ArrayState.DIRTY, recorded=recorded)

    async def run_superblock_updater(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Background task: commits superblock updates as soon as a failure is recorded."""
        task_status.started()
        while True:
            await self._sb_wake.wait()
            self._sb_wake = trio.Event()
            with trio.CancelScope(shield=True):
                await self.update_superblocks()

    async def run_cache(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The stripe cache's flusher; when the array loses data it stops (read-only)."""
        try:
            await self.cache.run(task_status=task_status)
        except* DataLostError as group:
            self._go_readonly(str(group.exceptions[0]))
            await trio.sleep_forever()

    @property
    def data_start(self) -> int:
        return self.checkpoints.data_start

    def block_offset(self, vol_block: int) -> int:
        """Logical byte offset of data-area block ``vol_block``."""
        return self.data_start + vol_block * BLOCK_SIZE

    async def reserve_meta(self) -> None:
        """Wait until the log has room for a metadata operation (backpressure).

        Every change passes here first: ``FsError(EROFS)`` once the volume is read-only."""
        if self.failed_readonly is not None:
            raise FsError(errno.EROFS, f"volume is read-only: {self.failed_readonly}")
        await self.wal.reserve(META_RESERVE)

    # -- ordered writes ----------------------------------------------------------------------

    def ordered_span(self, vol_block: int, count: int) -> tuple[int, int] | None:
        """The whole stripes inside data-area blocks ``[vol_block, vol_block+count)`` that
        may be written in place without a journal record, as (first block, block count), or
        None. They must be replay-safe (``Allocator.replay_safe``): no record that replay
        could write names them. The caller holds them as a fresh allocation."""
        per = self.meta.stripe_blocks
        lo = -(-vol_block // per) * per
        hi = (vol_block + count) // per * per
        if hi <= lo or self.readonly or self.failed_readonly is not None:
            return None
        if not self.meta.allocator.replay_safe(lo, hi - lo):
            return None
        return lo, hi - lo

    async def write_ordered(self, vol_block: int, data: ByteData) -> None:
        """Write whole stripes of a fresh allocation in place, parity included, without a
        journal record (ext4's data=ordered, for whole stripes): ``vol_block`` and the length
        of ``data`` come from ``ordered_span``.

        What makes it safe: (1) the blocks are replay-safe, so no replayed record overwrites
        them; (2) the map_blocks record that maps them is made durable only after a member
        flush that follows this write (``before_commit``, the WAL's hook); (3) a crash in the
        middle leaves only free blocks behind with parity that may disagree, and a row with
        unmapped blocks gets its whole parity recomputed by its next partial write, never
        patched by read-modify-write (``suspect_parity``). Cached dirty
        data of these stripes (blocks freed since) is dropped first. Cancellation: any subset
        of the member writes may have landed, as with a crash; the blocks are still free.
        """
        array = self.members.array
        size = array.geometry.stripe_data_size
        first, rest = divmod(self.block_offset(vol_block), size)
        if rest or len(data) % size:
            raise ValueError("ordered writes are whole, aligned stripes")
        await self.cache.discard(first, len(data) // size)
        await array.write_full_stripes(first, data)
        self._ordered_written += 1

    async def before_commit(self) -> None:
        """``WriteAheadLog.before_write``: once a batch is taken, make the ordered writes
        completed so far durable on the members, so that no mapping record of theirs is
        durable before their data."""
        done = self._ordered_written
        if done > self._ordered_flushed:
            await self.members.array.flush()
            self._ordered_flushed = max(self._ordered_flushed, done)

    def suspect_parity(self, stripe: int) -> bool:
        """``Array.suspect_parity``: rows of the data area holding a block that is not mapped
        (free, or allocated and not yet mapped): an ordered write cut by a crash may have
        reached some of their members only. A row whose blocks are all mapped has had its
        parity recomputed whole by the first partial write after that (or written full)."""
        per = self.meta.stripe_blocks
        first = self.data_start // (per * BLOCK_SIZE)
        if stripe < first:
            return False
        lo = (stripe - first) * per
        meta = self.meta
        return meta.allocator.overlap(lo, per) + meta.pending.overlap(lo, per) > 0

    async def sync(self) -> None:
        """Make everything done so far durable (fsync): one group commit of the WAL."""
        await self.wal.commit()

    async def checkpoint(self) -> None:
        """Write the metadata image and reclaim log space (see the module docstring).

        The image and the log position are taken at the same instant (no await in between),
        so the image holds exactly the records before that position. Skipped once the volume
        went read-only after a failure (the log then keeps everything). Member-state changes
        reach the superblocks before the checkpoint does (see the module docstring).
        """
        if self.failed_readonly is not None:
            return
        await self.cache.flush()  # most dirty data goes in place before the snapshot...
        image = encode_image(self.meta)
        start = self.wal.head_position()
        window = self.meta.allocator.start_checkpoint()  # the same instant as the image
        written = False
        try:
            self.meta.image_estimate = len(image)
            await self.wal.commit()
            await self.cache.flush()  # ...and the rest, dirtied meanwhile, after it
            bitmap = self.members.array.write_intent
            clearable = bitmap.clear_candidates() if bitmap is not None else set()
            await self.members.array.flush()
            await self.update_superblocks()
            if self.failed_readonly is not None:
                return
            if bitmap is not None and clearable:
                await bitmap.clear(clearable)
            await self.checkpoints.write(start, image)
            written = True
        finally:
            if written:
                self.meta.allocator.checkpoint_written(window)
            else:
                self.meta.allocator.checkpoint_failed(window)
        if self._previous_start is not None:
            self.wal.reclaim(self._previous_start)
        self._previous_start = start

    async def run_checkpointer(
        self,
        *,
        fill: float = 0.25,
        interval: float = 30.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Checkpoint whenever the log is ``fill`` full, or every ``interval`` seconds of
        activity; commit journal records that waited ``cache.max_age`` seconds (``-o
        flush_age``) uncommitted, as ext4 commits its journal every 5 s: a change nobody
        fsynced (a mkdir, a rename, the mapping of an ordered write) is then lost to a power
        cut only within about that time, not until the next checkpoint. Run it in a nursery;
        cancellation stops it between steps."""
        task_status.started()
        last_lsn = self.wal.last_lsn
        idle_since = trio.current_time()
        pending_since: float | None = None
        while True:
            await trio.sleep(0.2)
            stats = self.wal.statistics()
            now = trio.current_time()
            if not stats.pending_bytes:
                pending_since = None
            elif pending_since is None:
                pending_since = now
            elif now - pending_since >= self.cache.max_age:
                await self.wal.commit()
                pending_since = None
            busy = self.wal.last_lsn != last_lsn
            if stats.used_bytes > fill * stats.capacity or (busy and now - idle_since > interval):
                try:
                    await self.checkpoint()
                except NoSpaceError as exc:
                    # Nothing is lost (the log still holds everything); writers will wait
                    # for room. Say so, and try again later rather than kill the mount.
                    log.error("checkpoint failed: %s", exc)
                    await trio.sleep(5)
                last_lsn = self.wal.last_lsn
                idle_since = trio.current_time()


async def _attach_bitmap(vol: Volume, region: int | None) -> None:
    """Load the write-intent bitmap from the active members (or write a fresh one), attach
    it to the array, and sort the returning members into quick resync or full rebuild
    (rules: ``fusenas.volume.bitmap``)."""
    from fusenas.volume.bitmap import (
        DEFAULT_REGION,
        WriteIntentBitmap,
        read_bitmap,
        region_size_for,
    )

    members = vol.members
    array = members.array
    g = array.geometry
    if g.level == Level.RAID0:
        return  # nothing to resync from
    n = g.members
    active = [i for i in range(n) if array.is_active(i)]
    img, why = await read_bitmap(array, active)
    if img is not None and (
        img.array_uuid != members.array_uuid
        or img.region_size % g.chunk
        or img.regions != -(-g.member_data_size // img.region_size)
    ):
        img, why = None, "it does not match the array's geometry"
    if img is not None:
        bitmap = WriteIntentBitmap(array, img, members.events)
    else:
        if array.degraded:
            vol.notes.append(f"no usable write-intent bitmap ({why}); a new one is written")
        size = region_size_for(g.member_data_size, g.chunk, region or DEFAULT_REGION)
        bitmap = WriteIntentBitmap.fresh(
            array, members.array_uuid, [None] * n, members.events, size
        )
    for i in list(active):
        want = bitmap.image.tracked[i]
        if img is not None and want is not None and want != members.member_uuids[i]:
            # An older member of this slot (replaced since) put back: its bytes are stale
            # whatever its superblock's event counter says.
            array.states[i] = MemberState.FAULTY
            active.remove(i)
            vol._sb_pending = True
            dev = array.devices[i]
            vol.notes.append(
                f"member {i} ({dev.name if dev is not None else '?'}) is not "
                f"the member this slot last had (uuid {members.member_uuids[i]}, expected "
                f"{want}); it is not used"
            )
    if not array.usable:
        raise VolumeError(
            f"{g.level.name} array cannot start: members "
            f"{', '.join(map(str, array.failed_members))} are missing, stale or replaced"
        )
    for i in range(n):
        dev = array.devices[i]
        if dev is None or array.states[i] != MemberState.FAULTY:
            continue
        ev = members.member_events[i] if members.member_events else None
        quick = (
            img is not None
            and bitmap.image.tracked[i] == members.member_uuids[i]
            and ev is not None
            and img.events_cleared <= ev <= members.events
        )
        vol.returning[i] = quick
        vol.notes.append(
            f"member {i} ({dev.name}) is back: "
            + (
                f"resync of {len(bitmap.bits)} dirty regions of {bitmap.regions} "
                "(write-intent bitmap)"
                if quick
                else "full rebuild (the write-intent bitmap does not cover its absence)"
            )
        )
    changed = img is None
    for i in active:
        if bitmap.image.tracked[i] != members.member_uuids[i]:
            bitmap.set_tracked(i, members.member_uuids[i])
            changed = True
    array.write_intent = bitmap
    if changed:
        await bitmap.write()


async def _replay(vol: Volume) -> int:
    """Apply the log after the checkpoint; returns the number of records replayed."""
    count = 0
    async for rec in vol.wal.replay():
        if rec.type == RecordType.STRIPE:
            await vol.members.array.issue(decode_stripe(rec.payload))
        elif rec.type == RecordType.DATA:
            offset, data = decode_data(rec.payload)
            await vol.cache.write(offset, data, journal=False)
        elif rec.type == RecordType.META:
            vol.meta.apply(decode_op(rec.payload))
        count += 1
    return count


@contextlib.asynccontextmanager
async def open_volume(
    voldir: Path,
    *,
    readonly: bool = False,
    max_dirty: int = 256 << 20,
    flush_age: float = DEFAULT_MAX_AGE,
    io_timeout: float | None = None,
    checkpointer: bool = True,
    provider: DeviceProvider = FILES,
    inject: str | None = None,
    spares: bool | None = None,
    bitmap_region: int | None = None,
) -> AsyncIterator[Volume]:
    """Open (recovering if needed), yield, and cleanly close the volume in ``voldir``.

    ``inject``: fault specs (``fusenas.volume.faults.parse_inject``) armed on the members, for
    debugging. ``spares`` (default: same as ``checkpointer``): run the spare manager, which
    resumes an interrupted rebuild, re-adds returning members and lets a spare take over a
    failed member. ``bitmap_region``: region size of a write-intent bitmap created by this
    open (default ``bitmap.DEFAULT_REGION``); an existing bitmap keeps its own.
    ``flush_age``: seconds dirty data may wait in the stripe cache (``StripeCache.max_age``).
    """
    cfg = load_config(voldir)
    if inject:
        from fusenas.volume.faults import FaultyProvider, parse_inject

        specs = parse_inject(inject)
        paths = cfg.member_paths(voldir)
        faults: dict[Path, list[FaultSpec]] = {}
        for spec in specs:
            if spec.member >= len(paths):
                raise VolumeError(f"inject: no member {spec.member}")
            faults.setdefault(paths[spec.member], []).append(spec)
        provider = FaultyProvider(provider, faults)
        log.warning("fault injection armed: %s", inject)
    members = await assemble(
        cfg.member_paths(voldir),
        expect_uuid=cfg.array_uuid,
        readonly=readonly,
        io_timeout=io_timeout,
        provider=provider,
    )
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(members.aclose)
        notes = list(members.notes)
        array = members.array
        regions = CheckpointRegions(array, cfg.checkpoint_region, cfg.array_uuid)
        ckpt, cnotes = await regions.load()
        notes += cnotes
        jdev = await provider.open(cfg.journal_path(voldir), readonly=readonly)
        try:
            wal = await WriteAheadLog.open(jdev, cfg.array_uuid, ckpt.log_start, readonly=readonly)
        except BaseException:
            await jdev.aclose()
            raise
        stack.push_async_callback(wal.aclose)
        meta = decode_image(ckpt.image, journal=lambda payload: None)
        # Ordinary records may fill half the log; the other half is kept for the STRIPE
        # records that flushing the cache appends during a checkpoint. The cache's dirty
        # data (plus parity) must therefore fit in that half.
        wal.headroom = wal.capacity // 2
        # Metadata growth stops (ENOSPC) at 90% of a checkpoint region: a checkpoint must
        # always fit, or the log could never be reclaimed again.
        meta.image_limit = regions.max_image * 9 // 10
        meta.image_estimate = len(ckpt.image)
        cache = StripeCache(
            array, wal, max_dirty=min(max_dirty, wal.capacity // 8), max_age=flush_age
        )
        vol = Volume(
            voldir=voldir,
            config=cfg,
            members=members,
            wal=wal,
            checkpoints=regions,
            meta=meta,
            cache=cache,
            locks=LockShardTable(),
            readonly=readonly,
            notes=notes,
        )
        array.failure_hooks.append(vol._on_member_failure)
        array.suspect_parity = vol.suspect_parity
        wal.before_write = vol.before_commit
        if not readonly:
            await _attach_bitmap(vol, bitmap_region)
        for i, state in enumerate(array.states):
            recorded = members.template.member_states[i]
            if state == MemberState.FAULTY and recorded == MemberState.ACTIVE:
                vol._sb_pending = True  # failed during assembly/replay: record it
        replayed = await _replay(vol)
        meta.set_journal(lambda payload: wal.append_nowait(RecordType.META, payload))
        if replayed:
            notes.append(f"replayed {replayed} journal records after an unclean stop")
        if readonly:
            if replayed:
                raise VolumeError(
                    "the journal holds changes to replay; mount read-write once to recover"
                )
            yield vol
            return
        meta.reclaim_orphans()
        # Start from two fresh checkpoints: the replayed records (and any record before them)
        # are then out of the window even if replay fell back to the older slot, and the
        # allocator knows that no replayable record names a free block (``replay_safe``).
        vol._previous_start = ckpt.log_start
        await vol.checkpoint()
        await vol.checkpoint()
        async with vol._sb_lock:
            vol._sb_pending = False
            await members.commit_superblocks(ArrayState.DIRTY)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(vol.run_superblock_updater)
                await nursery.start(vol.run_cache)
                if spares if spares is not None else checkpointer:
                    from fusenas.volume.rebuild import SpareManager

                    vol.spare_manager = SpareManager(vol, provider)
                    await nursery.start(vol.spare_manager.run)
                if checkpointer:
                    await nursery.start(vol.run_checkpointer)
                try:
                    yield vol
                finally:
                    with trio.CancelScope(shield=True):
                        nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise sole_error(group) from None
        with trio.CancelScope(shield=True):
            await vol.checkpoint()  # replay from it finds nothing: the log is empty
            if vol.failed_readonly is None:
                async with vol._sb_lock:
                    vol._sb_pending = False
                    await members.commit_superblocks(ArrayState.CLEAN)
            else:
                log.error("volume %s closed read-only: %s", voldir, vol.failed_readonly)


async def create_volume(
    voldir: Path,
    *,
    level: Level,
    chunk: int,
    member_count: int | None = None,
    member_paths: Sequence[Path] = (),
    member_size: int | None = None,
    journal: Path | None = None,
    journal_size: int = DEFAULT_JOURNAL_SIZE,
    force: bool = False,
    name: str = "",
    checkpoint_region: int | None = None,
    provider: DeviceProvider = FILES,
) -> list[str]:
    """mkfs: create ``voldir`` with its members, journal and an empty filesystem.

    Either ``member_paths`` (existing files or block devices; ``member_size`` ignored) or
    ``member_count`` sparse files of ``member_size`` bytes inside ``voldir``. Everything is
    checked before anything is written; files this call created are removed if it fails.
    Returns notes for the user.
    """
    if (voldir / "fusenas.toml").exists() and not force:
        raise VolumeError(f"{voldir} already holds a fusenas volume (use --force to recreate it)")
    if voldir.exists() and not voldir.is_dir():
        raise VolumeError(f"{voldir} exists and is not a directory")
    created: list[Path] = []
    made_dir = not voldir.exists()
    try:
        voldir.mkdir(parents=True, exist_ok=True)
        if member_paths:
            paths = [Path(p).absolute() for p in member_paths]
            check_distinct(paths)
            for p in paths:
                if p.is_dir():
                    raise VolumeError(f"member {p} is a directory")
                if not p.exists():
                    raise VolumeError(f"member {p} does not exist")
        else:
            if member_count is None or member_size is None:
                raise VolumeError("give --members and --size, or --member paths")
            paths = [voldir / f"member-{i}.img" for i in range(member_count)]
            if member_size < DATA_OFFSET + 4 * chunk:
                raise VolumeError(f"member size {format_size(member_size)} is too small")
            for p in paths:
                if p.exists() and not force:
                    raise VolumeError(f"{p} already exists (use --force to overwrite it)")
            for p in paths:
                if p.exists():
                    p.unlink()
                await provider.create(p, member_size)
                created.append(p)
        members = await create_array(paths, level, chunk, name=name, force=force, provider=provider)
        try:
            notes = list(members.notes)
            array = members.array
            g = array.geometry
            region = checkpoint_region or checkpoint_region_size(g.logical_size, g.stripe_data_size)
            region = -(-region // g.stripe_data_size) * g.stripe_data_size  # whole stripes
            if 2 * region + g.stripe_data_size > g.logical_size:
                raise VolumeError(
                    f"volume of {format_size(g.logical_size)} is too small for its metadata"
                )
            jpath = journal if journal is not None else voldir / "journal"
            if jpath.exists() and jpath.is_file() and not force:
                raise VolumeError(f"journal {jpath} already exists (use --force to overwrite it)")
            if not jpath.exists() or jpath.is_file():
                if jpath.exists():
                    jpath.unlink()
                # Allocated: a journal commit is an fdatasync per fsync(2), and on a sparse
                # file each one also commits the file system's allocation (~1.5x slower).
                await provider.create(jpath, journal_size, allocate=True)
                created.append(jpath)
            jdev = await provider.open(jpath)
            try:
                start = await WriteAheadLog.format(jdev, members.array_uuid)
            finally:
                await jdev.aclose()
            data_blocks = (g.logical_size - 2 * region) // BLOCK_SIZE
            meta = MetadataStore.create(
                data_blocks=data_blocks,
                stripe_blocks=g.stripe_data_size // BLOCK_SIZE,
                max_inodes=region // BYTES_PER_INODE,
                journal=lambda payload: None,
                now_ns=time.time_ns(),
            )
            regions = CheckpointRegions(array, region, members.array_uuid)
            await regions.write(start, encode_image(meta))
            cfg = VolumeConfig(
                array_uuid=members.array_uuid,
                level=g.level,
                chunk=g.chunk,
                members=tuple(_relative(p, voldir) for p in paths),
                journal=_relative(jpath, voldir),
                journal_size=journal_size,
                checkpoint_region=region,
            )
            save_config(voldir, cfg)
            notes.append(
                f"created {g.level.name} volume {members.array_uuid}: {len(paths)} members, "
                f"chunk {format_size(g.chunk)}, {format_size(data_blocks * BLOCK_SIZE)} usable"
            )
            return notes
        finally:
            await members.aclose()
    except BaseException:
        for p in created:
            with contextlib.suppress(OSError):
                p.unlink()
        if made_dir:
            shutil.rmtree(voldir, ignore_errors=True)
        raise


def _relative(p: Path, base: Path) -> str:
    try:
        return os.path.relpath(p, base) if p.is_relative_to(base) else str(p)
    except ValueError:
        return str(p)
