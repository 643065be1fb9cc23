"""The write-ahead log: append, group commit, backpressure, replay and reclaim.

Design note (read before changing anything below). Units are bytes throughout.

The ring. Records live in ``[RECORDS_START, log_size)`` of the journal device (format in
``docs/wal_format.md``). Positions are tracked as *virtual positions* (``vpos``): a byte count
that only grows, with ``offset = RECORDS_START + vpos % capacity``. Bytes skipped at a wrap
(a PAD, or fewer than RECORD_HEADER_SIZE bytes left) count as consumed. Three marks:

* ``tail`` — the oldest byte still needed (the first record not reclaimed; ``reclaim`` moves it);
* ``durable`` — everything before it was written and flushed (``durable_lsn``);
* ``head`` — where the next record goes. ``[durable, head)`` is the *pending* buffer: encoded
  records in memory, not yet written, already counted as used.

Invariants:

1. ``tail <= durable <= head`` and ``head + RECORD_HEADER_SIZE <= tail + capacity``: the writer
   never writes a byte between the tail and the head of the previous lap, and always keeps room
   for the 20-byte *terminator* (see 3).
2. The head is normalized: at least RECORD_HEADER_SIZE bytes remain before ``log_size``.
3. Every commit writes 20 zero bytes (the terminator) right after its last record, in the same
   write, before the flush. So the bytes at a durable head are never a valid record: a
   checkpoint that stores ``head_position()`` after ``commit()`` can always be told apart from
   a journal that is older than it (``open`` raises instead of silently replaying nothing).
4. One commit batch covers at most ``MAX_BATCH_BYTES`` of records, or exactly one record. So at
   a power cut the only unflushed log bytes lie within ``ZERO_SPAN`` after the durable end.
   ``open`` zeroes that span (and flushes) before anything new is written: otherwise a record of
   the crashed run, written beyond a torn one, could carry exactly the LSN that the new run
   gives to a record at the same offset, and be resurrected by a later replay.
5. LSNs are consecutive (PAD records take one too); ``format`` zeroes an old journal's ring so
   LSN 1 cannot meet a stale record of a previous journal.

Ordered data: a caller that wrote data in place without a record (whole fresh stripes, ext4's
data=ordered) reports it with ``ordered_write_done``; before it writes the next batch, the
commit leader flushes ``ordered_data`` (the array), so a record appended after such a write is
never durable before that write's data. The WAL calls down to the array for this, never up.

Concurrency: single trio thread; state is changed only between awaits. At most one task (the
commit *leader*) does log I/O at a time; ``append_nowait`` never awaits.

Cancellation: ``append``/``reserve`` waits and commit *waiters* may be cancelled at any time and
leave nothing behind (nothing appended, or the record stays pending for the next commit). The
leader's write + flush of one batch runs shielded, so a cancelled leader finishes the batch it
started (other tasks' records included), then raises ``Cancelled`` before starting another
batch; what is still pending stays pending and the next committer becomes leader. A cancelled
``commit`` therefore says nothing about durability: commit again to know.

Failure: an ``OSError`` from the device while committing leaves the written range unknown; the
log is then *failed*: every later ``commit``/``append`` raises ``JournalError`` (the volume
must be remounted and recovered from the durable log).

Crash: after a power cut, ``open`` finds every committed record, possibly followed by some of
the uncommitted ones (a prefix of what was appended, never a half record).
"""

from __future__ import annotations

import bisect
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import trio

from fusenas.errors import JournalError
from fusenas.units import BLOCK_SIZE, LSN, ByteData
from fusenas.volume.device import BlockDevice
from fusenas.wal.format import (
    LOG_HEADER_SIZE,
    LOG_MAGIC,
    MIN_LOG_SIZE,
    RECORD_HEADER_SIZE,
    RECORDS_START,
    LogPosition,
    Payload,
    RecordType,
    decode_header,
    decode_log_header,
    encode_log_header,
    encode_pad,
    header_acceptable,
    next_offset,
    payload_valid,
    record_parts,
    record_size,
)

