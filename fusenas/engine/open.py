"""Open and close one volume: recovery on the way in, a clean close on the way out.

``open_volume`` is the only place that knows the start-up and shut-down order:

start-up (recovery)
    assemble the array from the superblocks → load the newest valid checkpoint (note a bad
    slot) → decode the metadata image → open the WAL at the checkpoint's position → attach the
    write-intent bitmap → replay: ``STRIPE`` records are re-issued to the members, ``DATA``
    records go to the stripe cache, ``META`` records are applied to the metadata store, all in
    log order → drop orphans → two checkpoints → mark the superblocks dirty (mounted).

shut-down (clean unmount, in this order, also on errors)
    stop the background tasks → checkpoint (it flushes the stripe cache, commits the WAL and
    flushes the members first, so the log is empty on the next start) → mark the superblocks
    clean → close the WAL → close the members.

A crash anywhere is recovered by the next start-up; start-up itself is idempotent.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio

from fusenas.engine.blocks import DataBlocks, suspect_rows
from fusenas.engine.config import load_config
from fusenas.engine.core import Engine
from fusenas.engine.metatree import DEFAULT_META_CACHE, MetadataTree
from fusenas.engine.spares import SpareManager
from fusenas.errors import VolumeError, sole_error
from fusenas.meta.image import decode_image
from fusenas.meta.locks import LockShardTable
from fusenas.meta.ops import decode_op
from fusenas.meta.paged import SpaceAllocator
from fusenas.meta.root import RootDescriptor, is_root_descriptor
from fusenas.meta.store import MetadataStore
from fusenas.stripe.cache import DEFAULT_MAX_AGE, StripeCache, decode_data, decode_stripe
from fusenas.stripe.writer import StripeWriter
from fusenas.units import BLOCK_SIZE
from fusenas.volume.array import Array
from fusenas.volume.assemble import assemble
from fusenas.volume.bitmap import DEFAULT_REGION, WriteIntentBitmap, read_bitmap, region_size_for
from fusenas.volume.device import DeviceProvider
from fusenas.volume.faults import FaultSpec, FaultyProvider, parse_inject
from fusenas.volume.layout import Level
from fusenas.volume.member import FILES
from fusenas.volume.superblock import ArrayState, MemberState
from fusenas.wal.checkpoint import CheckpointRegions
from fusenas.wal.format import RecordType
from fusenas.wal.log import WriteAheadLog

log = logging.getLogger(__name__)


async def _attach_bitmap(vol: Engine, region: int | None) -> None:
    """Load the write-intent bitmap from the active members (or write a fresh one), attach
    it to the array, and sort the returning members into quick resync or full rebuild
    (rules: ``fusenas.volume.bitmap``)."""
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
            vol.request_superblock_update()
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
    vol.attach_bitmap(bitmap)
    if changed:
        await bitmap.write()


async def _replay(vol: Engine) -> int:
    """Apply the log after the checkpoint; returns the number of records replayed."""
    count = 0
    async for rec in vol.wal.replay():
        if rec.type == RecordType.STRIPE:
            await vol.array.issue(decode_stripe(rec.payload))
        elif rec.type == RecordType.DATA:
            offset, data = decode_data(rec.payload)
            await vol.cache.write(offset, data, journal=False)
        elif rec.type == RecordType.META:
            op = decode_op(rec.payload)
            await vol.run_meta(vol.meta.prefetch_op, op)  # on pages: then apply cannot miss
            vol.meta.apply(op)
        count += 1
    return count


async def _open_tree(
    raw: bytes, cache: StripeCache, array: Array, data_start: int, capacity: int
) -> MetadataTree:
    """The metadata tree of a root descriptor: pages read through the stripe cache (healed
    from redundancy by the array), written through the cache's writer (whole stripes
    without a record, partial ones with a ``STRIPE`` record first)."""
    root = RootDescriptor.decode(raw)

    def offset(block: int) -> int:
        return data_start + block * BLOCK_SIZE

    class Pages:
        async def read(self, block: int, count: int) -> bytes:
            return await cache.read(offset(block), count * BLOCK_SIZE)

        def read_nowait(self, block: int, count: int) -> bytes | None:
            return cache.read_nowait(offset(block), count * BLOCK_SIZE)

        async def heal_block(self, block: int, check: Callable[[bytes], bool]) -> bytes | None:
            return (await array.read_verified(offset(block), BLOCK_SIZE, check)).data

    async def write_pages(block: int, data: bytes) -> None:
        await cache.writer.write(offset(block), data)

    async def new_chunk(block: int, count: int) -> None:
        per = cache.array.geometry.stripe_data_size // BLOCK_SIZE
        await cache.discard(offset(block) // (per * BLOCK_SIZE), count // per)

    return await MetadataTree.load(root, Pages(), write_pages, capacity, new_chunk)


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
    meta_cache: int = DEFAULT_META_CACHE,
) -> AsyncIterator[Engine]:
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
        regions = CheckpointRegions(StripeWriter(array), cfg.checkpoint_region, cfg.array_uuid)
        ckpt, cnotes = await regions.load()
        notes += cnotes
        jdev = await provider.open(cfg.journal_path(voldir), readonly=readonly)
        try:
            wal = await WriteAheadLog.open(jdev, cfg.array_uuid, ckpt.log_start, readonly=readonly)
        except BaseException:
            await jdev.aclose()
            raise
        stack.push_async_callback(wal.aclose)
        # Ordinary records may fill half the log; the other half is kept for the STRIPE
        # records that flushing the cache appends during a checkpoint. The cache's dirty
        # data (plus parity) must therefore fit in that half.
        wal.headroom = wal.capacity // 2
        cache = StripeCache(
            array, wal, max_dirty=min(max_dirty, wal.capacity // 8), max_age=flush_age
        )
        tree: MetadataTree | None = None
        if is_root_descriptor(ckpt.image):
            tree = await _open_tree(ckpt.image, cache, array, regions.data_start, meta_cache)
            root = RootDescriptor.decode(ckpt.image)
            meta = MetadataStore.on_pages(
                tree.state,
                space=SpaceAllocator(tree.state, tree.space),
                stripe_blocks=root.stripe_blocks,
                max_inodes=2**63,
                journal=lambda payload: None,
                next_ino=root.next_ino,
                inode_count=root.inode_count,
            )
            tree.busy = meta.pending
            meta.reserved = tree.chunk_runs
        else:
            meta = decode_image(ckpt.image, journal=lambda payload: None)
            # Metadata growth stops (ENOSPC) at 90% of a checkpoint region: a checkpoint
            # must always fit, or the log could never be reclaimed again.
            meta.image_limit = regions.max_image * 9 // 10
            meta.image_estimate = len(ckpt.image)
        cache.writer.suspect_parity = suspect_rows(meta, regions.data_start)
        blocks = DataBlocks(array, cache, wal, meta, regions.data_start)
        vol = Engine(
            voldir=voldir,
            config=cfg,
            members=members,
            wal=wal,
            checkpoints=regions,
            meta=meta,
            cache=cache,
            locks=LockShardTable(),
            blocks=blocks,
            readonly=readonly,
            notes=notes,
            previous_start=ckpt.log_start,
        )
        vol.checkpointer.tree = tree
        vol.metadata_tree = tree
        array.failure_hooks.append(vol._on_member_failure)
        wal.ordered_data = array
        if not readonly:
            await _attach_bitmap(vol, bitmap_region)
        for i, state in enumerate(array.states):
            recorded = members.template.member_states[i]
            if state == MemberState.FAULTY and recorded == MemberState.ACTIVE:
                vol.request_superblock_update()  # failed during assembly/replay: record it
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
        await vol.run_meta(meta.reclaim_orphans)
        # Start from two fresh checkpoints: the replayed records (and any record before them)
        # are then out of the window even if replay fell back to the older slot, and the
        # allocator knows that no replayable record names a free block (``replay_safe``).
        await vol.checkpoint()
        await vol.checkpoint()
        await vol.commit_superblocks(ArrayState.DIRTY, settle=True)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(vol.run_superblock_updater)
                await nursery.start(vol.run_cache)
                if spares if spares is not None else checkpointer:
                    manager = SpareManager(vol, provider)
                    vol.spare_manager = manager
                    await nursery.start(manager.run)
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
            if tree is not None:
                # Its page writes may have left STRIPE records after its log position (a
                # partial row of pages is journaled): one more checkpoint, which writes no
                # page, starts past them.
                await vol.checkpoint()
            if vol.failed_readonly is None:
                await vol.commit_superblocks(ArrayState.CLEAN, settle=True)
            else:
                log.error("volume %s closed read-only: %s", voldir, vol.failed_readonly)
