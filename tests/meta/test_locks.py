"""LockShardTable: modes, ordering, fairness, cancellation, statistics.

Waits are observed with ``wait_all_tasks_blocked`` and times with ``autojump_clock``; no test
sleeps on the wall clock.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.meta.locks import (
    DEFAULT_SHARD_COUNT,
    WAIT_BUCKETS,
    Key,
    LockMode,
    LockShardTable,
)

EX = LockMode.EXCLUSIVE
SH = LockMode.SHARED


def keys_in_shard(table: LockShardTable, shard: int, n: int = 1) -> list[int]:
    """The first ``n`` positive ints that hash to ``shard``."""
    found: list[int] = []
    key = 1
    while len(found) < n:
        if table.shard_of(key) == shard:
            found.append(key)
        key += 1
    return found


def key_in(table: LockShardTable, shard: int) -> int:
    return keys_in_shard(table, shard)[0]


# ---------------------------------------------------------------- shard_of


def test_shard_of_range_and_types() -> None:
    table = LockShardTable()
    assert table.shard_count == DEFAULT_SHARD_COUNT == 256
    keys: list[Key] = [0, 1, 2, 2**63, 2**64 - 1, -1, b"", b"name", b"\x00" * 100]
    for key in keys:
        assert 0 <= table.shard_of(key) < 256
        assert table.shard_of(key) == table.shard_of(key)
    odd = LockShardTable(7)  # not a power of two
    assert {odd.shard_of(k) for k in range(1, 200)} == set(range(7))
    for bad in ["inode", 1.0, True, None]:
        with pytest.raises(TypeError):
            table.shard_of(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [0, -1])
def test_shard_count_must_be_positive(count: int) -> None:
    with pytest.raises(ValueError):
        LockShardTable(count)


def test_consecutive_inodes_spread() -> None:
    table = LockShardTable(256)
    load = Counter(table.shard_of(ino) for ino in range(1, 4097))
    assert len(load) == 256  # every shard used
    assert max(load.values()) <= 20  # mean is 16
    small = LockShardTable(16)
    for start in (1, 1000, 123_456_789):
        assert len({small.shard_of(ino) for ino in range(start, start + 16)}) >= 12


def test_shard_of_bytes_is_stable_across_processes() -> None:
    """Bytes keys must not go through Python's per-process randomized hash."""
    code = (
        "from fusenas.meta.locks import LockShardTable as T; t = T(); "
        "print([t.shard_of(k) for k in (b'a', b'dir/entry', b'x' * 64, 12345)])"
    )
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(run.stdout)
    assert len(outputs) == 1


# ---------------------------------------------------------------- modes


async def test_shared_locks_coexist() -> None:
    table = LockShardTable(16)
    inside = 0
    leave = trio.Event()

    async def reader() -> None:
        nonlocal inside
        async with table.shared(7):
            inside += 1
            await leave.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert inside == 3
        stats = table.statistics().shards[table.shard_of(7)]
        assert (stats.readers, stats.writer, stats.tasks_waiting) == (3, False, 0)
        leave.set()
    assert table.statistics().grants_held == 0


@pytest.mark.parametrize(("first", "second"), [(EX, EX), (EX, SH), (SH, EX)])
async def test_exclusive_excludes(first: LockMode, second: LockMode) -> None:
    table = LockShardTable(16)
    entered = trio.Event()

    async def second_task() -> None:
        async with table.lock(**{second.value: [42]}):
            entered.set()

    async with trio.open_nursery() as nursery:
        grant = await table.acquire(**{first.value: [42]})
        nursery.start_soon(second_task)
        await trio.testing.wait_all_tasks_blocked()
        assert not entered.is_set()
        assert table.statistics().shards[table.shard_of(42)].tasks_waiting == 1
        table.release(grant)
        await entered.wait()


async def test_mixed_form_takes_shared_shard_exclusive() -> None:
    table = LockShardTable(4)
    a, b = keys_in_shard(table, 1, 2)  # collide in shard 1
    c = key_in(table, 3)
    async with table.lock(exclusive=[a], shared=[b, c]) as grant:
        assert grant.held == ((1, EX), (3, SH))
        stats = table.statistics().shards
        assert stats[1].writer and stats[1].readers == 0
        assert stats[3].readers == 1 and not stats[3].writer