#: Upper bound of one commit batch (write + flush), unless the batch is a single record.
MAX_BATCH_BYTES = 1 << 20
#: What ``open`` zeroes after the end of the log: one batch, its terminator and a wrap skip.
ZERO_SPAN = MAX_BATCH_BYTES + 2 * BLOCK_SIZE
_ZERO_CHUNK = 1 << 20
_TERMINATOR = bytes(RECORD_HEADER_SIZE)


@dataclass(frozen=True)
class Record:
    """One replayed record. ``payload`` is exactly what was appended."""

    lsn: LSN
    type: RecordType
    payload: bytes


@dataclass(frozen=True)
class WalStatistics:
    """A snapshot for metrics. Sizes in bytes."""

    appends: int
    #: Commit batches, i.e. device flushes issued by commit leaders.
    commits: int
    #: Non-PAD records made durable by the last batch / by all batches (for averages).
    records_last_commit: int
    records_committed: int
    bytes_written: int
    used_bytes: int
    pending_bytes: int
    capacity: int
    durable_lsn: LSN
    last_lsn: LSN
    #: Tasks waiting in ``append``/``reserve`` for ``reclaim``.
    waiting_for_room: int
    #: Records per commit batch: counts per bucket of ``BATCH_BUCKETS`` (upper bounds), the
    #: last count being the batches larger than every bound.
    batch_histogram: tuple[int, ...] = ()


#: Upper bounds of the group-commit batch-size histogram (records per device flush).
BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class _Slot:
    """A record the log still knows (durable or pending) and that is not reclaimed."""

    lsn: LSN
    offset: int
    size: int
    type: RecordType
    vpos: int


class Flushable(Protocol):
    """Something whose completed writes ``flush`` makes durable (the array, for ordered data)."""

    async def flush(self) -> None: ...


