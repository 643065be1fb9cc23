"""Model-based tests of the logical array: every level, with members removed at random points.

Each case runs a seeded random sequence of writes and reads of random sizes and offsets against
an in-memory ``bytearray`` model; at a random point one member (two for RAID6; one per pair for
RAID10) disappears or starts failing, and every later read must still equal the model.
"""

from __future__ import annotations

import errno
import random
import threading

import pytest
import trio

from fusenas.errors import DataLostError
from fusenas.units import ByteData
from fusenas.volume.array import Array, Strategy, choose_strategy
from fusenas.volume.layout import Geometry, Level
from fusenas.volume.superblock import DATA_OFFSET, MemberState
from tests.devices import MemoryDevice

CASES_PER_LEVEL = 40
OPS_PER_CASE = 60

LEVEL_MEMBERS = [
    (Level.RAID0, 3),
    (Level.RAID1, 2),
    (Level.RAID1, 3),
    (Level.RAID5, 3),
    (Level.RAID5, 4),
    (Level.RAID5, 5),
    (Level.RAID6, 4),
    (Level.RAID6, 6),
    (Level.RAID10, 4),
    (Level.RAID10, 6),
]


class FailingDevice(MemoryDevice):
    """A memory device that starts returning EIO when told to."""

    failing = False

    async def read(self, offset: int, length: int) -> bytes:
        if self.failing:
            raise OSError(errno.EIO, "injected EIO")
        return await super().read(offset, length)

    async def write(self, offset: int, data: ByteData) -> None:
        if self.failing:
            raise OSError(errno.EIO, "injected EIO")
        await super().write(offset, data)


def make_array(
    level: Level, members: int, chunk: int = 4096, stripes: int = 16
) -> tuple[Array, list[FailingDevice]]:
    geometry = Geometry.make(level, members, chunk, chunk * stripes)
    devices = [FailingDevice(DATA_OFFSET + geometry.member_data_size) for _ in range(members)]
    return Array(geometry, list(devices)), devices


