"""The fault matrix at the array level: every RAID level by every injected fault.

Each case writes a seeded random image through ``Array`` (by a ``StripeWriter``), injects one
fault into member 1 with ``FaultyDevice`` (``fusenas.volume.faults``) and reads everything back.
Where the level has redundancy the read equals the model and the member is failed (EIO, hang,
a dying disk), or the rot is found by the block checksums and repaired in place (bit flips on
write, on read); RAID0 loses the data and says so (``DataLostError``). docs/faults.md names
these tests.
"""

from __future__ import annotations

import random

import crc32c
import pytest
import trio

from fusenas.errors import DataLostError
from fusenas.stripe.writer import StripeWriter
from fusenas.units import BLOCK_SIZE
from fusenas.volume.array import Array
from fusenas.volume.faults import FaultSpec, FaultyDevice, flip_bit, parse_inject
from fusenas.volume.layout import Geometry, Level
from fusenas.volume.superblock import DATA_OFFSET, MemberState
from tests.devices import MemoryDevice

LEVELS = [
    (Level.RAID0, 3),
    (Level.RAID1, 2),
    (Level.RAID5, 4),
    (Level.RAID6, 5),
    (Level.RAID10, 4),
]
CHUNK = 8192
STRIPES = 8


def make(level: Level, members: int) -> tuple[Array, list[FaultyDevice], bytes]:
    g = Geometry.make(level, members, CHUNK, CHUNK * STRIPES)
    devs = [
        FaultyDevice(MemoryDevice(DATA_OFFSET + g.member_data_size, f"m{i}"), seed=i)
        for i in range(members)
    ]
    array = Array(g, devs, io_timeout=0.5)
    image = random.Random(level * 10 + members).randbytes(g.logical_size)
    return array, devs, image


def crcs(image: bytes) -> list[int]:
    return [int(crc32c.crc32c(image[i : i + BLOCK_SIZE])) for i in range(0, len(image), BLOCK_SIZE)]


async def read_checked(array: Array, image: bytes) -> bytes:
    """Read every block, healing by checksum like ``FileStore.read`` does."""
    want = crcs(image)
    out = bytearray()
    for b, crc in enumerate(want):
        block = await array.read(b * BLOCK_SIZE, BLOCK_SIZE)
        if int(crc32c.crc32c(block)) != crc:
            result = await array.read_verified(
                b * BLOCK_SIZE, BLOCK_SIZE, lambda d, c=crc: int(crc32c.crc32c(d)) == c
            )
            if result.data is None:
                raise DataLostError(f"block {b} lost")
            block = result.data
        out += block
    return bytes(out)


