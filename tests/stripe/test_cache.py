"""StripeCache: coalescing against a model, flush under cancellation, backpressure, and a
bounded task count under 10,000 concurrent small writes. In memory (tests/devices.py)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from fusenas.stripe.cache import StripeCache, decode_data, decode_stripe
from fusenas.units import BLOCK_SIZE
from fusenas.volume.array import Array
from fusenas.volume.layout import Geometry, Level
from fusenas.volume.superblock import DATA_OFFSET
from fusenas.wal.format import LogPosition, RecordType
from fusenas.wal.log import WriteAheadLog
from tests.devices import MemoryDevice

ARRAY = uuid.UUID(int=0x5713E)
CHUNK = 4 * BLOCK_SIZE


class SlowDevice(MemoryDevice):
    """Every write takes 1 ms of (virtual, with autojump_clock) time."""

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(0.001)
        await super().write(offset, data)


@dataclass
class Rig:
    array: Array
    members: list[MemoryDevice]
    jdev: MemoryDevice
    start: LogPosition
    wal: WriteAheadLog
    cache: StripeCache


async def rig(
    level: Level = Level.RAID5,
    *,
    data_size: int = 256 * CHUNK,
    journal: int = 32 << 20,
    max_dirty: int = 8 << 20,
    device: type[MemoryDevice] = MemoryDevice,
) -> Rig:
    g = Geometry.make(level, 4, CHUNK, data_size)
    members = [device(DATA_OFFSET + data_size, f"m{i}") for i in range(4)]
    array = Array(g, members)
    jdev = MemoryDevice(journal, "journal")
    start = await WriteAheadLog.format(jdev, ARRAY)
    wal = await WriteAheadLog.open(jdev, ARRAY, start)
    return Rig(array, members, jdev, start, wal, StripeCache(array, wal, max_dirty=max_dirty))


def blocks(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n * BLOCK_SIZE)


@pytest.mark.parametrize("level", [Level.RAID0, Level.RAID1, Level.RAID5, Level.RAID6])
async def test_random_overlapping_writes_match_a_model(level: Level) -> None:
    """Overlapping writes of 1..16 blocks, reads of dirty, in-flight and clean data, flushes
    at random: every read agrees with a plain bytearray, before and after the final flush."""
    rng = random.Random(level.value)
    r = await rig(level)
    size = r.array.geometry.logical_size
    model = bytearray(size)
    async with trio.open_nursery() as nursery:
        for step in range(300):
            n = rng.randint(1, 16)
            off = rng.randrange(0, size // BLOCK_SIZE - n) * BLOCK_SIZE
            data = blocks(rng, n)
            await r.cache.write(off, data)
            model[off : off + len(data)] = data
            if step % 37 == 0:
                nursery.start_soon(r.cache.flush)  # reads below race with this flush
            lo = rng.randrange(0, size - 1)
            hi = min(size, lo + rng.randint(1, 300_000))
            assert await r.cache.read(lo, hi - lo) == model[lo:hi], f"step {step}"
    await r.cache.flush()
    assert r.cache.statistics().dirty_bytes == 0
    assert await r.cache.read(0, size) == model
    assert await r.array.read(0, size) == model  # in place, not only in the cache


async def replay_into_fresh_cache(r: Rig) -> StripeCache:
    """What recovery does: a new WAL over the same journal, STRIPE records re-issued, DATA
    records fed to a new cache (journal=False), then flushed."""
    r.jdev.closed = False
    wal = await WriteAheadLog.open(r.jdev, ARRAY, r.start)
    cache = StripeCache(r.array, wal)
    async for rec in wal.replay():
        if rec.type == RecordType.STRIPE:
            await r.array.issue(decode_stripe(rec.payload))
        elif rec.type == RecordType.DATA:
            off, data = decode_data(rec.payload)
            await cache.write(off, data, journal=False)
    await cache.flush()
    return cache


async def test_flush_cancelled_midway(autojump_clock: trio.testing.MockClock) -> None:
    """A flush cancelled while member writes are in flight: reads stay right, the next flush
    completes the job, and a restart that replays the log gets the same bytes."""
    rng = random.Random(7)
    r = await rig(device=SlowDevice)
    size = r.array.geometry.logical_size
    model = bytearray(size)
    for _ in range(60):
        n = rng.randint(1, 12)
        off = rng.randrange(0, size // BLOCK_SIZE - n) * BLOCK_SIZE
        data = blocks(rng, n)
        await r.cache.write(off, data)
        model[off : off + len(data)] = data
    dirty = r.cache.statistics().dirty_stripes
    with trio.move_on_after(0.0035) as scope:
        await r.cache.flush()
    assert scope.cancelled_caught
    after = r.cache.statistics()
    assert 0 < after.stripes_flushed < dirty, "the cancel must land mid-way"
    assert await r.cache.read(0, size) == model
    await r.cache.flush()
    assert r.cache.statistics().dirty_bytes == 0
    assert await r.array.read(0, size) == model
    await r.wal.commit()
    # Restart: members keep what was written, the log is replayed over them.
    cache = await replay_into_fresh_cache(r)
    assert await cache.read(0, size) == model
    assert await r.array.read(0, size) == model


async def test_writers_wait_when_the_cache_is_full() -> None:
    """max_dirty reached: the next writer blocks (nothing grows past the bound) until a
    flush makes room; then it proceeds."""
    r = await rig(max_dirty=4 * CHUNK)
    stripe = r.array.geometry.stripe_data_size
    await r.cache.write(0, bytes(4 * CHUNK))
    done = trio.Event()

    async def writer() -> None:
        await r.cache.write(4 * stripe, b"\x01" * BLOCK_SIZE)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        assert r.cache.statistics().dirty_bytes == 4 * CHUNK
        await r.cache.flush()
        await done.wait()
    assert await r.cache.read(4 * stripe, BLOCK_SIZE) == b"\x01" * BLOCK_SIZE


async def test_cancelled_waiting_writer_leaves_nothing() -> None:
    r = await rig(max_dirty=4 * CHUNK)
    await r.cache.write(0, bytes(4 * CHUNK))
    last = r.wal.last_lsn
    with trio.move_on_after(0.05):
        await r.cache.write(8 * CHUNK, b"\x02" * BLOCK_SIZE)
    assert r.wal.last_lsn == last
    assert await r.cache.read(8 * CHUNK, BLOCK_SIZE) == bytes(BLOCK_SIZE)


class TaskCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.live += 1
        self.peak = max(self.peak, self.live)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.live -= 1


async def checkpointer(r: Rig) -> None:
    """What the volume's checkpointer does for the log, minus the metadata image: once the
    cache is flushed past a position, the log before it is reclaimed (else 10,000 DATA and
    STRIPE records fill the journal and every writer waits for room forever)."""
    while True:
        await trio.sleep(0.05)
        pos = r.wal.head_position()
        await r.wal.commit()
        await r.cache.flush()
        r.wal.reclaim(pos)


async def test_ten_thousand_concurrent_small_writes_bounded_tasks() -> None:
    """10,000 concurrent 4 KiB writes (small files, packed) with the background flusher
    running and a small cache: everything lands, and besides the 10,000 writers the cache
    never runs more than a bounded number of tasks (workers, member writes)."""
    n = 10_000
    r = await rig(data_size=4 * n * BLOCK_SIZE // 3 + 4 * CHUNK, journal=48 << 20)
    r.cache.max_dirty = 2 << 20
    counter = TaskCounter()
    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as outer:
            await outer.start(r.cache.run)
            outer.start_soon(checkpointer, r)
            base = counter.live
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    block = i.to_bytes(4, "little") * (BLOCK_SIZE // 4)
                    nursery.start_soon(r.cache.write, i * BLOCK_SIZE, block)
            await r.cache.flush()
            outer.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counter)
    extra = counter.peak - base - n
    assert extra <= 100, f"peak {extra} tasks besides the writers"
    data = await r.array.read(0, n * BLOCK_SIZE)
    for i in (0, 1, n // 2, n - 1):
        assert data[i * BLOCK_SIZE : i * BLOCK_SIZE + 4] == i.to_bytes(4, "little")


@pytest.mark.parametrize("level", [Level.RAID1, Level.RAID5, Level.RAID6])
async def test_sequential_writes_flush_as_full_stripe_runs(level: Level) -> None:
    """Large writes mixed with small ones: consecutive fully dirty stripes are flushed as runs
    (one write per member per run, counted as full-stripe writes), partial ones stripe by
    stripe; the bytes always match a model, in the cache, in place and after a replay."""
    rng = random.Random(level.value)
    r = await rig(level)
    g = r.array.geometry
    size = g.logical_size
    model = bytearray(size)
    for step in range(40):
        if step % 4 == 3:
            n = rng.randint(1, 3)
        else:
            n = rng.randint(2, 7) * g.stripe_data_size // BLOCK_SIZE
        off = rng.randrange(0, size // BLOCK_SIZE - n) * BLOCK_SIZE
        data = blocks(rng, n)
        await r.cache.write(off, data)
        model[off : off + len(data)] = data
        if step % 10 == 9:
            writes_before = sum(d.writes for d in r.members)
            stats_before = r.cache.statistics()
            await r.cache.flush()
            stats = r.cache.statistics()
            stripes = stats.stripes_flushed - stats_before.stripes_flushed
            member_writes = sum(d.writes for d in r.members) - writes_before
            assert member_writes < stripes * len(r.members), "runs must share member writes"
            assert await r.array.read(0, size) == model
    assert await r.cache.read(0, size) == model
    if level is not Level.RAID1:
        assert r.cache.statistics().full_stripe_writes > 0
    await r.wal.commit()
    cache = await replay_into_fresh_cache(r)
    assert await cache.read(0, size) == model


async def test_recovery_writes_never_wait_for_room() -> None:
    """Replay feeds DATA records with journal=False before any flusher runs: they must be
    admitted past max_dirty (recovery hung here when the log held more data than the cache:
    found by the power-cut harness with 200 KB writes); normal writes still wait."""
    rng = random.Random(11)
    r = await rig(max_dirty=4 * BLOCK_SIZE)
    data = blocks(rng, 24)
    with trio.fail_after(5):
        for i in range(0, 24, 3):
            await r.cache.write(
                i * BLOCK_SIZE, data[i * BLOCK_SIZE : (i + 3) * BLOCK_SIZE], journal=False
            )
    assert r.cache.statistics().dirty_bytes == 24 * BLOCK_SIZE
    with trio.move_on_after(0.5) as scope:
        await r.cache.write(100 * BLOCK_SIZE, blocks(rng, 1))
    assert scope.cancelled_caught, "a journaled write must still wait for room"
    await r.cache.flush()
    assert await r.array.read(0, len(data)) == data
