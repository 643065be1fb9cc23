"""The logical volume: one address space of bytes striped over the members by a ``Geometry``.

Invariants
----------
* Offsets given to ``Array`` are logical byte offsets in ``[0, geometry.logical_size)``; member
  offsets it issues are absolute (the member's data area starts at ``data_offset``).
* Member states: ``ACTIVE`` members serve I/O; ``FAULTY`` (failed while running) and
  ``MISSING`` (absent at open) are never touched. A ``REBUILDING`` member (a replacement being
  filled by ``fusenas.volume.rebuild``) receives every write but serves no read until the
  rebuild marks it active. A member is marked faulty on its first
  ``OSError`` or on an I/O that misses its deadline, and the request that hit the failure is
  retried from redundancy, so it succeeds whenever the level still tolerates the failures.
  ``on_member_failure`` callbacks run (synchronously) so the layers above can record it.
* A stripe write is analysed (which data blocks it covers), decided (full-stripe, read-modify-
  write or reconstruct-write, see :func:`choose_strategy`) and only then issued. When the write
  updates parity without covering the whole stripe row, the exact member writes are handed to
  the ``journal`` callback first, and issued only after it returns (closes the write hole: see
  docs/architecture.md).
* Rows whose parity may disagree with their data (``suspect_parity``, set by the layer that
  knows: rows holding blocks not yet mapped, where an unjournaled write cut by a crash may
  have landed on some members only) are never patched by read-modify-write, whose new
  parity would inherit the error: a partial write to such a row recomputes the parity of the
  whole row (reconstruct-write over every row offset, reading what it does not write), so
  once live data is in the row its parity is right everywhere.
* Concurrent writes to the same stripe must be serialized by the caller (the stripe cache
  does). The array also holds a per-stripe lock around ``write_stripe``, ``rebuild_stripe`` and
  the repair step of ``read_verified``, so a rebuild never writes a row reconstructed before a
  concurrent write of that row, and a repair never rewrites parity under a stripe update.
* Self-heal (``read_verified``): a block whose bytes fail the caller's check (its crc32c) is
  re-derived from every other combination redundancy offers (other mirror copies; for parity
  levels the row reconstructed without the suspect member, then without it and one more);
  the first candidate that passes is returned and the members found holding wrong bytes are
  rewritten in place with the bytes the rest of the row already agrees with (no parity
  change, so no journal record is needed: a torn repair leaves a detectable bad copy again).

Cancellation: a cancelled ``read`` leaves nothing behind. A cancelled ``write`` may have
reached any subset of its member writes, exactly like a power cut; the journal makes that safe.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import trio

from fusenas.errors import DataLostError
from fusenas.units import ByteData
from fusenas.volume import parity
from fusenas.volume.device import BlockDevice
from fusenas.volume.layout import Geometry, Level, Piece
from fusenas.volume.superblock import DATA_OFFSET, MemberState

if TYPE_CHECKING:
    from fusenas.volume.bitmap import WriteIntentBitmap

log = logging.getLogger(__name__)

#: Bytes of data from which a run of full stripes is laid out and its parity computed in a
#: worker thread instead of on the event loop (the hop costs ~60 us; 1 MiB of RAID6 ~1 ms).
OFFLOAD_BYTES = 1 << 20

#: Default deadline of one member I/O, seconds. A member that does not answer in time is
#: failed and the request is served from redundancy.
DEFAULT_IO_TIMEOUT = 30.0


@dataclass(frozen=True)
class MemberWrite:
    """One write to one member: absolute member byte offset and the bytes."""

    member: int
    offset: int
    data: ByteData


JournalHook = Callable[[Sequence[MemberWrite]], Awaitable[None]]
FailureHook = Callable[[int, str], None]
Verify = Callable[[bytes], bool]


@dataclass
class HealStatistics:
    """Silent-corruption counters of one array (read by metrics and scrub)."""

    checksum_mismatches: int = 0  # blocks whose first read failed its check
    repaired: int = 0  # member copies rewritten with good bytes
    unrecoverable: int = 0  # blocks no combination of members could produce
    bad_by_member: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifiedRead:
    """What ``read_verified`` found: good bytes (or None) and the members that held bad ones."""

    data: bytes | None
    bad_members: tuple[int, ...]
    repaired: tuple[int, ...]


class Strategy(enum.Enum):
    """How a stripe row is updated (md's names)."""

    FULL = "full-stripe"  # parity from the new data alone, no reads
    RMW = "read-modify-write"  # read old data of the written blocks and old parity
    RCW = "reconstruct-write"  # read the data blocks not being written, recompute parity
    DEGRADED = "degraded"  # some member of the row is down: read all, recover, recompute


def choose_strategy(
    ndata: int, nparity: int, covered: int, touched: int, degraded: bool
) -> Strategy:
    """Pick the stripe update strategy by counting member reads, as md's raid5 does.

    ``covered`` data blocks are fully overwritten over the row range, ``touched`` data blocks
    are written at least in part (``covered <= touched <= ndata``). Read-modify-write reads the
    old contents of every touched block and every parity block; reconstruct-write reads every
    data block that is not fully covered. Ties go to reconstruct-write, which leaves parity
    computed from scratch rather than patched.
    """
    if degraded:
        return Strategy.DEGRADED
    if covered == ndata:
        return Strategy.FULL
    rmw_reads = touched + nparity
    rcw_reads = ndata - covered
    return Strategy.RMW if rmw_reads < rcw_reads else Strategy.RCW


class _MemberFailed(Exception):
    def __init__(self, member: int) -> None:
        super().__init__(member)
        self.member = member


class Array:
    """Reads and writes on the logical volume over ``devices`` (``None`` for an absent member)."""

    def __init__(
        self,
        geometry: Geometry,
        devices: Sequence[BlockDevice | None],
        states: Sequence[MemberState] | None = None,
        *,
        data_offset: int = DATA_OFFSET,
        io_timeout: float = DEFAULT_IO_TIMEOUT,
    ) -> None:
        if len(devices) != geometry.members:
            raise ValueError("one device (or None) per member")
        self.geometry = geometry
        self.devices: list[BlockDevice | None] = list(devices)
        self.states: list[MemberState] = (
            list(states)
            if states is not None
            else [MemberState.ACTIVE if d is not None else MemberState.MISSING for d in devices]
        )
        for i, dev in enumerate(self.devices):
            if dev is None:
                self.states[i] = MemberState.MISSING
        self.data_offset = data_offset
        self.io_timeout = io_timeout
        self.failure_hooks: list[FailureHook] = []
        self.bytes_read = [0] * geometry.members
        self.bytes_written = [0] * geometry.members
        self.heal = HealStatistics()
        self._stripe_locks: dict[int, trio.Lock] = {}
        #: The write-intent bitmap (``fusenas.volume.bitmap``): ``issue`` sets the bits of the
        #: regions it writes, durably, before any member write goes out. None: no bitmap.
        self.write_intent: WriteIntentBitmap | None = None
        #: ``suspect_parity(stripe)``: True if the row's parity may disagree with its data
        #: (see the module docstring); such rows take reconstruct-write, never RMW.
        self.suspect_parity: Callable[[int], bool] | None = None

    # -- member state ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Logical size in bytes."""
        return self.geometry.logical_size

    def is_active(self, member: int) -> bool:
        return self.states[member] == MemberState.ACTIVE

    def is_writable(self, member: int) -> bool:
        """Active or rebuilding: the member receives writes."""
        return self.devices[member] is not None and self.states[member] in (
            MemberState.ACTIVE,
            MemberState.REBUILDING,
        )

    def attach(self, member: int, dev: BlockDevice, state: MemberState) -> None:
        """Put ``dev`` in slot ``member`` (a replacement: ``REBUILDING``). The caller closes
        the device it replaces."""
        self.devices[member] = dev
        self.states[member] = state

    @contextlib.asynccontextmanager
    async def stripe_lock(self, stripe: int) -> AsyncIterator[None]:
        """Hold the row lock of ``stripe`` (see the module docstring). Not reentrant."""
        lock = self._stripe_locks.get(stripe)
        if lock is None:
            lock = self._stripe_locks[stripe] = trio.Lock()
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._stripe_locks.pop(stripe, None)

    @property
    def failed_members(self) -> list[int]:
        return [i for i, s in enumerate(self.states) if s != MemberState.ACTIVE]

    @property
    def degraded(self) -> bool:
        return bool(self.failed_members)

    @property
    def usable(self) -> bool:
        """True while no data is lost: the failures are within what the level tolerates.

        RAID10 tolerates one failure per mirror pair, so it is judged pair by pair.
        """
        failed = self.failed_members
        if self.geometry.level == Level.RAID10:
            return all(
                not (2 * p in failed and 2 * p + 1 in failed)
                for p in range(self.geometry.members // 2)
            )
        return len(failed) <= self.geometry.tolerated_failures

    def fail_member(self, member: int, reason: str) -> None:
        """Mark ``member`` faulty (idempotent) and tell the hooks. Never raises."""
        if self.states[member] in (MemberState.FAULTY, MemberState.MISSING):
            return
        self.states[member] = MemberState.FAULTY
        log.warning("member %d (%s) failed: %s", member, self._name(member), reason)
        for hook in self.failure_hooks:
            hook(member, reason)

    def _name(self, member: int) -> str:
        dev = self.devices[member]
        return dev.name if dev is not None else "missing"

    # -- member I/O with failure detection -----------------------------------------------

    async def _member_read(self, member: int, offset: int, length: int) -> bytes:
        dev = self.devices[member]
        if dev is None or not self.is_active(member):
            raise _MemberFailed(member)
        try:
            with trio.fail_after(self.io_timeout):
                data = await dev.read(self.data_offset + offset, length)
        except (OSError, trio.TooSlowError) as exc:
            self.fail_member(member, _describe(exc))
            raise _MemberFailed(member) from exc
        self.bytes_read[member] += length
        return data

    async def _member_write(self, w: MemberWrite) -> None:
        dev = self.devices[w.member]
        if dev is None or not self.is_writable(w.member):
            return  # a down member simply misses the write; its blocks come from redundancy
        try:
            with trio.fail_after(self.io_timeout):
                await dev.write(w.offset, w.data)
        except (OSError, trio.TooSlowError) as exc:
            self.fail_member(w.member, _describe(exc))
            return
        self.bytes_written[w.member] += len(w.data)

    async def issue(self, writes: Sequence[MemberWrite]) -> None:
        """Issue member writes concurrently (also used to replay journaled STRIPE records).

        A member that fails is marked faulty and skipped; if that leaves data unrecoverable
        a ``DataLostError`` is raised after all writes were attempted. With a write-intent
        bitmap, the bits of the written regions are durable before the first write is issued.
        """
        bitmap = self.write_intent
        regions = await bitmap.begin(writes) if bitmap is not None else None
        try:
            async with trio.open_nursery() as nursery:
                for w in writes:
                    nursery.start_soon(self._member_write, w)
        finally:
            if bitmap is not None and regions is not None:
                bitmap.end(regions)
        self._check_usable()

    def _check_usable(self) -> None:
        if not self.usable:
            raise DataLostError(
                f"too many failed members for {self.geometry.level.name}: "
                + ", ".join(f"{i} ({self._name(i)})" for i in self.failed_members)
            )

    async def flush(self) -> None:
        """Make every completed member write durable (fdatasync each active member)."""

        async def one(member: int, dev: BlockDevice) -> None:
            try:
                with trio.fail_after(self.io_timeout):
                    await dev.flush()
            except (OSError, trio.TooSlowError) as exc:
                self.fail_member(member, _describe(exc))

        async with trio.open_nursery() as nursery:
            for i, dev in enumerate(self.devices):
                if dev is not None and self.is_writable(i):
                    nursery.start_soon(one, i, dev)
        self._check_usable()

    # -- reads ----------------------------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` logical bytes at ``offset``, reconstructing around failed members.

        Raises ``DataLostError`` only for data that no surviving member can provide.
        """
        if length == 0:
            return b""
        cached = self.read_nowait(offset, length)
        if cached is not None:
            await trio.lowlevel.checkpoint()
            return cached
        pieces = self.geometry.map_range(offset, length)
        if len(pieces) == 1:
            return await self._read_piece(pieces[0])
        out = bytearray(length)
        lost: list[DataLostError] = []

        async def one(piece: Piece) -> None:
            try:
                data = await self._read_piece(piece)
            except DataLostError as exc:
                lost.append(exc)  # raised after the nursery, not as an ExceptionGroup
                return
            start = piece.logical_offset - offset
            out[start : start + piece.length] = data

        async with trio.open_nursery() as nursery:
            for p in pieces:
                nursery.start_soon(one, p)
        if lost:
            raise lost[0]
        return bytes(out)

    def read_nowait(self, offset: int, length: int) -> bytes | None:
        """``read`` without waiting: the bytes if every piece is on the first copy's member,
        that member is active and the page cache holds the piece (``BlockDevice.read_nowait``),
        else None (then call ``read``). No deadline is needed: nothing here can block."""
        pieces = self.geometry.map_range(offset, length)
        parts = []
        for p in pieces:
            member = p.copies[0]
            dev = self.devices[member]
            if dev is None or not self.is_active(member):
                return None
            data = dev.read_nowait(self.data_offset + p.member_offset, p.length)
            if data is None:
                return None
            parts.append(data)
        for p in pieces:
            self.bytes_read[p.copies[0]] += p.length
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_piece(self, piece: Piece) -> bytes:
        for member in piece.copies:
            if self.is_active(member):
                try:
                    return await self._member_read(member, piece.member_offset, piece.length)
                except _MemberFailed:
                    continue
        if self.geometry.parity_count == 0:
            raise DataLostError(
                f"no surviving copy of logical bytes {piece.logical_offset}+{piece.length}"
            )
        rows = await self.read_rows(piece.stripe, piece.chunk_offset, piece.length)
        return rows[piece.data_index]

    async def read_rows(self, stripe: int, chunk_offset: int, length: int) -> list[bytes]:
        """Return the data blocks of ``stripe`` over ``[chunk_offset, +length)``, reconstructed.

        Parity levels only. Reads every available member of the row concurrently (data and
        parity), then recovers what is missing. Raises ``DataLostError`` if too much is gone.
        """
        g = self.geometry
        ndata = g.data_per_stripe
        member_off = stripe * g.chunk + chunk_offset
        pmembers = g.parity_members(stripe)
        dmembers = [g.data_copies(stripe, i)[0] for i in range(ndata)]
        got: dict[int, bytes] = {}

        async def one(member: int) -> None:
            with contextlib.suppress(_MemberFailed):  # a failed member is recovered below
                got[member] = await self._member_read(member, member_off, length)

        async with trio.open_nursery() as nursery:
            for m in [*dmembers, *pmembers]:
                if self.is_active(m):
                    nursery.start_soon(one, m)
        data: list[ByteData | None] = [got.get(m) for m in dmembers]
        if all(d is not None for d in data):
            return [bytes(d) for d in data if d is not None]
        p = got.get(pmembers[0])
        q = got.get(pmembers[1]) if len(pmembers) > 1 else None
        return parity.recover(data, p, q)

    # -- self-heal and rebuild ------------------------------------------------------------

    async def _read_row_raw(
        self, members: Sequence[int], member_off: int, length: int
    ) -> dict[int, bytes]:
        """The same member range from each active member of ``members``; failures left out."""
        got: dict[int, bytes] = {}

        async def one(member: int) -> None:
            with contextlib.suppress(_MemberFailed):
                got[member] = await self._member_read(member, member_off, length)

        async with trio.open_nursery() as nursery:
            for m in members:
                if self.is_active(m):
                    nursery.start_soon(one, m)
        return got

    async def _write_raw(self, member: int, member_off: int, data: bytes) -> bool:
        """Rewrite one member range in place (repair / rebuild); False if the member failed."""
        await self._member_write(MemberWrite(member, self.data_offset + member_off, data))
        return self.is_writable(member)

    async def read_verified(self, offset: int, length: int, verify: Verify) -> VerifiedRead:
        """Read logical ``[offset, +length)`` (inside one chunk) so that ``verify`` accepts it.

        Tries the normal copy first, then every other way redundancy offers (see the module
        docstring); members that held bytes disagreeing with the accepted result are rewritten
        in place. Counts into ``self.heal``. ``data`` is None when nothing passes (the block is
        really lost). Holds the row lock of the stripe while it reads and repairs.
        """
        pieces = self.geometry.map_range(offset, length)
        if len(pieces) != 1:
            raise ValueError("read_verified reads inside one chunk")
        piece = pieces[0]
        async with self.stripe_lock(piece.stripe):
            if self.geometry.parity_count == 0:
                result = await self._verify_mirror(piece, verify)
            else:
                result = await self._verify_parity(piece, verify)
        if result.data is None:
            self.heal.unrecoverable += 1
        for m in result.bad_members:
            self.heal.bad_by_member[m] = self.heal.bad_by_member.get(m, 0) + 1
        self.heal.repaired += len(result.repaired)
        if result.bad_members:
            log.warning(
                "bad data on member(s) %s at logical %d+%d: %s",
                ", ".join(map(str, result.bad_members)),
                offset,
                length,
                "repaired" if result.repaired else "not repaired",
            )
        return result

    async def _verify_mirror(self, piece: Piece, verify: Verify) -> VerifiedRead:
        got = await self._read_row_raw(piece.copies, piece.member_offset, piece.length)
        good = next((got[m] for m in piece.copies if m in got and verify(got[m])), None)
        if good is None:
            return VerifiedRead(None, tuple(got), ())
        bad = tuple(m for m in piece.copies if m in got and got[m] != good)
        repaired = tuple([m for m in bad if await self._write_raw(m, piece.member_offset, good)])
        return VerifiedRead(good, bad, repaired)

    async def _verify_parity(self, piece: Piece, verify: Verify) -> VerifiedRead:
        g = self.geometry
        stripe = piece.stripe
        dmembers: list[int] = [g.data_copies(stripe, i)[0] for i in range(g.data_per_stripe)]
        pmembers: list[int] = list(g.parity_members(stripe))
        row = [*dmembers, *pmembers]
        member_off = stripe * g.chunk + piece.chunk_offset
        got = await self._read_row_raw(row, member_off, piece.length)
        d = dmembers[piece.data_index]
        if d in got and verify(got[d]):
            return VerifiedRead(got[d], (), ())
        # Exclusion sets: the suspect alone, then the suspect and one more member.
        suspects: list[tuple[int, ...]] = [(d,)] + [(d, x) for x in row if x != d]
        for excluded in suspects:
            unknown = [m for m in row if m in excluded or m not in got]
            if len(unknown) > len(pmembers):
                continue
            data: list[ByteData | None] = [None if m in excluded else got.get(m) for m in dmembers]
            p = None if pmembers[0] in excluded else got.get(pmembers[0])
            q = None
            if len(pmembers) > 1 and pmembers[1] not in excluded:
                q = got.get(pmembers[1])
            if sum(x is None for x in data) > sum(x is not None for x in (p, q)):
                continue
            try:
                full = parity.recover(data, p, q)
            except (ValueError, DataLostError):
                continue
            if not verify(full[piece.data_index]):
                continue
            want: dict[int, bytes] = dict(zip(dmembers, full, strict=True))
            pv = [parity.gen_p(full)] if len(pmembers) == 1 else list(parity.gen_pq(full))
            want.update(zip(pmembers, pv, strict=True))
            bad = tuple(m for m in excluded if m in got and got[m] != want[m])
            repaired = tuple([m for m in bad if await self._write_raw(m, member_off, want[m])])
            return VerifiedRead(full[piece.data_index], bad, repaired)
        return VerifiedRead(None, (d,) if d in got else (), ())

    async def rebuild_stripe(self, stripe: int, member: int) -> None:
        """Write the chunk of ``member`` in ``stripe`` from the other members, under the row
        lock (so a concurrent ``write_stripe`` of the row is either fully before or after).
        ``DataLostError`` if the row cannot be reconstructed; the target failing is marked
        faulty (the caller sees it in ``states``)."""
        g = self.geometry
        member_off = stripe * g.chunk
        async with self.stripe_lock(stripe):
            if g.parity_count == 0:
                index = 0 if g.level == Level.RAID1 else member // 2
                if g.level == Level.RAID0:
                    raise DataLostError("raid0 has no redundancy to rebuild from")
                copies = [m for m in g.data_copies(stripe, index) if m != member]
                content = None
                for m in copies:
                    if self.is_active(m):
                        try:
                            content = await self._member_read(m, member_off, g.chunk)
                            break
                        except _MemberFailed:
                            continue
                if content is None:
                    raise DataLostError(f"no surviving copy of stripe {stripe} to rebuild from")
            else:
                full = await self.read_rows(stripe, 0, g.chunk)
                pmembers: list[int] = list(g.parity_members(stripe))
                if member in pmembers:
                    pv = [parity.gen_p(full)] if len(pmembers) == 1 else list(parity.gen_pq(full))
                    content = pv[pmembers.index(member)]
                else:
                    dmembers: list[int] = [
                        g.data_copies(stripe, i)[0] for i in range(g.data_per_stripe)
                    ]
                    content = full[dmembers.index(member)]
            await self._write_raw(member, member_off, content)

    # -- writes ---------------------------------------------------------------------------

    async def write(
        self, offset: int, data: ByteData, *, journal: JournalHook | None = None
    ) -> None:
        """Write ``data`` at logical ``offset``: stripe by stripe, parity kept consistent.

        ``journal`` (if given) receives the member writes of every partial parity update
        before they are issued; see the module docstring.
        """
        view = memoryview(data)
        by_stripe: dict[int, list[tuple[int, memoryview]]] = {}
        for piece in self.geometry.map_range(offset, len(view)):
            start = piece.logical_offset - offset
            by_stripe.setdefault(piece.stripe, []).append(
                (piece.logical_offset, view[start : start + piece.length])
            )
        for stripe, parts in by_stripe.items():
            await self.write_stripe(stripe, parts, journal=journal)

    async def write_stripe(
        self,
        stripe: int,
        parts: Sequence[tuple[int, ByteData]],
        *,
        journal: JournalHook | None = None,
    ) -> Strategy | None:
        """Write ``parts`` (logical offset, bytes), all inside ``stripe``. Returns the strategy
        used for parity levels (None for RAID0/1/10)."""
        g = self.geometry
        pieces = [
            (p, memoryview(buf)[p.logical_offset - off : p.logical_offset - off + p.length])
            for off, buf in parts
            for p in g.map_range(off, len(buf))
        ]
        if any(p.stripe != stripe for p, _ in pieces):
            raise ValueError("parts cross the stripe")
        async with self.stripe_lock(stripe):
            if g.parity_count == 0:
                writes = []
                for p, buf in pieces:
                    data = bytes(buf)  # one copy, shared by every mirror (writes only read it)
                    writes += [
                        MemberWrite(m, self.data_offset + p.member_offset, data) for m in p.copies
                    ]
                await self.issue(writes)
                return None
            return await self._write_parity_stripe(stripe, pieces, journal)

    async def write_full_stripes(self, first: int, data: ByteData) -> None:
        """Write the whole stripes ``first, first + 1, …`` from ``data`` (a multiple of
        ``stripe_data_size`` bytes, in logical order), at any level.

        Parity comes from the new data alone (no reads, no journal: every data block of the
        rows is rewritten), and each member gets one write for the whole run, since member
        ranges of consecutive stripes are contiguous (``full_stripe_writes``); a run of k
        stripes is ``members`` writes instead of ``k * members``. Runs of ``OFFLOAD_BYTES`` or
        more are laid out and their parity computed in a worker thread (numpy releases the
        GIL), off the event loop. Row locks are taken in ascending stripe order (never
        deadlocks with single-row lockers). A down member misses its write, as in ``issue``.
        """
        g = self.geometry
        view = memoryview(data).cast("B")
        count, rest = divmod(view.nbytes, g.stripe_data_size)
        if rest or count == 0:
            raise ValueError(f"{view.nbytes} bytes is not a whole number of stripes")
        async with contextlib.AsyncExitStack() as stack:
            for stripe in range(first, first + count):
                await stack.enter_async_context(self.stripe_lock(stripe))
            if view.nbytes >= OFFLOAD_BYTES:
                writes = await trio.to_thread.run_sync(
                    full_stripe_writes, g, self.data_offset, first, view
                )
            else:
                writes = full_stripe_writes(g, self.data_offset, first, view)
            await self.issue(writes)

    async def _write_parity_stripe(
        self,
        stripe: int,
        pieces: list[tuple[Piece, memoryview]],
        journal: JournalHook | None,
    ) -> Strategy:
        g = self.geometry
        ndata = g.data_per_stripe
        lo = min(p.chunk_offset for p, _ in pieces)
        hi = max(p.chunk_offset + p.length for p, _ in pieces)
        suspect = self.suspect_parity is not None and self.suspect_parity(stripe)
        if suspect:
            lo, hi = 0, g.chunk  # recompute the parity of the whole row, not just the range
        rlen = hi - lo
        # Analyse: the new bytes of each data block over the row range [lo, hi).
        new: dict[int, bytearray] = {}
        filled: dict[int, int] = {}
        for p, buf in pieces:
            block = new.setdefault(p.data_index, bytearray(rlen))
            block[p.chunk_offset - lo : p.chunk_offset - lo + p.length] = buf
            filled[p.data_index] = filled.get(p.data_index, 0) + p.length
        covered = {i for i, n in filled.items() if n >= rlen}
        dmembers = [g.data_copies(stripe, i)[0] for i in range(ndata)]
        pmembers = g.parity_members(stripe)
        row_members = [*dmembers, *pmembers]
        strategy = choose_strategy(
            ndata,
            len(pmembers),
            len(covered),
            len(new),
            any(not self.is_active(m) for m in row_members),
        )
        if strategy is Strategy.RMW and suspect:
            strategy = Strategy.RCW
        # Decide and compute: the full new data of the row, then parity.
        member_off = stripe * g.chunk + lo
        if strategy is Strategy.RMW:
            try:
                old = await self._read_many(
                    [*(dmembers[i] for i in new), *pmembers], member_off, rlen
                )
            except _MemberFailed:
                return await self._write_parity_stripe(stripe, pieces, journal)
            old_p = old[pmembers[0]]
            old_q = old[pmembers[1]] if len(pmembers) > 1 else b""
            for i in new:
                old_d = old[dmembers[i]]
                merged = _merge(old_d, pieces, i, lo)
                if len(pmembers) == 1:
                    old_p = parity.update_p(old_p, old_d, merged)
                else:
                    old_p, old_q = parity.update_pq(old_p, old_q, i, old_d, merged)
            parities = [old_p] if len(pmembers) == 1 else [old_p, old_q]
        else:
            if strategy is Strategy.FULL:
                full: list[bytes] = [bytes(new[i]) for i in range(ndata)]
            elif strategy is Strategy.RCW:
                need = [dmembers[i] for i in range(ndata) if i not in covered]
                try:
                    old = await self._read_many(need, member_off, rlen)
                except _MemberFailed:
                    return await self._write_parity_stripe(stripe, pieces, journal)
                full = [
                    bytes(new[i]) if i in covered else _merge(old[dmembers[i]], pieces, i, lo)
                    for i in range(ndata)
                ]
            else:
                rows = await self.read_rows(stripe, lo, rlen)
                full = [_merge(rows[i], pieces, i, lo) for i in range(ndata)]
            parities = [parity.gen_p(full)] if len(pmembers) == 1 else list(parity.gen_pq(full))
        writes = [
            MemberWrite(dmembers[p.data_index], self.data_offset + p.member_offset, bytes(buf))
            for p, buf in pieces
        ] + [
            MemberWrite(m, self.data_offset + member_off, bytes(pv))
            for m, pv in zip(pmembers, parities, strict=True)
        ]
        if journal is not None and strategy is not Strategy.FULL:
            await journal(writes)
        await self.issue(writes)
        return strategy

    async def _read_many(
        self, members: Sequence[int], offset: int, length: int
    ) -> dict[int, bytes]:
        """Read the same member range from several members; ``_MemberFailed`` if any fails."""
        out: dict[int, bytes] = {}
        failed: list[int] = []

        async def one(m: int) -> None:
            try:
                out[m] = await self._member_read(m, offset, length)
            except _MemberFailed:
                failed.append(m)

        async with trio.open_nursery() as nursery:
            for m in members:
                nursery.start_soon(one, m)
        if failed:
            raise _MemberFailed(failed[0])
        return out


def full_stripe_writes(
    g: Geometry, data_offset: int, first: int, data: memoryview
) -> list[MemberWrite]:
    """The member writes that store whole stripes ``first, …`` holding ``data`` (logical
    order, a multiple of ``stripe_data_size`` bytes): one write per member covering the run,
    parity included. Pure (no I/O, no state), safe in a worker thread; ``data`` is read, never
    kept beyond the returned views. Members whose bytes are the same (mirrors) share one
    buffer, and a member holding one data index of every stripe (RAID1, RAID0/10 without
    rotation) gets a view or a single strided copy."""
    chunk, ndata = g.chunk, g.data_per_stripe
    count = data.nbytes // g.stripe_data_size
    rows = np.frombuffer(data, dtype=np.uint8).reshape(count, ndata, chunk)
    p = q = None
    if g.parity_count:
        p, q = parity.gen_rows(rows, want_q=g.parity_count == 2)
    # What each member holds in each stripe of the run: ("d", data index), ("p"), ("q").
    plans: dict[int, list[tuple[str, int]]] = {m: [] for m in range(g.members)}
    for k in range(count):
        stripe = first + k
        for i in range(ndata):
            for m in g.data_copies(stripe, i):
                plans[m].append(("d", i))
        for kind, m in zip("pq", g.parity_members(stripe), strict=False):
            plans[m].append((kind, 0))
    built: dict[tuple[tuple[str, int], ...], npt.NDArray[np.uint8]] = {}
    writes = []
    for member in range(g.members):
        plan = tuple(plans[member])
        assert len(plan) == count, "every member holds one chunk of every stripe"
        if plan not in built:
            if len(set(plan)) == 1 and plan[0][0] == "d":
                buf = np.ascontiguousarray(rows[:, plan[0][1]])  # a view when ndata == 1
            else:
                buf = np.empty((count, chunk), dtype=np.uint8)
                for k, (kind, i) in enumerate(plan):
                    if kind == "d":
                        buf[k] = rows[k, i]
                    elif kind == "p":
                        assert p is not None
                        buf[k] = p[k]
                    else:
                        assert q is not None
                        buf[k] = q[k]
            built[plan] = buf
        view = built[plan].reshape(-1).data  # a memoryview, no copy
        writes.append(MemberWrite(member, data_offset + first * chunk, view))
    return writes


def _merge(old: ByteData, pieces: list[tuple[Piece, memoryview]], index: int, lo: int) -> bytes:
    """Old row bytes of data block ``index`` with the written pieces laid over them."""
    out = bytearray(old)
    for p, buf in pieces:
        if p.data_index == index:
            out[p.chunk_offset - lo : p.chunk_offset - lo + p.length] = buf
    return bytes(out)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "I/O deadline exceeded"
    return str(exc) or type(exc).__name__