class WriteAheadLog:
    """A circular log of typed records on a BlockDevice. Create with ``format``/``open``."""

    def __init__(
        self,
        dev: BlockDevice,
        log_size: int,
        slots: deque[_Slot],
        start: LogPosition,
        tail_vpos: int,
        head_vpos: int,
    ) -> None:
        self._dev = dev
        self._log_size = log_size
        self._capacity = log_size - RECORDS_START
        self._slots = slots
        self._replayable = tuple(s for s in slots if s.type != RecordType.PAD)
        self._tail_lsn = start.lsn
        self._next_lsn = LSN(start.lsn + len(slots))
        self._durable_lsn = LSN(self._next_lsn - 1)
        self._tail_v = tail_vpos
        self._head_v = head_vpos
        #: Encoded records not yet written: the slot and its buffers (``record_parts``).
        self._pending: deque[tuple[_Slot, list[ByteData]]] = deque()
        self._pending_bytes = 0
        self._committing = False
        self._commit_done = trio.Event()
        self._room = trio.lowlevel.ParkingLot()
        self._failed: JournalError | None = None
        #: Where unjournaled ("ordered") writes go (the array); see ``ordered_write_done``.
        self.ordered_data: Flushable | None = None
        self._ordered_done = 0  # ordered writes reported complete
        self._ordered_flushed = 0  # of those, covered by a flush of ``ordered_data``
        #: Bytes at the end of the free space that only ``urgent`` records may use.
        self.headroom = 0
        self._closed = False
        self._appends = 0
        self._commits = 0
        self._records_last_commit = 0
        self._records_committed = 0
        self._batch_histogram = [0] * (len(BATCH_BUCKETS) + 1)
        self._bytes_written = 0

    # ----------------------------------------------------------------- create / open

    @classmethod
    async def format(cls, dev: BlockDevice, array_uuid: uuid.UUID) -> LogPosition:
        """Write a fresh log header for ``array_uuid`` over the whole device, flush.

        Returns the start position ``LogPosition(lsn=1, offset=RECORDS_START)``. If the device
        already held a fusenas journal its whole ring is zeroed (invariant 5); otherwise only
        ``ZERO_SPAN`` bytes after the header. Cancellation: the device is then in an unknown
        state; format again.
        """
        size = dev.size
        if size < MIN_LOG_SIZE:
            raise JournalError(f"journal device {dev.name} too small ({size} < {MIN_LOG_SIZE})")
        old = await dev.read(0, len(LOG_MAGIC))
        zero_end = size if old == LOG_MAGIC else min(size, RECORDS_START + ZERO_SPAN)
        await _zero(dev, RECORDS_START, zero_end)
        await dev.write(0, encode_log_header(array_uuid, size))
        await dev.flush()
        return LogPosition(lsn=LSN(1), offset=RECORDS_START)

    @classmethod
    async def open(
        cls,
        dev: BlockDevice,
        array_uuid: uuid.UUID,
        start: LogPosition,
        *,
        readonly: bool = False,
    ) -> WriteAheadLog:
        """Validate the header, scan the log from ``start`` and prepare it for appending.

        The scan stops at the first record that is not acceptable (docs/wal_format.md); only
        positions are kept, not payloads. A valid record at ``start.offset`` with another LSN
        means the journal and the checkpoint disagree: JournalError. Then ``ZERO_SPAN`` bytes
        after the end are zeroed and flushed (invariant 4). The log owns ``dev`` from here on
        (``aclose`` closes it). Cancellation: nothing is lost; open again.
        """
        if dev.size < MIN_LOG_SIZE:
            raise JournalError(f"journal device {dev.name} too small ({dev.size} bytes)")
        header = decode_log_header(await dev.read(0, LOG_HEADER_SIZE), array_uuid)
        log_size = header.log_size
        if log_size > dev.size:
            raise JournalError(
                f"journal header says {log_size} bytes but {dev.name} has {dev.size}"
            )
        if not RECORDS_START <= start.offset <= log_size - RECORD_HEADER_SIZE or start.lsn < 1:
            raise JournalError(f"checkpoint position {start} is outside the journal ring")
        capacity = log_size - RECORDS_START
        tail_v = start.offset - RECORDS_START
        vpos, offset, lsn = tail_v, start.offset, start.lsn
        slots: deque[_Slot] = deque()
        while True:
            raw = await dev.read(offset, RECORD_HEADER_SIZE)
            h = decode_header(raw)
            if not header_acceptable(h, offset, log_size, None):
                break
            if vpos + h.size + RECORD_HEADER_SIZE > tail_v + capacity:
                break  # the writer never fills the ring (invariant 1): not ours
            payload = await dev.read(offset + RECORD_HEADER_SIZE, h.length)
            if not payload_valid(h, raw, payload):
                break
            if h.lsn != lsn:
                if not slots:
                    which = "older" if h.lsn < lsn else "newer"
                    raise JournalError(
                        f"journal is {which} than the checkpoint says "
                        f"(found LSN {h.lsn} at offset {offset}, expected {lsn})"
                    )
                break
            slots.append(_Slot(LSN(lsn), offset, h.size, RecordType(h.type), vpos))
            nxt = next_offset(offset, h.size, log_size)
            vpos += (log_size - offset) if nxt == RECORDS_START else h.size
            offset = nxt
            lsn = LSN(lsn + 1)
        if readonly:  # replay only; appending would need the zeroing below first
            wal = cls(dev, log_size, slots, start, tail_v, vpos)
            wal._failed = JournalError("journal opened read-only")
            return wal
        await _zero_ring(dev, log_size, vpos, min(vpos + ZERO_SPAN, tail_v + capacity))
        await dev.flush()
        return cls(dev, log_size, slots, start, tail_v, vpos)

    # ----------------------------------------------------------------- reading

    async def replay(self) -> AsyncIterator[Record]:
        """Yield every non-PAD record found by ``open``, in LSN order, reading lazily.

        Run it before reclaiming past those records. JournalError if a record was reclaimed or
        changed on the device since ``open``. Cancellation: stops between records; use
        ``contextlib.aclosing`` when breaking out early.
        """
        for s in self._replayable:
            if s.lsn < self._tail_lsn:
                raise JournalError(f"record LSN {s.lsn} was reclaimed before replay")
            raw = await self._dev.read(s.offset, s.size)
            h = decode_header(raw)
            payload = raw[RECORD_HEADER_SIZE:]
            if h.lsn != s.lsn or h.size != s.size or not payload_valid(h, raw, payload):
                raise JournalError(
                    f"record LSN {s.lsn} at offset {s.offset} changed on the device since open"
                )
            yield Record(s.lsn, s.type, payload)

    # ----------------------------------------------------------------- positions

    @property
    def capacity(self) -> int:
        """Bytes of the record ring."""
        return self._capacity

    @property
    def max_record_size(self) -> int:
        """Largest record (header + payload) that can always be placed once the log is empty.

        About half the capacity: a record that does not fit before the end of the ring needs a
        PAD for the rest of it, and both must fit between tail and head.
        """
        return (self._capacity - 3 * RECORD_HEADER_SIZE) // 2

    @property
    def durable_lsn(self) -> LSN:
        """Every record up to this LSN is durable (0 before the first record)."""
        return self._durable_lsn

    @property
    def last_lsn(self) -> LSN:
        """The LSN of the last appended record (PADs included)."""
        return LSN(self._next_lsn - 1)

    def head_position(self) -> LogPosition:
        """Where the next record will go: what a checkpoint covering everything stores.

        Commit before storing it in a checkpoint (invariant 3).
        """
        return LogPosition(self._next_lsn, self._offset(self._head_v))

    def position_of(self, lsn: LSN) -> LogPosition:
        """The position of record ``lsn`` (not reclaimed), or ``head_position()`` if ``lsn`` is
        the next LSN. ValueError otherwise."""
        if lsn == self._next_lsn:
            return self.head_position()
        if not self._tail_lsn <= lsn < self._next_lsn:
            raise ValueError(
                f"LSN {lsn} is not in the log (reclaimed below {self._tail_lsn}, "
                f"next {self._next_lsn})"
            )
        s = self._slots[lsn - self._slots[0].lsn]
        return LogPosition(s.lsn, s.offset)

    def reclaim(self, upto: LogPosition) -> None:
        """Allow everything before ``upto`` (a ``position_of``/``head_position`` value) to be
        overwritten, and wake appenders waiting for room. Reclaiming backwards is a no-op."""
        if upto.lsn <= self._tail_lsn:
            return
        if self.position_of(upto.lsn) != upto:
            raise ValueError(f"{upto} does not match the log ({self.position_of(upto.lsn)})")
        while self._slots and self._slots[0].lsn < upto.lsn:
            self._slots.popleft()
        self._tail_lsn = upto.lsn
        self._tail_v = self._slots[0].vpos if self._slots else self._head_v
        self._room.unpark_all()

    # ----------------------------------------------------------------- appending

    def _offset(self, vpos: int) -> int:
        return RECORDS_START + vpos % self._capacity

    def _usable(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise JournalError("journal is closed")

    def _place(self, size: int) -> tuple[int, int]:
        """(PAD bytes needed before a record of ``size`` bytes, normalized head after it)."""
        remaining = self._log_size - self._offset(self._head_v)
        pad = 0 if size <= remaining else remaining
        end = self._head_v + pad + size
        left = self._log_size - self._offset(end)
        if left < RECORD_HEADER_SIZE:
            end += left
        return pad, end

    def _limit(self, urgent: bool) -> int:
        """Virtual position the head may not pass: ordinary records stop ``headroom`` short."""
        return self._tail_v + self._capacity - (0 if urgent else self.headroom)

    def _room_for(self, nbytes: int) -> bool:
        """True if records totalling ``nbytes`` (encoded) can be appended now, wraps included."""
        remaining = self._log_size - self._offset(self._head_v)
        # A wrap wastes at most everything up to the end of the ring; then skip + terminator.
        waste = 0 if nbytes <= remaining else remaining
        return self._head_v + waste + nbytes + 2 * RECORD_HEADER_SIZE <= self._limit(False)

    def _check_size(self, nbytes: int) -> None:
        if nbytes > self.max_record_size:
            raise JournalError(
                f"record of {nbytes} bytes does not fit in a journal of {self._capacity} bytes "
                f"(at most {self.max_record_size})"
            )

    def append_nowait(self, type: RecordType, payload: Payload, *, urgent: bool = False) -> LSN:
        """Encode a record into the pending buffer and return its LSN; never awaits.

        The payload's buffers are referenced until the record is written (no copy): the
        caller must not change them afterwards.

        ``trio.WouldBlock`` if the log has no room until ``reclaim``; JournalError if the record
        can never fit, or the log failed or is closed. Only ``urgent`` records may use the
        last ``headroom`` bytes: those are the records a checkpoint itself needs to append
        (the stripe cache's ``STRIPE`` records), so a log full of ordinary records can always
        be checkpointed and reclaimed instead of deadlocking.
        """
        self._usable()
        if type == RecordType.PAD:
            raise ValueError("PAD records are written by the log itself")
        if not isinstance(payload, tuple):
            payload = (payload,)
        size = record_size(sum(len(p) for p in payload))
        self._check_size(size)
        pad, end = self._place(size)
        if end + RECORD_HEADER_SIZE > self._limit(urgent):
            raise trio.WouldBlock
        if pad:
            offset = self._offset(self._head_v)
            self._push(
                _Slot(self._next_lsn, offset, pad, RecordType.PAD, self._head_v),
                [encode_pad(self._next_lsn, offset, self._log_size)],
            )
            self._head_v += pad
        lsn = self._next_lsn
        self._push(
            _Slot(lsn, self._offset(self._head_v), size, type, self._head_v),
            record_parts(type, lsn, payload),
        )
        self._head_v = end
        self._appends += 1
        return lsn

    def _push(self, slot: _Slot, parts: list[ByteData]) -> None:
        self._slots.append(slot)
        self._pending.append((slot, parts))
        self._pending_bytes += slot.size
        self._next_lsn = LSN(self._next_lsn + 1)

    async def append(self, type: RecordType, payload: Payload, *, urgent: bool = False) -> LSN:
        """``append_nowait``, waiting for ``reclaim`` while the log is full (backpressure).

        Cancellation: while waiting; nothing has been appended then. Waiters are not served in
        order: a small record may pass a large one that is waiting.
        """
        while True:
            try:
                return self.append_nowait(type, payload, urgent=urgent)
            except trio.WouldBlock:
                await self._room.park()

    async def reserve(self, nbytes: int) -> None:
        """Wait until records totalling ``nbytes`` (sum of ``record_size``) fit, so that the
        caller can then ``append_nowait`` them with no await in between. Nothing is set aside:
        another task appending in between may use the room. Cancellation: at any time.
        """
        self._check_size(nbytes)
        # A cancellation point but no schedule point once there is room: the caller relies on
        # nothing running between our check and its append_nowait calls.
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._usable()
            if self._room_for(nbytes):
                return
            await self._room.park()

    # ----------------------------------------------------------------- committing

    async def commit(self, lsn: LSN | None = None) -> None:
        """Return once every record up to ``lsn`` (default: the last appended) is durable.

        Group commit: if a batch is being written, wait for it and re-check; otherwise lead:
        write everything pending up to the last appended LSN (one write + flush per batch),
        then wake all waiters. See the module note for cancellation and failures.
        """
        target = self.last_lsn if lsn is None else lsn
        if target > self.last_lsn:
            raise ValueError(f"LSN {target} was never appended (last {self.last_lsn})")
        while self._durable_lsn < target:
            if self._failed is not None:
                raise self._failed
            if self._committing:
                await self._commit_done.wait()
            else:
                await self._lead()
        await trio.lowlevel.checkpoint()

    async def _lead(self) -> None:
        self._committing = True
        done = self._commit_done
        goal = self.last_lsn
        try:
            while self._pending and self._durable_lsn < goal:
                batch = self._take_batch()
                with trio.CancelScope(shield=True):
                    if self._ordered_done > self._ordered_flushed:
                        await self._flush_ordered_data()
                    await self._write_batch(batch)
                await trio.lowlevel.checkpoint_if_cancelled()
        finally:
            self._committing = False
            self._commit_done = trio.Event()
            done.set()

    def ordered_write_done(self) -> None:
        """An unjournaled write to ``ordered_data`` completed (ext4's data=ordered): the next
        batch is written only after a flush of ``ordered_data``, so that no record written
        from now on — the one mapping that data, say — is durable before the data is.
        Never blocks."""
        self._ordered_done += 1

    async def _flush_ordered_data(self) -> None:
        """Run by the commit leader after it took a batch and before writing it."""
        assert self.ordered_data is not None, "ordered_write_done without ordered_data"
        done = self._ordered_done
        try:
            await self.ordered_data.flush()
        except Exception as e:  # the taken batch can no longer be written in order
            self._failed = JournalError(f"preparing a commit of {self._dev.name} failed: {e}")
            self._room.unpark_all()
            raise self._failed from e
        self._ordered_flushed = max(self._ordered_flushed, done)

    def _take_batch(self) -> list[tuple[_Slot, list[ByteData]]]:
        batch: list[tuple[_Slot, list[ByteData]]] = []
        total = 0
        while self._pending:
            n = self._pending[0][0].size
            if batch and total + n > MAX_BATCH_BYTES:
                break
            batch.append(self._pending.popleft())
            total += n
        self._pending_bytes -= total
        return batch

    async def _write_batch(self, batch: list[tuple[_Slot, list[ByteData]]]) -> None:
        # Runs of records contiguous on the device, each written as one vector of buffers.
        runs: list[tuple[int, list[ByteData]]] = []
        end = -1
        for slot, parts in batch:
            if slot.offset == end:
                runs[-1][1].extend(parts)
            else:
                runs.append((slot.offset, list(parts)))
            end = slot.offset + slot.size
        last = batch[-1][0]
        term = next_offset(last.offset, last.size, self._log_size)
        if end == term:
            runs[-1][1].append(_TERMINATOR)
        else:
            runs.append((term, [_TERMINATOR]))
        try:
            # A device class with ``write_many`` (FileDevice) writes the runs and fdatasyncs
            # in one worker thread (one hand-off instead of two or more); any other
            # BlockDevice (the power-cut recorder, the fault injector) gets the same sequence
            # as separate calls. Looked up on the class: a wrapper that forwards unknown
            # attributes must not be bypassed.
            write_many = getattr(type(self._dev), "write_many", None)
            if write_many is not None:
                await write_many(self._dev, runs, flush=True)
            else:
                for offset, parts in runs:
                    await self._dev.write(offset, b"".join(parts))
                await self._dev.flush()
        except OSError as e:
            self._failed = JournalError(f"journal write failed on {self._dev.name}: {e}")
            self._room.unpark_all()
            raise self._failed from e
        records = sum(1 for slot, _ in batch if slot.type != RecordType.PAD)
        self._durable_lsn = last.lsn
        self._commits += 1
        self._records_last_commit = records
        self._records_committed += records
        self._batch_histogram[bisect.bisect_left(BATCH_BUCKETS, records)] += 1
        self._bytes_written += sum(len(p) for _, parts in runs for p in parts)

    # ----------------------------------------------------------------- the rest

    def statistics(self) -> WalStatistics:
        return WalStatistics(
            appends=self._appends,
            commits=self._commits,
            records_last_commit=self._records_last_commit,
            records_committed=self._records_committed,
            batch_histogram=tuple(self._batch_histogram),
            bytes_written=self._bytes_written,
            used_bytes=self._head_v - self._tail_v,
            pending_bytes=self._pending_bytes,
            capacity=self._capacity,
            durable_lsn=self._durable_lsn,
            last_lsn=self.last_lsn,
            waiting_for_room=self._room.statistics().tasks_waiting,
        )

    async def aclose(self) -> None:
        """Commit what is pending (unless the log failed), then close the device.

        Cancellation: the commit may be cut short (see ``commit``); the device is closed anyway.
        """
        if self._closed:
            return
        try:
            if self._failed is None and self._pending:
                await self.commit()
        finally:
            self._closed = True
            self._room.unpark_all()
            with trio.CancelScope(shield=True):
                await self._dev.aclose()


async def _zero(dev: BlockDevice, start: int, end: int) -> None:
    """Write zeros over ``[start, end)`` of ``dev`` in bounded chunks."""
    zeros = memoryview(bytes(min(_ZERO_CHUNK, max(0, end - start))))
    pos = start
    while pos < end:
        n = min(len(zeros), end - pos)
        await dev.write(pos, zeros[:n])
        pos += n


async def _zero_ring(dev: BlockDevice, log_size: int, start_v: int, end_v: int) -> None:
    """Zero the ring bytes of virtual positions ``[start_v, end_v)``, split at the wrap."""
    capacity = log_size - RECORDS_START
    while start_v < end_v:
        offset = RECORDS_START + start_v % capacity
        n = min(end_v - start_v, log_size - offset)
        await _zero(dev, offset, offset + n)
        start_v += n
