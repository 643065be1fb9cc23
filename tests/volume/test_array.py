"""Model-based tests of the logical array: every level, with members removed at random points.

Each case runs a seeded random sequence of writes (through a ``StripeWriter``, the stripe
layer's executor) and reads of random sizes and offsets against an in-memory ``bytearray``
model; at a random point one member (two for RAID6; one per pair for RAID10) disappears or
starts failing, and every later read must still equal the model.
"""

from __future__ import annotations

import errno
import random

import pytest
import trio

from fusenas.errors import DataLostError
from fusenas.stripe.writer import StripeWriter
from fusenas.units import ByteData
from fusenas.volume.array import Array, MemberFailedError
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
    writer = StripeWriter(array)
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
            await writer.write(offset, data)
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
        writer = StripeWriter(array)
        rng = random.Random(7)
        for _ in range(50):
            off = rng.randrange(array.size - 1)
            await writer.write(off, rng.randbytes(rng.randint(1, min(20000, array.size - off))))
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
    await StripeWriter(array).write(0, b"x" * 50000)
    array.fail_member(0, "test")
    assert array.usable
    array.fail_member(1, "test")
    assert not array.usable
    with pytest.raises(DataLostError):
        await array.read(0, 50000)


async def test_eio_marks_member_faulty_and_read_succeeds() -> None:
    array, devices = make_array(Level.RAID5, 4)
    payload = random.Random(1).randbytes(40000)
    await StripeWriter(array).write(100, payload)
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
    await StripeWriter(array).write(0, b"abc" * 1000)
    with trio.fail_after(5):
        assert await array.read(0, 3000) == (b"abc" * 1000)
    assert array.states[0] == MemberState.FAULTY


async def test_read_members_is_all_or_nothing() -> None:
    """The same member range from several members, at absolute member offsets; one failing
    member fails the whole read (after the others ended) and is marked faulty."""
    array, devices = make_array(Level.RAID5, 4)
    await StripeWriter(array).write(0, random.Random(2).randbytes(array.size))
    offset = DATA_OFFSET + 4096 + 100
    got = await array.read_members([0, 2, 3], offset, 1000)
    assert got == {m: bytes(devices[m].data[offset : offset + 1000]) for m in (0, 2, 3)}
    devices[2].failing = True
    with pytest.raises(MemberFailedError) as caught:
        await array.read_members([0, 2, 3], offset, 1000)
    assert caught.value.member == 2
    assert array.states[2] == MemberState.FAULTY
    with pytest.raises(MemberFailedError):  # a member already down is not read at all
        await array.read_members([2], offset, 1000)
