"""WriteAheadLog on the in-memory device: round trip, laps, group commit, backpressure, power
cuts (several in a row, to catch records resurrected from a crashed run)."""

from __future__ import annotations

import random
import uuid

import pytest
import trio
import trio.testing

from fusenas.errors import JournalError
from fusenas.units import LSN
from fusenas.wal.format import RECORDS_START, LogPosition, RecordType
from fusenas.wal.log import WriteAheadLog
from tests.devices import MemoryDevice

ARRAY = uuid.UUID(int=0xABCDEF)
TYPES = [RecordType.DATA, RecordType.STRIPE, RecordType.META]
Entry = tuple[int, RecordType, bytes]


async def fresh(size: int = 64 * 1024) -> tuple[MemoryDevice, WriteAheadLog, LogPosition]:
    dev = MemoryDevice(size)
    start = await WriteAheadLog.format(dev, ARRAY)
    return dev, await WriteAheadLog.open(dev, ARRAY, start), start


async def replayed(wal: WriteAheadLog) -> list[Entry]:
    return [(r.lsn, r.type, r.payload) async for r in wal.replay()]


async def reopen(dev: MemoryDevice, start: LogPosition) -> WriteAheadLog:
    dev.closed = False
    return await WriteAheadLog.open(dev, ARRAY, start)


async def test_append_commit_reopen_replay() -> None:
    dev, wal, start = await fresh()
    assert start == LogPosition(LSN(1), RECORDS_START)
    expected: list[Entry] = []
    for i in range(20):
        payload = bytes([i]) * (i * 37)
        lsn = await wal.append(TYPES[i % 3], payload)
        expected.append((lsn, TYPES[i % 3], payload))
    await wal.commit()
    assert wal.durable_lsn == wal.last_lsn == 20
    await wal.aclose()
    wal2 = await reopen(dev, start)
    assert await replayed(wal2) == expected
    assert wal2.head_position() == wal.head_position()
    lsn = await wal2.append(RecordType.META, b"next")
    assert lsn == 21


async def test_empty_log_replays_nothing() -> None:
    _dev, wal, start = await fresh()
    assert await replayed(wal) == []
    assert wal.head_position() == start


async def test_many_laps_with_reclaim_match_model() -> None:
    rng = random.Random(1)
    dev, wal, start = await fresh(8 * 4096)
    model: list[Entry] = []  # records not reclaimed, in order
    checkpoint = start
    lap_bytes = 0
    for step in range(3000):
        size = rng.choice([0, 1, 19, 20, 21, rng.randrange(wal.max_record_size - 20)])
        payload = rng.randbytes(size)
        type_ = rng.choice(TYPES)
        try:
            lsn = wal.append_nowait(type_, payload)
        except trio.WouldBlock:
            await wal.commit()
            # Reclaim up to a random record still in the model (what a checkpoint would do).
            keep = rng.randrange(len(model) + 1)
            checkpoint = (
                wal.position_of(LSN(model[keep][0])) if keep < len(model) else wal.head_position()
            )
            wal.reclaim(checkpoint)
            model = model[keep:]
            continue
        model.append((lsn, type_, payload))
        lap_bytes += size + 20
        if step % 500 == 499:
            await wal.commit()
            assert await replayed(await reopen(dev, checkpoint)) == model
    assert lap_bytes > 10 * wal.capacity  # many laps really happened
    await wal.commit()
    wal2 = await reopen(dev, checkpoint)
    assert await replayed(wal2) == model
    assert wal2.last_lsn == wal.last_lsn


async def test_head_checkpoint_after_wrap_reopens_empty() -> None:
    # After laps the bytes at the head are an earlier lap's; the commit's terminator must make
    # a checkpoint at head_position() open as an empty log, not as "journal is older".
    dev, wal, _ = await fresh(4 * 4096)
    for i in range(200):
        await wal.reserve(400)
        wal.append_nowait(RecordType.DATA, bytes([i]) * 300)
        await wal.commit()
        wal.reclaim(wal.head_position())
    head = wal.head_position()
    wal2 = await reopen(dev, head)
    assert await replayed(wal2) == []
    assert wal2.head_position() == head


async def test_group_commit_shares_flushes() -> None:
    dev, wal, start = await fresh(1 << 20)
    flushes_before = dev.flushes
    done: list[Entry] = []

    async def committer(i: int) -> None:
        payload = i.to_bytes(4, "little") * 100
        lsn = await wal.append(RecordType.META, payload)
        await wal.commit(lsn)
        assert wal.durable_lsn >= lsn
        done.append((lsn, RecordType.META, payload))

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(committer, i)
    flushes = dev.flushes - flushes_before
    assert len(done) == 50
    assert flushes < 50
    stats = wal.statistics()
    assert stats.commits == flushes and stats.records_committed == 50
    assert sum(stats.batch_histogram) == stats.commits
    assert any(stats.batch_histogram[1:]), "some batch held more than one record"
    assert await replayed(await reopen(dev, start)) == sorted(done)


async def test_cancelled_leader_does_not_lose_others_records() -> None:
    dev, wal, start = await fresh()
    a = await wal.append(RecordType.META, b"a")
    b = await wal.append(RecordType.META, b"b")
    with trio.move_on_after(0) as scope:
        scope.cancel()
        await wal.commit(a)
    await wal.commit(b)
    assert [r[0] for r in await replayed(await reopen(dev, start))] == [a, b]


