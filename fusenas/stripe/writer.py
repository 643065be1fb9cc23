"""The stripe writer: carries out stripe plans (``fusenas.stripe.plan``) on the array.

Per stripe, under the array's row lock (``Array.stripe_lock``): **plan** (pure: strategy,
member reads) → **read** (``Array.read_members``) → **finish** (pure: the member writes) →
**journal** (the hook, when the plan updates parity in part) → **issue** (``Array.issue``).
The array only does I/O; nothing here calls back into the layer above except the two hooks
given to the constructor:

* ``suspect_parity(stripe)``: True if the row's parity may disagree with its data (the engine
  knows: rows holding unmapped blocks). Such rows are never patched by read-modify-write.
* ``journal(writes)``: makes the exact member writes of a partial parity update durable
  before any of them is issued (the stripe cache appends and commits a ``STRIPE`` record).
  Without a hook the writer issues unjournaled: the checkpoint regions are written that way
  (whole stripes of their own, protected by their two-slot protocol instead).

A ``StripeWriter`` is a ``LogicalVolume`` (``fusenas.wal.checkpoint``): ``read``, ``write``,
``flush`` over logical byte offsets.

Invariants
----------
* One update of a row at a time: the row lock is held from planning to the end of the issue,
  so a rebuild or a repair of the row (which take the same lock) is fully before or after it,
  and the reads a plan is finished with are the row as it is when its writes go out.
* A member that fails while a plan's reads are in flight is marked faulty by the array; the
  stripe is then planned again with the new member states (DEGRADED, reading around it). Each
  retry follows a member leaving the active set, so the retries end.
* No member write of a journaled plan is issued before its journal hook returned.
* Full-stripe runs (:meth:`StripeWriter.write_full_stripes`) take their row locks in ascending
  stripe order, so they never deadlock with each other or with single-row lockers.

Cancellation: cancelled while waiting for the row lock or reading, nothing was written.
Cancelled in the journal hook, the record may or may not become durable and no member write
was issued (a replayed record only rewrites what it holds). Cancelled while issuing, any
subset of the member writes may have landed, as with a power cut: the journal (or, for
unjournaled writes, the caller's own protocol) makes that safe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

import trio

from fusenas.stripe.plan import Strategy, full_stripe_writes, plan_stripe_write
from fusenas.units import ByteData
from fusenas.volume.array import Array, MemberFailedError
from fusenas.volume.writes import MemberWrite

#: Bytes of data from which a run of full stripes is laid out and its parity computed in a
#: worker thread instead of on the event loop (the hop costs ~60 us; 1 MiB of RAID6 ~1 ms).
OFFLOAD_BYTES = 1 << 20

JournalHook = Callable[[Sequence[MemberWrite]], Awaitable[None]]


class StripeWriter:
    """Writes logical bytes to ``array`` stripe by stripe, parity kept consistent."""

    def __init__(
        self,
        array: Array,
        *,
        suspect_parity: Callable[[int], bool] | None = None,
        journal: JournalHook | None = None,
    ) -> None:
        self.array = array
        #: Public: the engine sets it once the metadata it asks is open.
        self.suspect_parity = suspect_parity
        self._journal = journal

    # -- the LogicalVolume face -----------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        """``Array.read``: nothing of this writer is cached."""
        return await self.array.read(offset, length)

    async def flush(self) -> None:
        """``Array.flush``: every completed member write durable."""
        await self.array.flush()

    async def write(self, offset: int, data: ByteData) -> None:
        """Write ``data`` at logical ``offset``, stripe by stripe (``write_stripe``). The bytes
        must not change until this returns (they are written from views, not copies).
        Cancelled: the stripes before the current one are written, the current one as in
        ``write_stripe``, the rest untouched."""
        view = memoryview(data)
        by_stripe: dict[int, list[tuple[int, ByteData]]] = {}
        for piece in self.array.geometry.map_range(offset, len(view)):
            start = piece.logical_offset - offset
            by_stripe.setdefault(piece.stripe, []).append(
                (piece.logical_offset, view[start : start + piece.length])
            )
        for stripe, parts in by_stripe.items():
            await self.write_stripe(stripe, parts)

    # -- stripes --------------------------------------------------------------------------

    async def write_stripe(
        self, stripe: int, parts: Sequence[tuple[int, ByteData]]
    ) -> Strategy | None:
        """Write ``parts`` (logical offset, bytes; inside ``stripe``, not overlapping) under
        the row lock: plan, read, journal if the plan needs it, issue. Returns the strategy
        used (None for levels without parity). ``ValueError`` if ``parts`` leave the stripe;
        ``DataLostError`` if the row cannot be recovered or written. Cancellation: see the
        module docstring (nothing written before the issue, any subset during it)."""
        array = self.array
        g = array.geometry
        async with array.stripe_lock(stripe):
            while True:
                suspect = (
                    g.parity_count > 0
                    and self.suspect_parity is not None
                    and self.suspect_parity(stripe)
                )
                active = [array.is_active(m) for m in range(g.members)]
                plan = plan_stripe_write(g, array.data_offset, stripe, parts, active, suspect)
                old: dict[int, bytes] = {}
                if plan.reads:
                    try:
                        old = await array.read_members(plan.reads, plan.row_offset, plan.row_length)
                    except MemberFailedError:
                        continue  # that member is no longer active: plan around it
                writes = plan.finish(old)
                if plan.journal and self._journal is not None:
                    await self._journal(writes)
                await array.issue(writes)
                return plan.strategy

    async def write_full_stripes(self, first: int, data: ByteData) -> None:
        """Write the whole stripes ``first, first + 1, …`` from ``data`` (a multiple of
        ``stripe_data_size`` bytes, in logical order), at any level.

        Parity comes from the new data alone (no reads, no journal: every data block of the
        rows is rewritten), and each member gets one write for the whole run, since member
        ranges of consecutive stripes are contiguous (``full_stripe_writes``); a run of k
        stripes is ``members`` writes instead of ``k * members``. Runs of ``OFFLOAD_BYTES`` or
        more are laid out and their parity computed in a worker thread (numpy releases the
        GIL), off the event loop. Row locks are taken in ascending stripe order. A down member
        misses its write, as in ``Array.issue``. ``ValueError`` if ``data`` is not whole
        stripes. Cancelled while taking the locks or computing parity (a worker thread is not
        abandoned: the cancel waits for it): nothing written; while issuing: any subset.
        """
        array = self.array
        g = array.geometry
        view = memoryview(data).cast("B")
        count, rest = divmod(view.nbytes, g.stripe_data_size)
        if rest or count == 0:
            raise ValueError(f"{view.nbytes} bytes is not a whole number of stripes")
        async with contextlib.AsyncExitStack() as stack:
            for stripe in range(first, first + count):
                await stack.enter_async_context(array.stripe_lock(stripe))
            if view.nbytes >= OFFLOAD_BYTES:
                writes = await trio.to_thread.run_sync(
                    full_stripe_writes, g, array.data_offset, first, view
                )
            else:
                writes = full_stripe_writes(g, array.data_offset, first, view)
            await array.issue(writes)