@pytest.mark.parametrize(("level", "members"), LEVELS, ids=lambda v: str(v))
@pytest.mark.parametrize("kind", ["fail", "fail_after", "hang_after", "slow"])
async def test_member_failure_is_served_from_redundancy(
    level: Level, members: int, kind: str
) -> None:
    array, devs, image = make(level, members)
    await StripeWriter(array).write(0, image)
    failures: list[int] = []
    array.failure_hooks.append(lambda m, why: failures.append(m))
    arg = {"fail": 0.0, "fail_after": 3.0, "hang_after": 2.0, "slow": 0.001}[kind]
    devs[1].arm(FaultSpec(1, kind, arg))
    if kind == "slow":
        assert await array.read(0, len(image)) == image
        assert array.states[1] == MemberState.ACTIVE
        return
    with trio.fail_after(10):
        if level == Level.RAID0:
            with pytest.raises(DataLostError):
                await array.read(0, len(image))
            return
        assert await array.read(0, len(image)) == image
        # Writes keep working degraded, and read back.
        new = random.Random(7).randbytes(3 * CHUNK + 100)
        await StripeWriter(array).write(CHUNK // 2, new)
        image = image[: CHUNK // 2] + new + image[CHUNK // 2 + len(new) :]
        assert await array.read(0, len(image)) == image
    assert array.states[1] == MemberState.FAULTY
    assert failures == [1]


@pytest.mark.parametrize(("level", "members"), LEVELS, ids=lambda v: str(v))
async def test_rot_on_write_is_healed_by_checksums(level: Level, members: int) -> None:
    array, devs, image = make(level, members)
    devs[1].arm(FaultSpec(1, "corrupt_write", 0.3))
    await StripeWriter(array).write(0, image)
    devs[1].corrupt_write = 0.0
    assert devs[1].corrupted > 0
    if level == Level.RAID0:
        with pytest.raises(DataLostError):
            await read_checked(array, image)
        return
    assert await read_checked(array, image) == image
    assert array.heal.unrecoverable == 0
    assert array.heal.bad_by_member.keys() <= {1}
    # Everything read through member 1 was rewritten: a second pass finds nothing to heal.
    before = array.heal.repaired
    assert await read_checked(array, image) == image
    assert array.heal.repaired == before
    assert array.states[1] == MemberState.ACTIVE


@pytest.mark.parametrize(("level", "members"), LEVELS, ids=lambda v: str(v))
async def test_rot_on_read_is_served_from_redundancy(level: Level, members: int) -> None:
    array, devs, image = make(level, members)
    await StripeWriter(array).write(0, image)
    devs[1].arm(FaultSpec(1, "corrupt_read", 1.0))
    if level == Level.RAID0:
        with pytest.raises(DataLostError):
            await read_checked(array, image)
        return
    assert await read_checked(array, image) == image


async def test_raid6_two_rotten_members_in_one_row_are_both_repaired() -> None:
    array, devs, image = make(Level.RAID6, 5)
    await StripeWriter(array).write(0, image)
    g = array.geometry
    # Stripe 0, data index 0: rot its block and the same range on the P member.
    d = g.data_copies(0, 0)[0]
    p = g.parity_members(0)[0]
    rng = random.Random(3)
    for m in (d, p):
        inner = devs[m].inner
        assert isinstance(inner, MemoryDevice)
        inner.data[DATA_OFFSET : DATA_OFFSET + BLOCK_SIZE] = flip_bit(
            inner.data[DATA_OFFSET : DATA_OFFSET + BLOCK_SIZE], rng
        )
    assert await read_checked(array, image) == image
    assert set(array.heal.bad_by_member) == {d, p}
    assert array.heal.repaired == 2


async def test_raid5_rot_while_degraded_is_unrecoverable() -> None:
    array, devs, image = make(Level.RAID5, 4)
    await StripeWriter(array).write(0, image)
    g = array.geometry
    d = g.data_copies(0, 0)[0]
    other = g.data_copies(0, 1)[0]
    array.fail_member(other, "test")
    inner = devs[d].inner
    assert isinstance(inner, MemoryDevice)
    inner.data[DATA_OFFSET + 5] ^= 1
    with pytest.raises(DataLostError):
        await read_checked(array, image)
    assert array.heal.unrecoverable == 1


async def test_rebuild_stripe_restores_a_replaced_member() -> None:
    for level, members in LEVELS[1:]:
        array, devs, image = make(level, members)
        await StripeWriter(array).write(0, image)
        fresh = MemoryDevice(devs[1].size, "new")
        array.attach(1, fresh, MemberState.REBUILDING)
        for s in range(array.geometry.stripes):
            await array.rebuild_stripe(s, 1)
        old = devs[1].inner
        assert isinstance(old, MemoryDevice)
        assert fresh.data[DATA_OFFSET:] == old.data[DATA_OFFSET:], level


def test_parse_inject() -> None:
    assert parse_inject("member:1:fail_after:100+member:2:slow:0.5") == [
        FaultSpec(1, "fail_after", 100.0),
        FaultSpec(2, "slow", 0.5),
    ]
    assert parse_inject("member:0:fail") == [FaultSpec(0, "fail", 0.0)]
    for bad in ("disk:1:fail", "member:x:fail", "member:1:explode", "member:1:slow"):
        with pytest.raises(ValueError):
            parse_inject(bad)