@given(
    exclusive=st.lists(st.integers(min_value=0, max_value=2**64), max_size=6),
    shared=st.lists(st.integers(min_value=0, max_value=2**64), max_size=6),
)
@settings(max_examples=60, deadline=None)
def test_grant_is_ascending_distinct_and_exclusive_wins(
    exclusive: list[int], shared: list[int]
) -> None:
    table = LockShardTable(8)

    async def main() -> None:
        grant = table.acquire_nowait(exclusive=exclusive, shared=shared)
        ex_shards = {table.shard_of(k) for k in exclusive}
        sh_shards = {table.shard_of(k) for k in shared} - ex_shards
        expected = sorted([(s, EX) for s in ex_shards] + [(s, SH) for s in sh_shards])
        assert list(grant.held) == expected
        table.release(grant)
        stats = table.statistics()
        assert stats.acquisitions == len(expected)
        assert all(s.readers == 0 and not s.writer for s in stats.shards)

    trio.run(main)


# ---------------------------------------------------------------- ordering


async def test_keys_in_one_shard_are_taken_once() -> None:
    table = LockShardTable(4)
    a, b, c = keys_in_shard(table, 2, 3)
    async with table.exclusive(a, b, c, a) as grant:
        assert grant.held == ((2, EX),)
    async with table.shared(a, b) as grant:
        assert grant.held == ((2, SH),)
    assert table.statistics().shards[2].acquisitions == 2


async def test_shards_taken_in_ascending_order() -> None:
    """Keys listed high-to-low: the call takes shard 2, then queues on 5, not yet taking 9."""
    table = LockShardTable(16)
    lo, mid, hi = key_in(table, 2), key_in(table, 5), key_in(table, 9)
    blocker = table.acquire_nowait(exclusive=[mid])
    done = trio.Event()

    async def wants_all() -> None:
        async with table.exclusive(hi, mid, lo) as grant:
            assert grant.shards == (2, 5, 9)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wants_all)
        await trio.testing.wait_all_tasks_blocked()
        shards = table.statistics().shards
        assert shards[2].writer
        assert shards[5].tasks_waiting == 1
        assert not shards[9].writer
        table.release(blocker)
    assert done.is_set()


async def test_opposite_key_orders_do_not_deadlock() -> None:
    table = LockShardTable(16)
    a, b = key_in(table, 3), key_in(table, 11)

    async def worker(first: int, second: int) -> None:
        for _ in range(100):
            async with table.exclusive(first, second):
                await trio.sleep(0)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker, a, b)
            nursery.start_soon(worker, b, a)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_many_tasks_no_deadlock_no_lost_update(seed: int) -> None:
    """200 tasks x 5 ops on random pairs/triples of 40 keys in 16 shards, mixed modes.

    Exclusive holders do read / yield / write increments; shared holders check that nobody
    changes their keys while they yield. Lost updates would show in the final counters.
    """
    rng = random.Random(seed)
    table = LockShardTable(16)
    keys = list(range(1, 41))
    counters = dict.fromkeys(keys, 0)
    expected = dict.fromkeys(keys, 0)
    plans: list[list[tuple[list[int], list[int]]]] = []
    for _ in range(200):
        ops = []
        for _ in range(5):
            chosen = rng.sample(keys, rng.choice((2, 3)))
            kind = rng.choice(("exclusive", "shared", "mixed"))
            if kind == "exclusive":
                ex, sh = chosen, []
            elif kind == "shared":
                ex, sh = [], chosen
            else:
                ex, sh = chosen[:1], chosen[1:]
            for k in ex:
                expected[k] += 1
            ops.append((ex, sh))
        plans.append(ops)

    async def worker(ops: list[tuple[list[int], list[int]]]) -> None:
        for ex, sh in ops:
            async with table.lock(exclusive=ex, shared=sh):
                seen = {k: counters[k] for k in sh}
                for k in ex:
                    value = counters[k]
                    await trio.sleep(0)
                    counters[k] = value + 1
                await trio.sleep(0)
                assert {k: counters[k] for k in sh} == seen

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for ops in plans:
                nursery.start_soon(worker, ops)
    assert counters == expected
    stats = table.statistics()
    assert stats.grants_held == 0 and stats.tasks_waiting == 0
    assert stats.contended > 0  # the test did exercise waiting
    assert all(s.readers == 0 and not s.writer for s in stats.shards)


# ---------------------------------------------------------------- fairness