async def test_backpressure_waits_for_reclaim() -> None:
    _dev, wal, _start = await fresh(3 * 4096)
    while True:
        try:
            wal.append_nowait(RecordType.DATA, bytes(500))
        except trio.WouldBlock:
            break
    used = wal.statistics().used_bytes
    assert used <= wal.capacity
    got: list[int] = []

    async def appender() -> None:
        got.append(await wal.append(RecordType.META, b"x" * 500))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(appender)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and wal.statistics().waiting_for_room == 1
        await wal.commit()
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # durable is not reclaimed
        wal.reclaim(wal.head_position())
    assert got == [wal.last_lsn]


async def test_reserve_then_append_nowait_atomically() -> None:
    dev, wal, _start = await fresh(3 * 4096)
    while True:
        try:
            wal.append_nowait(RecordType.DATA, bytes(700))
        except trio.WouldBlock:
            break
    lsns: list[int] = []

    async def batch() -> None:
        await wal.reserve(3 * (20 + 1000))
        lsns.extend(wal.append_nowait(RecordType.DATA, bytes(1000)) for _ in range(3))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batch)
        await trio.testing.wait_all_tasks_blocked()
        assert lsns == []
        await wal.commit()
        wal.reclaim(wal.head_position())
    assert len(lsns) == 3 and lsns == sorted(lsns) and lsns[2] - lsns[0] <= 3  # a PAD may sit
    await wal.commit()
    tail = [r[0] for r in await replayed(await reopen(dev, wal.position_of(LSN(lsns[0]))))]
    assert tail == lsns


async def test_record_bigger_than_log_raises() -> None:
    _dev, wal, _ = await fresh(3 * 4096)
    with pytest.raises(JournalError, match="does not fit"):
        await wal.append(RecordType.DATA, bytes(wal.capacity))
    with pytest.raises(JournalError, match="does not fit"):
        wal.append_nowait(RecordType.DATA, bytes(wal.max_record_size))
    with pytest.raises(JournalError, match="does not fit"):
        await wal.reserve(wal.capacity)
    # The largest allowed record always fits eventually, wherever the head is.
    for _ in range(5):
        await wal.append(RecordType.DATA, bytes(wal.max_record_size - 20))
        await wal.commit()
        wal.reclaim(wal.head_position())


async def test_other_array_refused() -> None:
    dev, _wal, start = await fresh()
    other = uuid.UUID(int=1)
    with pytest.raises(JournalError, match=f"another array .*{ARRAY}.*{other}"):
        await WriteAheadLog.open(dev, other, start)


async def test_older_and_newer_than_checkpoint() -> None:
    dev, wal, _start = await fresh()
    for i in range(5):
        await wal.append(RecordType.META, bytes([i]))
    await wal.commit()
    pos = wal.position_of(LSN(3))
    assert (await replayed(await reopen(dev, pos)))[0][0] == 3
    with pytest.raises(JournalError, match=r"older than the checkpoint says \(found LSN 3 at"):
        await reopen(dev, LogPosition(LSN(4), pos.offset))
    with pytest.raises(JournalError, match=r"newer than the checkpoint says \(found LSN 3 at"):
        await reopen(dev, LogPosition(LSN(2), pos.offset))


class CutDevice(MemoryDevice):
    """Fails the n-th flush from now (the power goes out while it runs)."""

    cut_at: int | None = None

    async def flush(self) -> None:
        if self.cut_at is not None:
            self.cut_at -= 1
            if self.cut_at < 0:
                await trio.lowlevel.checkpoint()
                raise OSError("power cut")
        await super().flush()


@pytest.mark.parametrize("seed", range(24))
async def test_power_cuts_keep_committed_records_and_a_prefix(seed: int) -> None:
    rng = random.Random(seed)
    dev = CutDevice(6 * 4096)
    checkpoint = await WriteAheadLog.format(dev, ARRAY)
    history: list[Entry] = []  # what replay from `checkpoint` must start with, in order
    for _cut in range(60):
        dev.cut_at = None
        wal = await WriteAheadLog.open(dev, ARRAY, checkpoint)
        assert await replayed(wal) == history, f"seed {seed} cut {_cut}"
        if rng.random() < 0.5:  # checkpoint + reclaim, as recovery does
            checkpoint = wal.head_position()
            wal.reclaim(checkpoint)
            history = []
        committed = len(history)
        dev.cut_at = rng.randrange(6)
        try:
            while True:
                size = rng.choice([1, 50, 900, 3000, rng.randrange(wal.max_record_size - 20)])
                payload = rng.randbytes(size)
                type_ = rng.choice(TYPES)
                try:
                    lsn = wal.append_nowait(type_, payload)
                except trio.WouldBlock:
                    await wal.commit()
                    committed = len(history)
                    checkpoint = wal.head_position()
                    wal.reclaim(checkpoint)
                    history, committed = [], 0
                    continue
                history.append((lsn, type_, payload))
                if rng.random() < 0.3:
                    await wal.commit()
                    committed = len(history)
        except JournalError:
            pass
        dev.crash(rng)
        dev.cut_at = None
        wal2 = await WriteAheadLog.open(dev, ARRAY, checkpoint)
        got = await replayed(wal2)
        assert got == history[: len(got)], f"seed {seed} cut {_cut}: not a prefix"
        assert len(got) >= committed, f"seed {seed} cut {_cut}: committed record lost"
        history = got