def victims(level: Level, members: int, rng: random.Random) -> list[int]:
    """Members to lose: as many as the level tolerates, chosen at random."""
    if level == Level.RAID0:
        return []
    if level == Level.RAID10:
        return [2 * p + rng.randrange(2) for p in range(members // 2)]
    count = {Level.RAID1: members - 1, Level.RAID5: 1, Level.RAID6: 2}[level]
    return rng.sample(range(members), count)


async def run_case(level: Level, members: int, seed: int) -> None:
    rng = random.Random(seed)
    chunk = rng.choice([4096, 8192, 16384])
    array, devices = make_array(level, members, chunk, stripes=rng.randint(2, 12))
    size = array.size
    model = bytearray(size)
    lose = victims(level, members, rng)
    lose_at = {rng.randrange(OPS_PER_CASE): m for m in lose}
    for step in range(OPS_PER_CASE):
        if step in lose_at:
            member = lose_at[step]
            if rng.random() < 0.5:
                devices[member].failing = True  # discovered on next I/O
            else:
                array.fail_member(member, "removed by test")
        offset = rng.randrange(size)
        length = rng.randint(1, min(size - offset, rng.choice([512, 4096, 3 * chunk, 8 * chunk])))
        if rng.random() < 0.6:
            data = rng.randbytes(length)
            await array.write(offset, data)
            model[offset : offset + length] = data
        else:
            got = await array.read(offset, length)
            assert got == bytes(model[offset : offset + length]), (level, members, seed, step)
    assert await array.read(0, size) == bytes(model), (level, members, seed)


@pytest.mark.parametrize(("level", "members"), LEVEL_MEMBERS, ids=lambda v: str(v))
async def test_model_with_member_loss(level: Level, members: int) -> None:
    for seed in range(CASES_PER_LEVEL):
        await run_case(level, members, seed)


async def test_parity_is_consistent_after_writes() -> None:
    """After arbitrary writes, every stripe's parity blocks equal parity of its data blocks."""
    from fusenas.volume import parity

    for level, members in [(Level.RAID5, 4), (Level.RAID6, 5)]:
        array, devices = make_array(level, members, 4096, 8)
        rng = random.Random(7)
        for _ in range(50):
            off = rng.randrange(array.size - 1)
            await array.write(off, rng.randbytes(rng.randint(1, min(20000, array.size - off))))
        g = array.geometry
        for s in range(g.stripes):
            row = [
                bytes(
                    devices[g.data_copies(s, i)[0]].data[
                        DATA_OFFSET + s * 4096 : DATA_OFFSET + (s + 1) * 4096
                    ]
                )
                for i in range(g.data_per_stripe)
            ]
            pm = g.parity_members(s)
            p = bytes(devices[pm[0]].data[DATA_OFFSET + s * 4096 : DATA_OFFSET + (s + 1) * 4096])
            if level == Level.RAID5:
                assert p == parity.gen_p(row)
            else:
                q = bytes(
                    devices[pm[1]].data[DATA_OFFSET + s * 4096 : DATA_OFFSET + (s + 1) * 4096]
                )
                assert (p, q) == parity.gen_pq(row)


async def test_too_many_failures_raise_data_lost() -> None:
    array, _ = make_array(Level.RAID5, 4)
    await array.write(0, b"x" * 50000)
    array.fail_member(0, "test")
    assert array.usable
    array.fail_member(1, "test")
    assert not array.usable
    with pytest.raises(DataLostError):
        await array.read(0, 50000)


async def test_eio_marks_member_faulty_and_read_succeeds() -> None:
    array, devices = make_array(Level.RAID5, 4)
    payload = random.Random(1).randbytes(40000)
    await array.write(100, payload)
    failures: list[tuple[int, str]] = []
    array.failure_hooks.append(lambda m, why: failures.append((m, why)))
    devices[1].failing = True
    assert await array.read(100, len(payload)) == payload
    assert array.states[1] == MemberState.FAULTY
    assert failures and failures[0][0] == 1


async def test_hung_member_is_failed_at_deadline() -> None:
    class Hanging(MemoryDevice):
        async def read(self, offset: int, length: int) -> bytes:
            await trio.sleep_forever()
            raise AssertionError

    geometry = Geometry.make(Level.RAID1, 2, 4096, 4096 * 4)
    good = MemoryDevice(DATA_OFFSET + geometry.member_data_size)
    array = Array(geometry, [Hanging(good.size), good], io_timeout=0.2)
    await array.write(0, b"abc" * 1000)
    with trio.fail_after(5):
        assert await array.read(0, 3000) == (b"abc" * 1000)
    assert array.states[0] == MemberState.FAULTY


async def test_partial_parity_updates_are_journaled_before_issue() -> None:
    array, devices = make_array(Level.RAID5, 4, 4096, 4)
    journaled: list[int] = []

    async def journal(writes: object) -> None:
        # Nothing of this update may have reached the members yet.
        journaled.append(sum(bytes(d.data) != b"\0" * d.size for d in devices))

    await array.write(0, b"\1" * 3 * 4096, journal=journal)  # full stripe: no journal
    assert journaled == []
    await array.write(4096 * 3, b"\2" * 100, journal=journal)  # partial: journal first
    assert len(journaled) == 1


def test_strategy_counts_reads_like_md() -> None:
    # 4 data + 1 parity, one block fully rewritten: RMW reads 2, RCW reads 3.
    assert choose_strategy(4, 1, covered=1, touched=1, degraded=False) is Strategy.RMW
    # 4 data, three blocks rewritten: RMW reads 4, RCW reads 1.
    assert choose_strategy(4, 1, covered=3, touched=3, degraded=False) is Strategy.RCW
    assert choose_strategy(4, 1, covered=4, touched=4, degraded=False) is Strategy.FULL
    assert choose_strategy(4, 2, covered=4, touched=4, degraded=True) is Strategy.DEGRADED


@pytest.mark.parametrize(
    "level,members",
    [(Level.RAID0, 4), (Level.RAID1, 3), (Level.RAID10, 4), (Level.RAID5, 4), (Level.RAID6, 5)],
)
async def test_full_stripe_runs_equal_stripe_by_stripe_writes(level: Level, members: int) -> None:
    """``write_full_stripes`` leaves every member byte for byte as ``write`` of the same data
    does, with one write per member for the whole run; a member down during the run misses
    its write and the data still reads back (degraded) at every redundant level."""
    rng = random.Random(members)
    by_run, by_run_devs = make_array(level, members)
    by_stripe, by_stripe_devs = make_array(level, members)
    g = by_run.geometry
    first, count = 3, 5
    data = rng.randbytes(count * g.stripe_data_size)
    await by_stripe.write(first * g.stripe_data_size, data)
    before = [d.writes for d in by_run_devs]
    await by_run.write_full_stripes(first, data)
    assert [d.writes - b for d, b in zip(by_run_devs, before, strict=True)] == [1] * members
    assert [d.data for d in by_run_devs] == [d.data for d in by_stripe_devs]
    with pytest.raises(ValueError):
        await by_run.write_full_stripes(first, data[:-1])
    if level is Level.RAID0:
        return
    by_run.fail_member(1, "test")
    data2 = rng.randbytes(2 * g.stripe_data_size)
    await by_run.write_full_stripes(0, data2)
    assert await by_run.read(0, len(data2)) == data2


@pytest.mark.parametrize("level,members", [(Level.RAID1, 2), (Level.RAID5, 4), (Level.RAID6, 5)])
async def test_large_full_stripe_runs_are_computed_off_the_event_loop(
    level: Level, members: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of at least OFFLOAD_BYTES is laid out (parity included) in a worker thread, a
    smaller one on the event loop; both give the same member bytes as stripe-by-stripe
    writes."""
    from fusenas.volume import array as array_module

    threads: list[int] = []
    real = array_module.full_stripe_writes

    def spy(*args: object) -> list[array_module.MemberWrite]:
        threads.append(threading.get_ident())
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(array_module, "full_stripe_writes", spy)
    chunk = 64 << 10
    by_run, by_run_devs = make_array(level, members, chunk, 24)
    by_stripe, by_stripe_devs = make_array(level, members, chunk, 24)
    g = by_run.geometry
    big = -(-array_module.OFFLOAD_BYTES // g.stripe_data_size)
    rng = random.Random(members)
    for first, count in [(2, big), (2 + big, 1)]:
        data = rng.randbytes(count * g.stripe_data_size)
        await by_stripe.write(first * g.stripe_data_size, data)
        await by_run.write_full_stripes(first, data)
    main = threading.get_ident()
    assert threads[0] != main and threads[1] == main, threads
    assert [d.data for d in by_run_devs] == [d.data for d in by_stripe_devs]