async def test_writer_not_starved_by_stream_of_readers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reader starts every second and holds for 3 s, so readers always overlap. A writer
    arriving at t=10.5 waits only for the readers already in (the one from t=10 leaves at 13);
    readers arriving after it queue behind it."""
    table = LockShardTable(16)
    t0 = trio.current_time()
    writer_done = trio.Event()
    writer_span: list[float] = []
    reader_log: list[tuple[float, float]] = []  # (arrived, acquired), relative to t0

    async def reader() -> None:
        arrived = trio.current_time() - t0
        async with table.shared(5):
            reader_log.append((arrived, trio.current_time() - t0))
            await trio.sleep(3)

    async def writer() -> None:
        await trio.sleep(10.5)
        async with table.exclusive(5):
            writer_span.append(trio.current_time() - t0)
            await trio.sleep(1)
        writer_span.append(trio.current_time() - t0)
        writer_done.set()

    with trio.fail_after(100):  # virtual seconds: a starved writer fails, not hangs
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            while not writer_done.is_set():
                nursery.start_soon(reader)
                await trio.sleep(1)

    assert writer_span == [13.0, 14.0]
    late = [acquired for arrived, acquired in reader_log if arrived > 10.5]
    assert late and all(acquired >= 14.0 for acquired in late)
    early = [acquired for arrived, acquired in reader_log if arrived < 10.5]
    assert early == [float(t) for t in range(11)]  # readers never waited for each other


async def test_reader_queues_behind_waiting_writer() -> None:
    """No barging: a compatible reader still waits if a writer is queued ahead of it."""
    table = LockShardTable(16)
    first = table.acquire_nowait(shared=[9])
    order: list[str] = []

    async def take(name: str, mode: LockMode) -> None:
        async with table.lock(**{mode.value: [9]}):
            order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "writer", EX)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "reader", SH)
        await trio.testing.wait_all_tasks_blocked()
        assert order == []
        assert table.statistics().shards[table.shard_of(9)].tasks_waiting == 2
        table.release(first)
    assert order == ["writer", "reader"]


# ---------------------------------------------------------------- cancellation


async def test_cancelled_while_waiting_holds_nothing() -> None:
    table = LockShardTable(16)
    lo, hi = key_in(table, 2), key_in(table, 5)
    blocker = table.acquire_nowait(exclusive=[hi])
    cancelled = False

    async def wants_both(scope: trio.CancelScope) -> None:
        nonlocal cancelled
        with scope:
            try:
                async with table.exclusive(lo, hi):
                    pytest.fail("body must not run")
            except trio.Cancelled:
                cancelled = True
                raise

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wants_both, scope)
        await trio.testing.wait_all_tasks_blocked()
        shards = table.statistics().shards
        assert shards[2].writer and shards[5].tasks_waiting == 1  # lo held while queued on hi
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        shards = table.statistics().shards
        assert not shards[2].writer and shards[5].tasks_waiting == 0
        assert shards[5].writer  # still ours
    assert cancelled
    table.release(blocker)
    stats = table.statistics()
    assert stats.grants_held == 0
    assert all(s.readers == 0 and not s.writer for s in stats.shards)
    assert stats.shards[5].contended == 0  # a cancelled wait is not an acquisition
    table.release(table.acquire_nowait(exclusive=[lo, hi]))


async def test_cancelled_on_entry_takes_nothing() -> None:
    table = LockShardTable(16)
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await table.acquire(exclusive=[1, 2])
    stats = table.statistics()
    assert stats.acquisitions == 0 and stats.grants_held == 0


async def test_cancelled_queued_writer_lets_readers_behind_it_in() -> None:
    table = LockShardTable(16)
    holder = table.acquire_nowait(shared=[3])
    reader_in = trio.Event()
    leave = trio.Event()

    async def writer(scope: trio.CancelScope) -> None:
        with scope:
            await table.acquire(exclusive=[3])
            pytest.fail("writer must not get the lock")

    async def reader() -> None:
        async with table.shared(3):
            reader_in.set()
            await leave.wait()

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, scope)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert not reader_in.is_set()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert reader_in.is_set()
        assert table.statistics().shards[table.shard_of(3)].readers == 2
        leave.set()
    table.release(holder)


async def test_exception_in_body_releases() -> None:
    table = LockShardTable(16)
    with pytest.raises(KeyError):
        async with table.lock(exclusive=[1], shared=[2, 3]):
            raise KeyError("boom")
    stats = table.statistics()
    assert stats.grants_held == 0
    assert all(s.readers == 0 and not s.writer for s in stats.shards)


async def test_uncontended_acquire_is_a_checkpoint() -> None:
    table = LockShardTable(16)
    with trio.testing.assert_checkpoints():
        grant = await table.acquire(exclusive=[1])
    table.release(grant)


# ---------------------------------------------------------------- misuse, nowait


async def test_not_reentrant() -> None:
    table = LockShardTable(16)
    async with table.shared(1):
        with pytest.raises(RuntimeError, match="not reentrant"):
            await table.acquire(shared=[1])
        with pytest.raises(RuntimeError, match="not reentrant"):
            table.acquire_nowait(exclusive=[2])  # another key: still refused
    assert table.statistics().grants_held == 0


async def test_release_checks_owner() -> None:
    table = LockShardTable(16)
    grant = await table.acquire(exclusive=[1])

    async def other() -> None:
        with pytest.raises(RuntimeError):
            table.release(grant)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
    table.release(grant)
    with pytest.raises(RuntimeError):
        table.release(grant)


async def test_context_is_single_use() -> None:
    table = LockShardTable(16)
    ctx = table.exclusive(1)
    async with ctx:
        pass
    with pytest.raises(RuntimeError):
        async with ctx:
            pass


async def test_acquire_nowait_all_or_nothing() -> None:
    table = LockShardTable(16)
    lo, hi = key_in(table, 1), key_in(table, 8)
    holder_ready = trio.Event()
    leave = trio.Event()

    async def holder() -> None:
        grant = table.acquire_nowait(exclusive=[hi])
        holder_ready.set()
        await leave.wait()
        table.release(grant)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await holder_ready.wait()
        with pytest.raises(trio.WouldBlock):
            table.acquire_nowait(shared=[lo, hi])
        assert not table.statistics().shards[1].readers  # lo not left behind
        leave.set()
    grant = table.acquire_nowait(shared=[lo, hi])
    assert grant.held == ((1, SH), (8, SH))
    table.release(grant)


async def test_acquire_nowait_does_not_jump_the_queue() -> None:
    table = LockShardTable(16)
    reader = table.acquire_nowait(shared=[4])

    async def writer() -> None:
        async with table.exclusive(4):
            pass

    async def late_reader() -> None:
        with pytest.raises(trio.WouldBlock):
            table.acquire_nowait(shared=[4])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(late_reader)
        await trio.testing.wait_all_tasks_blocked()
        table.release(reader)


# ---------------------------------------------------------------- statistics


async def test_statistics_exact_wait_times(autojump_clock: trio.testing.MockClock) -> None:
    """Shard A: holder 0-3 s; B arrives 0.5, holds 3-4 (waits 2.5); C arrives 1, gets it at 4
    (waits 3.0). Shard B: holder 0-1 s, one waiter arriving at 0 (waits 1.0)."""
    table = LockShardTable(16)
    key_a, key_b = key_in(table, 6), key_in(table, 12)

    async def hold(key: int, delay: float, hold_for: float) -> None:
        await trio.sleep(delay)
        async with table.exclusive(key):
            await trio.sleep(hold_for)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, key_a, 0, 3)
        nursery.start_soon(hold, key_b, 0, 1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, key_b, 0, 1)
        nursery.start_soon(hold, key_a, 0.5, 1)
        nursery.start_soon(hold, key_a, 1, 1)

    stats = table.statistics()
    a, b = stats.shards[6], stats.shards[12]
    assert (a.acquisitions, a.contended, a.wait_total, a.wait_max) == (3, 2, 5.5, 3.0)
    assert (b.acquisitions, b.contended, b.wait_total, b.wait_max) == (2, 1, 1.0, 1.0)
    assert stats.bucket_bounds == WAIT_BUCKETS
    one_s = WAIT_BUCKETS.index(1.0)
    expected_a = [0] * (len(WAIT_BUCKETS) + 1)
    expected_a[0] = 1  # the uncontended holder
    expected_a[one_s + 1] = 2  # 2.5 s and 3.0 s fall in (1, 10]
    assert list(a.wait_histogram) == expected_a
    expected_b = [0] * (len(WAIT_BUCKETS) + 1)
    expected_b[0] = 1
    expected_b[one_s] = 1  # 1.0 s is in (0.1, 1.0]
    assert list(b.wait_histogram) == expected_b
    assert (stats.acquisitions, stats.contended, stats.wait_total, stats.wait_max) == (
        5,
        3,
        6.5,
        3.0,
    )
    assert sum(stats.wait_histogram) == stats.acquisitions
    assert [s.shard for s in stats.hottest(1)] == [6]
    assert [s.shard for s in stats.hottest(10)] == [6, 12]  # shards that never waited omitted
    assert stats.hottest(0) == ()
    assert stats.tasks_waiting == 0 and stats.grants_held == 0


async def test_statistics_is_a_frozen_snapshot() -> None:
    table = LockShardTable(16)
    before = table.statistics()
    async with table.exclusive(1):
        pass
    assert before.acquisitions == 0
    with pytest.raises(AttributeError):
        before.acquisitions = 1  # type: ignore[misc]
