"""The logical volume: one address space of bytes striped over the members by a ``Geometry``.

Invariants
----------
* Offsets given to ``Array`` are logical byte offsets in ``[0, geometry.logical_size)``, except
  member offsets (``issue``, ``read_members``), which are absolute (the member's data area
  starts at ``data_offset``).
* Member states: ``ACTIVE`` members serve I/O; ``FAULTY`` (failed while running) and
  ``MISSING`` (absent at open) are never touched. A ``REBUILDING`` member (a replacement being
  filled by ``fusenas.engine.rebuild``) receives every write but serves no read until the
  rebuild marks it active. A member is marked faulty on its first
  ``OSError`` or on an I/O that misses its deadline, and the request that hit the failure is
  retried from redundancy, so it succeeds whenever the level still tolerates the failures.
  ``on_member_failure`` callbacks run (synchronously) so the layers above can record it.
* The array does I/O and keeps member state; it decides nothing about stripe updates. Those
  are planned by ``fusenas.stripe.plan`` (pure) and carried out by ``fusenas.stripe.writer``
  with the primitives here: ``stripe_lock``, ``read_members`` (all or nothing), ``issue``.
  Nothing here calls back into the layers above except the failure hooks.
* ``stripe_lock(stripe)`` is the row lock: the stripe writer holds it from planning a row
  update to the end of its issue, ``rebuild_stripe`` and the repair step of
  ``read_verified`` hold it too, so a rebuild never writes a row reconstructed before a
  concurrent update of that row, and a repair never rewrites parity under a stripe update.
* ``issue`` writes what it is given, as given: a down member misses its write (its bytes come
  from redundancy), a member failing its write is marked faulty, and ``DataLostError`` is
  raised afterwards if the failures exceed what the level tolerates. With a write-intent
  bitmap, the bits of the regions written are durable before the first write goes out.
* Self-heal (``read_verified``): a block whose bytes fail the caller's check (its crc32c) is
  re-derived from every other combination redundancy offers (other mirror copies; for parity
  levels the row reconstructed without the suspect member, then without it and one more);
  the first candidate that passes is returned and the members found holding wrong bytes are
  rewritten in place with the bytes the rest of the row already agrees with (no parity
  change, so no journal record is needed: a torn repair leaves a detectable bad copy again).

Cancellation: a cancelled read (``read``, ``read_rows``, ``read_members``) leaves nothing
behind. A cancelled ``issue`` (or ``rebuild_stripe``, or the repair of ``read_verified``) may
have reached any subset of its member writes, exactly like a power cut; whoever planned the
writes made that safe (the journal, for stripe updates).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from fusenas.errors import DataLostError
from fusenas.units import ByteData
from fusenas.volume import parity
from fusenas.volume.device import BlockDevice
from fusenas.volume.layout import Geometry, Level, Piece
from fusenas.volume.superblock import DATA_OFFSET, MemberState
from fusenas.volume.writes import MemberWrite

log = logging.getLogger(__name__)

#: Default deadline of one member I/O, seconds. A member that does not answer in time is
#: failed and the request is served from redundancy.
DEFAULT_IO_TIMEOUT = 30.0


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


class MemberFailedError(Exception):
    """A member I/O could not be served: the member is down, or it failed just now (it is then
    marked faulty). Callers answer from redundancy instead."""

    def __init__(self, member: int) -> None:
        super().__init__(member)
        self.member = member


class WriteIntent(Protocol):
    """The write-intent bitmap as ``issue`` uses it (``fusenas.volume.bitmap``, which builds on
    this module): ``begin`` makes the bits of the writes' regions durable and returns them,
    ``end`` releases them once the writes are done."""

    async def begin(self, writes: Sequence[MemberWrite]) -> set[int]: ...

    def end(self, regions: set[int]) -> None: ...


class Array:
    """The logical volume over ``devices`` (``None`` for an absent member): reads, member
    writes as planned by the stripe layer, member state."""

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
        self.write_intent: WriteIntent | None = None

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
            raise MemberFailedError(member)
        try:
            with trio.fail_after(self.io_timeout):
                data = await dev.read(self.data_offset + offset, length)
        except (OSError, trio.TooSlowError) as exc:
            self.fail_member(member, _describe(exc))
            raise MemberFailedError(member) from exc
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
                except MemberFailedError:
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
            with contextlib.suppress(MemberFailedError):  # a failed member is recovered below
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
            with contextlib.suppress(MemberFailedError):
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
        lock (so a concurrent update of the row is either fully before or after).
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
                        except MemberFailedError:
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

    # -- multi-member reads -------------------------------------------------------------

    async def read_members(
        self, members: Sequence[int], offset: int, length: int
    ) -> dict[int, bytes]:
        """Read the same range, at absolute member ``offset`` (as in ``MemberWrite``), from
        each of ``members`` concurrently: ``{member: bytes}``.

        All or nothing: if any of them is down or fails (it is then marked faulty), raises
        ``MemberFailedError`` naming one, after every read has ended. This is what a stripe
        update reads before it writes (``fusenas.stripe.writer``): it plans again around the
        failed member rather than use a partial answer. Cancelled: nothing changed.
        """
        out: dict[int, bytes] = {}
        failed: list[int] = []

        async def one(m: int) -> None:
            try:
                out[m] = await self._member_read(m, offset - self.data_offset, length)
            except MemberFailedError:
                failed.append(m)

        async with trio.open_nursery() as nursery:
            for m in members:
                nursery.start_soon(one, m)
        if failed:
            raise MemberFailedError(failed[0])
        return out


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "I/O deadline exceeded"
    return str(exc) or type(exc).__name__
