"""DataBlocks: the data area of one open volume as 4 KiB blocks, and the ordered-write rules.

This is the whole interface the file layer (``fusenas.fs.files.FileStore``) has to the bytes
of the volume: read blocks (verified by the caller against its checksums), heal one block from
redundancy, and store the blocks of a fresh allocation. Block numbers are data-area blocks in
``BLOCK_SIZE`` units; block ``b`` lives at logical byte offset ``data_start + b * BLOCK_SIZE``.
Nothing here knows of inodes; nothing above it knows of stripes, parity or members.

Ordered writes (whole stripes, no ``DATA`` record)
==================================================

``store`` writes the whole stripes of a fresh copy-on-write allocation in place, data and
parity, without a journal record (ext4's data=ordered, for whole stripes); the partial stripes
at the edges go through the stripe cache, which journals them (``DATA``). Three rules make
skipping the journal crash-safe:

1. *replay-safe blocks* — only blocks that no replayable ``DATA``/``STRIPE`` record names
   (``Allocator.replay_safe``: the allocator keeps two checkpoint generations of freed
   blocks, and an open writes two checkpoints) are written this way, so replay never writes
   old bytes over them;
2. *data before mapping* — the caller appends the ``MapBlocks`` record after ``store``
   returns, and every ordered write is reported to the WAL (``ordered_write_done``), whose
   commit leader flushes the members before it writes the next batch: no mapping is durable
   before its data;
3. *write hole* — a crash inside the member writes leaves free blocks whose parity may
   disagree: ``suspect_rows`` gives the stripe cache the predicate that names the rows
   holding a block that is not mapped (free, or allocated and not yet mapped), and such rows
   are never patched by read-modify-write (their whole-row parity is recomputed by the next
   partial write).

Cancellation: a cancelled ``store`` may have reached any subset of its member writes, as with
a power cut; the blocks are still unmapped, so nothing live changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fusenas.meta.btree import PageMiss
from fusenas.meta.store import MetadataStore
from fusenas.stripe.cache import StripeCache
from fusenas.units import BLOCK_SIZE
from fusenas.volume.array import Array, VerifiedRead
from fusenas.wal.log import WriteAheadLog


@dataclass(frozen=True)
class OrderedWriteStatistics:
    """Counters of ``DataBlocks``: ordered writes (runs of whole stripes written in place
    without a journal record) and the stripes they covered."""

    ordered_writes: int
    ordered_stripes: int


class DataBlocks:
    """The data area of one open volume, block by block (see the module docstring)."""

    def __init__(
        self,
        array: Array,
        cache: StripeCache,
        wal: WriteAheadLog,
        meta: MetadataStore,
        data_start: int,
    ) -> None:
        self._array = array
        self._cache = cache
        self._wal = wal
        self._meta = meta
        #: Logical byte offset of data-area block 0 (after the two checkpoint regions).
        self.data_start = data_start
        #: False once the volume is read-only: no write goes around the journal then.
        self.writable = True
        self._written = 0
        self._stripes = 0

    def offset(self, block: int) -> int:
        """Logical byte offset of data-area block ``block``."""
        return self.data_start + block * BLOCK_SIZE

    # -- reads --------------------------------------------------------------------------------

    async def read(self, block: int, count: int) -> bytes:
        """``count`` blocks from ``block``, dirty cached data included. Unverified."""
        return await self._cache.read(self.offset(block), count * BLOCK_SIZE)

    def read_nowait(self, block: int, count: int) -> bytes | None:
        """The same bytes if memory or the members' page cache hold them all, else None;
        never blocks, never yields."""
        return self._cache.read_nowait(self.offset(block), count * BLOCK_SIZE)

    async def heal(self, block: int, check: Callable[[bytes], bool]) -> VerifiedRead:
        """One block whose bytes failed ``check``: re-derived from redundancy, the bad copy
        rewritten (``Array.read_verified``); counted as a checksum error found."""
        self._array.heal.checksum_mismatches += 1
        return await self._array.read_verified(self.offset(block), BLOCK_SIZE, check)

    # -- writes -------------------------------------------------------------------------------

    async def store(self, block: int, data: memoryview) -> None:
        """Put the blocks of a fresh allocation (``data``: whole blocks) at ``block``: the
        whole replay-safe stripes among them in place without a journal record, the rest
        through the stripe cache (``DATA`` records). The caller holds the blocks as a pending
        allocation and maps them afterwards."""
        count = len(data) // BLOCK_SIZE
        span = self.ordered_span(block, count)
        if span is None:
            await self._cache.write(self.offset(block), data)
            return
        lo, n = span
        head, mid = (lo - block) * BLOCK_SIZE, (lo - block + n) * BLOCK_SIZE
        # The edges are copied: a view would keep the whole request buffer alive in the
        # cache (and the log) while the cache counts only the edge's blocks.
        if head:
            await self._cache.write(self.offset(block), bytes(data[:head]))
        await self._write_ordered(lo, data[head:mid])
        if mid < len(data):
            await self._cache.write(self.offset(lo + n), bytes(data[mid:]))

    def ordered_span(self, block: int, count: int) -> tuple[int, int] | None:
        """The whole, replay-safe stripes inside ``[block, block+count)`` as (first block,
        block count), or None."""
        per = self._meta.stripe_blocks
        lo = -(-block // per) * per
        hi = (block + count) // per * per
        if hi <= lo or not self.writable:
            return None
        if not self._meta.allocator.replay_safe(lo, hi - lo):
            return None
        return lo, hi - lo

    async def _write_ordered(self, block: int, data: memoryview) -> None:
        """Whole, aligned stripes in place with their parity; dirty cached data of these
        stripes (blocks freed since) is dropped first."""
        size = self._array.geometry.stripe_data_size
        first, rest = divmod(self.offset(block), size)
        if rest or len(data) % size:
            raise ValueError("ordered writes are whole, aligned stripes")
        await self._cache.discard(first, len(data) // size)
        await self._cache.writer.write_full_stripes(first, data)
        self._wal.ordered_write_done()
        self._written += 1
        self._stripes += len(data) // size

    def statistics(self) -> OrderedWriteStatistics:
        return OrderedWriteStatistics(
            ordered_writes=self._written,
            ordered_stripes=self._stripes,
        )


def suspect_rows(meta: MetadataStore, data_start: int) -> Callable[[int], bool]:
    """The stripe cache's ``suspect_parity`` predicate: True for rows of the data area holding
    a block that is not mapped (free, or allocated and not yet mapped), where an ordered write
    cut by a crash may have reached some members only. A row whose blocks are all mapped had
    its parity recomputed whole by the first partial write after that (or was written full).
    Rows before ``data_start`` (the checkpoint regions) are never suspect."""
    per = meta.stripe_blocks
    first = data_start // (per * BLOCK_SIZE)

    def suspect(stripe: int) -> bool:
        if stripe < first:
            return False
        lo = (stripe - first) * per
        try:
            return meta.allocator.overlap(lo, per) + meta.pending.overlap(lo, per) > 0
        except PageMiss:
            return True  # the free map's page is not at hand: recomputing the row is safe

    return suspect
