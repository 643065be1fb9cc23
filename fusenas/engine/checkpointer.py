"""Checkpointer: writes the metadata image of one open volume and reclaims journal space.

The order of one checkpoint (docs/architecture.md, "The order, for every change", step 6):

1. flush the stripe cache (most dirty data goes in place before the snapshot);
2. at one instant (no await in between): encode the metadata image, note the log head and
   open the allocator's freed-block window — so the image holds exactly the records before
   that position;
3. commit the WAL, flush the cache again (what was dirtied meanwhile), flush the members,
   record pending member-state changes in the superblocks (a failure must be on record before
   the log window that covers the writes the failed member missed is reclaimed), clear the
   write-intent bits of regions that are in sync;
4. write the image to the inactive checkpoint region, then its slot header (``
   CheckpointRegions.write`` flushes between them);
5. reclaim the log before the *older* of the two live checkpoints, so a corrupt newest slot can
   fall back to the other one and still replay.

A crash anywhere leaves the previous checkpoint and the log intact. Skipped once the volume
turned read-only after a failure (the log then keeps everything). Cancellation: callers shield
a checkpoint that must finish (unmount); a cancelled one is a failed one (the allocator's
window is given back) and the next one starts over.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from fusenas.engine.metatree import MetadataTree
from fusenas.errors import NoSpaceError
from fusenas.meta.image import encode_image
from fusenas.meta.store import MetadataStore
from fusenas.stripe.cache import StripeCache
from fusenas.volume.array import Array
from fusenas.volume.bitmap import WriteIntentBitmap
from fusenas.wal.checkpoint import CheckpointRegions
from fusenas.wal.format import LogPosition
from fusenas.wal.log import WriteAheadLog

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the checkpoint duration histogram.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class CheckpointStatistics:
    """Checkpoints written since the volume opened. ``buckets[i]`` counts the checkpoints
    that took at most ``DURATION_BUCKETS[i]`` seconds and more than the bound before it; the
    last entry counts the rest (Prometheus histograms are cumulative: the exporter sums)."""

    count: int
    failed: int
    seconds_total: float
    last_seconds: float | None
    last_image_bytes: int
    buckets: tuple[int, ...]


class Checkpointer:
    """Checkpoints of one open volume (see the module docstring)."""

    def __init__(
        self,
        *,
        regions: CheckpointRegions,
        wal: WriteAheadLog,
        meta: MetadataStore,
        cache: StripeCache,
        array: Array,
        record_member_states: Callable[[], Awaitable[None]],
        failed: Callable[[], bool],
        previous_start: LogPosition | None,
    ) -> None:
        self._regions = regions
        self._wal = wal
        self._meta = meta
        self._cache = cache
        self._array = array
        self._record_member_states = record_member_states
        self._failed = failed
        self._previous_start = previous_start
        self._count = 0
        self._failures = 0
        self._total = 0.0
        self._last: float | None = None
        self._image_bytes = 0
        self._buckets = [0] * (len(DURATION_BUCKETS) + 1)
        #: The array's write-intent bitmap (``Engine.attach_bitmap``): its in-sync regions
        #: are cleared at each checkpoint.
        self.bitmap: WriteIntentBitmap | None = None
        #: Metadata on pages (``fusenas.engine.metatree``; None: the v1 image).
        self.tree: MetadataTree | None = None

    async def checkpoint(self) -> None:
        """Write one checkpoint (module docstring). ``NoSpaceError`` if the image does not
        fit its region; nothing is lost then (the log keeps everything)."""
        if self._failed():
            return
        started = time.perf_counter()
        meta, wal = self._meta, self._wal
        await self._cache.flush()
        tree = self.tree
        if tree is None:
            image = encode_image(meta)
        else:
            frozen = tree.freeze()  # on pages, the frozen memtable is the "image"
        start = wal.head_position()
        window = meta.allocator.start_checkpoint()  # the same instant as the image
        written = False
        try:
            await wal.commit()
            await self._cache.flush()
            if tree is not None:
                # The pages go out before the member flush below, the slot after it.
                image = await tree.write(
                    frozen, next_ino=meta.next_ino, inode_count=len(meta.inodes)
                )
            meta.image_estimate = len(image)
            bitmap = self.bitmap
            clearable = bitmap.clear_candidates() if bitmap is not None else set()
            await self._array.flush()
            await self._record_member_states()
            if self._failed():
                return
            if bitmap is not None and clearable:
                await bitmap.clear(clearable)
            await self._regions.write(start, image)
            written = True
            if tree is not None:
                tree.published()
        finally:
            if written:
                meta.allocator.checkpoint_written(window)
            else:
                meta.allocator.checkpoint_failed(window)
                self._failures += 1
        if self._previous_start is not None:
            wal.reclaim(self._previous_start)
        self._previous_start = start
        seconds = time.perf_counter() - started
        self._count += 1
        self._total += seconds
        self._last = seconds
        self._image_bytes = len(image)
        self._buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1

    async def run(
        self,
        *,
        max_age: float,
        fill: float = 0.25,
        interval: float = 30.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Checkpoint whenever the log is ``fill`` full, or every ``interval`` seconds of
        activity; commit journal records that waited ``max_age`` seconds (``-o flush_age``)
        uncommitted, as ext4 commits its journal every 5 s: a change nobody fsynced (a mkdir,
        a rename, the mapping of an ordered write) is then lost to a power cut only within
        about that time, not until the next checkpoint. Run it in a nursery; cancellation
        stops it between steps."""
        task_status.started()
        wal = self._wal
        last_lsn = wal.last_lsn
        idle_since = trio.current_time()
        pending_since: float | None = None
        while True:
            await trio.sleep(0.2)
            stats = wal.statistics()
            now = trio.current_time()
            if not stats.pending_bytes:
                pending_since = None
            elif pending_since is None:
                pending_since = now
            elif now - pending_since >= max_age:
                await wal.commit()
                pending_since = None
            busy = wal.last_lsn != last_lsn
            if stats.used_bytes > fill * stats.capacity or (busy and now - idle_since > interval):
                try:
                    await self.checkpoint()
                except NoSpaceError as exc:
                    # Nothing is lost (the log still holds everything); writers will wait
                    # for room. Say so, and try again later rather than kill the mount.
                    log.error("checkpoint failed: %s", exc)
                    await trio.sleep(5)
                last_lsn = wal.last_lsn
                idle_since = trio.current_time()

    def statistics(self) -> CheckpointStatistics:
        return CheckpointStatistics(
            count=self._count,
            failed=self._failures,
            seconds_total=self._total,
            last_seconds=self._last,
            last_image_bytes=self._image_bytes,
            buckets=tuple(self._buckets),
        )
