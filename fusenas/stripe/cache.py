"""The stripe cache: a write-back cache of logical volume blocks, grouped by stripe.

Every write enters as whole 4 KiB blocks. ``write`` appends one ``DATA`` record to the WAL
(the data is then as durable as the next ``commit``) and merges the blocks into their stripe's
dirty set; writes to the same stripe coalesce until the stripe is flushed.

Stripe states (md's raid5.h is the model)::

    clean ──write──► dirty ──flush picks it──► flushing ──member writes done──► clean
                       ▲                          │
                       └──── write while flushing ┘  (lands in a new dirty set of the stripe)

A flush of one stripe: **analyse** (which blocks are dirty) → **decide** (``fusenas.stripe.plan``
picks full-stripe, read-modify-write or reconstruct-write; rows the engine's ``suspect_parity``
names are never patched by read-modify-write) → **write-ahead** (commit the WAL up to the
stripe's newest DATA record, and for a partial parity update journal and commit a ``STRIPE``
record with the exact member writes) → **issue** (member writes, each under a deadline). The
cache's ``StripeWriter`` (``writer``) does the deciding and issuing; the cache gives it the
journal hook. Consecutive fully dirty stripes are flushed as one run: one write per member for
the whole run (``StripeWriter.write_full_stripes``) instead of one per chunk, which is what
makes a sequential write cheap per byte.

Invariants:
* At most one flush per stripe at a time (the writer's row lock orders two updates of a row,
  but not their turns: an older dirty set could land after a newer one); a stripe being
  flushed keeps its blocks readable until the member writes are done.
* No block reaches a member before every WAL record up to its ``DATA`` record is durable (the
  write-ahead rule: a block freed and reused must not be overwritten while the record that
  freed it could still be lost).
* Dirty memory is bounded by ``max_dirty`` bytes: ``write`` waits for flushes when it is full.

Cancellation: ``write`` cancelled while waiting for room has done nothing; once it returned its
record is in the WAL buffer. A cancelled ``flush`` leaves stripes dirty or in flight; in-flight
stripes are finished by the flush worker, whose member I/O is not cancelled by callers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from fusenas.stripe.plan import Strategy
from fusenas.stripe.writer import StripeWriter
from fusenas.units import BLOCK_SIZE, LSN, ByteData
from fusenas.volume.array import Array
from fusenas.volume.writes import MemberWrite
from fusenas.wal.format import RecordType
from fusenas.wal.log import WriteAheadLog

#: Seconds a dirty stripe may wait before the background flusher writes it in place (``-o
#: flush_age``); fsync, memory pressure and checkpoints flush sooner.
DEFAULT_MAX_AGE = 5.0

_DATA_HEADER = struct.Struct("<Q")
_STRIPE_ENTRY = struct.Struct("<IQI")

#: Bytes of data in one run of full stripes written together (bounds the run's copy).
MAX_RUN_BYTES = 4 << 20


def encode_data(offset: int, data: ByteData) -> tuple[bytes, ByteData]:
    """``DATA`` payload: logical offset u64, then the bytes, as parts (``data`` is not
    copied: the log writes it from the caller's buffer)."""
    return (_DATA_HEADER.pack(offset), data)


def decode_data(payload: bytes) -> tuple[int, memoryview]:
    (offset,) = _DATA_HEADER.unpack_from(payload)
    return offset, memoryview(payload)[_DATA_HEADER.size :]


def encode_stripe(writes: Sequence[MemberWrite]) -> bytes:
    """``STRIPE`` payload: count u32, then per write member u32, offset u64, length u32, bytes."""
    parts: list[ByteData] = [struct.pack("<I", len(writes))]
    for w in writes:
        parts.append(_STRIPE_ENTRY.pack(w.member, w.offset, len(w.data)))
        parts.append(w.data)
    return b"".join(parts)


def decode_stripe(payload: bytes) -> list[MemberWrite]:
    (count,) = struct.unpack_from("<I", payload)
    pos = 4
    out = []
    for _ in range(count):
        member, offset, length = _STRIPE_ENTRY.unpack_from(payload, pos)
        pos += _STRIPE_ENTRY.size
        out.append(MemberWrite(member, offset, payload[pos : pos + length]))
        pos += length
    return out


def _laid_over(base: bytes, offset: int, overlay: list[tuple[int, ByteData]]) -> bytes:
    """``base`` (logical bytes at ``offset``) with the overlay's blocks copied over it."""
    if not overlay:
        return base
    out = bytearray(base)
    for block, data in overlay:
        bstart = block * BLOCK_SIZE
        lo = max(offset, bstart)
        hi = min(offset + len(base), bstart + BLOCK_SIZE)
        out[lo - offset : hi - offset] = data[lo - bstart : hi - bstart]
    return bytes(out)


@dataclass
class _Stripe:
    """Dirty blocks of one stripe, keyed by logical block number (offset // BLOCK_SIZE)."""

    #: Views into the writers' buffers (never copied here; see ``StripeCache.write``).
    blocks: dict[int, ByteData] = field(default_factory=dict)
    max_lsn: int = 0
    since: float = 0.0


@dataclass(frozen=True)
class CacheStatistics:
    dirty_stripes: int
    dirty_bytes: int
    flushing_stripes: int
    writes: int
    stripes_flushed: int
    blocks_per_flush: float
    full_stripe_writes: int
    rmw_writes: int
    rcw_writes: int
    degraded_writes: int


class StripeCache:
    """Write-back cache over ``array``, journaled through ``wal``. Offsets in logical bytes.

    ``suspect_parity(stripe)``: True if the row's parity may disagree with its data (the
    engine knows which rows: see ``fusenas.stripe.plan``); None: no row is suspect.
    """

    def __init__(
        self,
        array: Array,
        wal: WriteAheadLog,
        *,
        suspect_parity: Callable[[int], bool] | None = None,
        max_dirty: int = 256 << 20,
        max_age: float = DEFAULT_MAX_AGE,
        parallel_flushes: int = 8,
    ) -> None:
        self.array = array
        self.wal = wal
        #: Plans and issues the stripe writes of flushes, journaling partial parity updates
        #: (``_journal_stripe``) before it issues them.
        self.writer = StripeWriter(
            array, suspect_parity=suspect_parity, journal=self._journal_stripe
        )
        self.max_dirty = max_dirty
        self.max_age = max_age
        self._stripe_size = array.geometry.stripe_data_size
        self._dirty: dict[int, _Stripe] = {}
        self._flushing: dict[int, _Stripe] = {}
        self._dirty_bytes = 0
        self._changed = trio.Condition()
        self._wake = trio.Event()
        self._waiting_writers = 0
        #: Writers waiting for room, woken in FIFO order, only as many as a flush freed
        #: blocks (a notify_all per flushed stripe woke every one of thousands of waiting
        #: writers thousands of times: quadratic).
        self._room = trio.lowlevel.ParkingLot()
        self._parallel = parallel_flushes
        self._limiter = trio.CapacityLimiter(parallel_flushes)
        self._writes = 0
        self._stripes_flushed = 0
        self._blocks_flushed = 0
        self._by_strategy: dict[Strategy | None, int] = {}

    # -- the write and read paths ---------------------------------------------------------

    async def write(self, offset: int, data: ByteData, *, journal: bool = True) -> LSN:
        """Cache ``data`` (whole blocks, block-aligned) at logical ``offset``; return its LSN.

        The cache keeps views into ``data``, not copies: the caller must not change the buffer
        afterwards (FileStore hands over a fresh buffer per chunk; replay, the log's payload).

        ``journal=False`` is for recovery only: the data is already in the log being replayed.
        Waits while the cache is full (backpressure), except in recovery: no flusher runs
        while the log is replayed (flushing would append ``STRIPE`` records to the log being
        read), so waiting would hang the mount. Recovery's cache is bounded by the log
        instead: at most the ordinary half of it (``WriteAheadLog.headroom``), held as views
        of the replayed payloads; the checkpoint that ends recovery flushes it.
        """
        if offset % BLOCK_SIZE or len(data) % BLOCK_SIZE:
            raise ValueError("stripe cache writes must be whole, aligned blocks")
        while journal and self._dirty_bytes + len(data) > self.max_dirty and self._dirty_bytes > 0:
            self._waiting_writers += 1
            self._wake.set()
            try:
                await self._room.park()
            finally:
                self._waiting_writers -= 1
        if self._room and self._dirty_bytes + len(data) < self.max_dirty:
            self._room.unpark()  # room left: pass the wake-up on (chain)
        lsn = LSN(0)
        if journal:
            lsn = await self.wal.append(RecordType.DATA, encode_data(offset, data))
        view = memoryview(data)
        now = trio.current_time()
        for i in range(0, len(view), BLOCK_SIZE):
            block = (offset + i) // BLOCK_SIZE
            stripe = (offset + i) // self._stripe_size
            st = self._dirty.get(stripe)
            if st is None:
                st = self._dirty[stripe] = _Stripe(since=now)
            if block not in st.blocks:
                self._dirty_bytes += BLOCK_SIZE
            st.blocks[block] = view[i : i + BLOCK_SIZE]
            st.max_lsn = max(st.max_lsn, lsn)
        self._writes += 1
        if self._dirty_bytes > self.max_dirty // 2:
            self._wake.set()
        return lsn

    async def read(self, offset: int, length: int) -> bytes:
        """Read logical bytes, dirty and in-flight blocks laid over what the members hold.

        The overlay is collected *before* the member read: a stripe whose flush completes while
        the members are being read is still served from the overlay, never from the older
        member contents read just before its write landed.
        """
        overlay = self._overlay(offset, length)
        base = await self.array.read(offset, length) if length else b""
        return _laid_over(base, offset, overlay)

    def read_nowait(self, offset: int, length: int) -> bytes | None:
        """``read`` without waiting (``Array.read_nowait``), or None: then call ``read``."""
        overlay = self._overlay(offset, length)
        base = self.array.read_nowait(offset, length) if length else b""
        return None if base is None else _laid_over(base, offset, overlay)

    def _overlay(self, offset: int, length: int) -> list[tuple[int, ByteData]]:
        """(block, bytes) of the dirty and in-flight blocks of the range."""
        overlay: list[tuple[int, ByteData]] = []
        if length and (self._dirty or self._flushing):
            first = offset // BLOCK_SIZE
            last = (offset + length - 1) // BLOCK_SIZE
            for block in range(first, last + 1):
                stripe = block * BLOCK_SIZE // self._stripe_size
                for table in (self._dirty, self._flushing):
                    st = table.get(stripe)
                    if st is not None and block in st.blocks:
                        overlay.append((block, st.blocks[block]))
                        break
        return overlay

    async def discard(self, first: int, count: int) -> None:
        """Forget the dirty blocks of stripes ``[first, first+count)``, after waiting for any
        flush of them in flight: the caller is about to write those stripes whole in place,
        bypassing the cache (``Volume.write_ordered``), and every block in them is free (its
        cached bytes are dead). Without this, a later flush would write the old bytes over
        the new ones."""
        stripes = range(first, first + count)
        while any(s in self._flushing for s in stripes):
            async with self._changed:
                await self._changed.wait()
        freed = 0
        for s in stripes:
            st = self._dirty.pop(s, None)
            if st is not None:
                freed += len(st.blocks)
        if freed:
            self._release(freed)

    def _release(self, blocks: int) -> None:
        """``blocks`` dirty blocks left the cache: account for them and wake as many waiting
        writers (all of them once the cache is at most half full)."""
        self._dirty_bytes -= BLOCK_SIZE * blocks
        if self._dirty_bytes <= self.max_dirty // 2:
            self._room.unpark_all()
        else:
            self._room.unpark(count=blocks)

    # -- flushing -------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write every stripe dirty at the time of the call in place (not member-flushed).

        Returns when those stripes are clean (or were rewritten by a later flush).
        """
        stripes = list(self._dirty)
        await self._flush_many(stripes)
        # Stripes that were already in flight when we were called: wait for them too.
        while any(s in self._flushing for s in stripes):
            async with self._changed:
                await self._changed.wait()

    async def _flush_many(self, stripes: Sequence[int]) -> None:
        """Flush ``stripes`` with at most ``parallel_flushes`` worker tasks sharing one
        iterator: the task count stays bounded however many stripes are dirty (10,000 small
        files make thousands of dirty stripes; one task each was a task explosion).

        Consecutive fully dirty stripes go to one worker together (up to ``MAX_RUN_BYTES``), so
        that the writer writes them as one run (``write_full_stripes``)."""
        todo = iter(self._runs(sorted(stripes)))

        async def worker() -> None:
            for run in todo:
                await self._flush_run(run)

        async with trio.open_nursery() as nursery:
            for _ in range(min(self._parallel, len(stripes))):
                nursery.start_soon(worker)

    def _runs(self, stripes: Sequence[int]) -> list[list[int]]:
        """``stripes`` (sorted) cut into runs of consecutive, fully dirty stripes; any other
        stripe is a run of its own."""
        full = self._stripe_size // BLOCK_SIZE
        longest = max(1, MAX_RUN_BYTES // self._stripe_size)
        runs: list[list[int]] = []
        prev_full = False
        for s in stripes:
            st = self._dirty.get(s)
            is_full = st is not None and len(st.blocks) == full
            if is_full and prev_full and runs[-1][-1] == s - 1 and len(runs[-1]) < longest:
                runs[-1].append(s)
            else:
                runs.append([s])
            prev_full = is_full
        return runs

    async def _flush_run(self, run: Sequence[int]) -> None:
        async with self._limiter:
            while any(s in self._flushing for s in run):  # one flush per stripe at a time
                async with self._changed:
                    await self._changed.wait()
            taken = [(s, st) for s in run if (st := self._dirty.pop(s, None)) is not None]
            if not taken:
                return
            for s, st in taken:
                self._flushing[s] = st
            blocks = sum(len(st.blocks) for _, st in taken)
            try:
                with trio.CancelScope(shield=True):
                    await self._issue(taken)
            finally:
                for s, _ in taken:
                    del self._flushing[s]
                self._release(blocks)
                async with self._changed:
                    self._changed.notify_all()

    async def _issue(self, taken: Sequence[tuple[int, _Stripe]]) -> None:
        """Write-ahead, then write the stripes in place: a run of two or more full stripes in
        one ``write_full_stripes``, a single stripe through ``write_stripe`` (which plans
        full, RMW, RCW or degraded, and journals a partial parity update first)."""
        max_lsn = max(st.max_lsn for _, st in taken)
        if max_lsn:
            await self.wal.commit(LSN(max_lsn))  # the write-ahead rule
        full = self._stripe_size // BLOCK_SIZE
        if len(taken) > 1 and all(len(st.blocks) == full for _, st in taken):
            first = taken[0][0]
            if [s for s, _ in taken] == list(range(first, first + len(taken))):
                data = b"".join(st.blocks[b] for _, st in taken for b in sorted(st.blocks))
                await self.writer.write_full_stripes(first, data)
                strategy = Strategy.FULL if self.array.geometry.parity_count else None
                self._count(strategy, len(taken), len(taken) * full)
                return
        for stripe, st in taken:
            await self._issue_stripe(stripe, st)

    async def _issue_stripe(self, stripe: int, st: _Stripe) -> None:
        # Runs of consecutive blocks, each joined once (not by repeated concatenation, which
        # copied a stripe's bytes once per block).
        runs: list[tuple[int, list[ByteData]]] = []
        prev = -2
        for block in sorted(st.blocks):
            if block == prev + 1:
                runs[-1][1].append(st.blocks[block])
            else:
                runs.append((block * BLOCK_SIZE, [st.blocks[block]]))
            prev = block
        parts = [(off, bufs[0] if len(bufs) == 1 else b"".join(bufs)) for off, bufs in runs]
        strategy = await self.writer.write_stripe(stripe, parts)
        self._count(strategy, 1, len(st.blocks))

    def _count(self, strategy: Strategy | None, stripes: int, blocks: int) -> None:
        self._stripes_flushed += stripes
        self._blocks_flushed += blocks
        self._by_strategy[strategy] = self._by_strategy.get(strategy, 0) + stripes

    async def _journal_stripe(self, writes: Sequence[MemberWrite]) -> None:
        """The writer's journal hook: one ``STRIPE`` record, durable before it returns."""
        lsn = await self.wal.append(RecordType.STRIPE, encode_stripe(writes), urgent=True)
        await self.wal.commit(lsn)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background flusher: flushes on memory pressure and age. Run it in a nursery.

        Cancellation stops it between flushes; stripes in flight finish (shielded).
        """
        task_status.started()
        while True:
            with trio.move_on_after(max(0.05, self.max_age / 4)):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            over = self._dirty_bytes > self.max_dirty // 2 or self._waiting_writers > 0
            old = [s for s, st in self._dirty.items() if over or now - st.since >= self.max_age]
            if old:
                await self._flush_many(old)

    def statistics(self) -> CacheStatistics:
        flushed = self._stripes_flushed
        return CacheStatistics(
            dirty_stripes=len(self._dirty),
            dirty_bytes=self._dirty_bytes,
            flushing_stripes=len(self._flushing),
            writes=self._writes,
            stripes_flushed=flushed,
            blocks_per_flush=self._blocks_flushed / flushed if flushed else 0.0,
            full_stripe_writes=self._by_strategy.get(Strategy.FULL, 0),
            rmw_writes=self._by_strategy.get(Strategy.RMW, 0),
            rcw_writes=self._by_strategy.get(Strategy.RCW, 0),
            degraded_writes=self._by_strategy.get(Strategy.DEGRADED, 0),
        )
