"""StripeWriter, the executor of stripe plans, on in-memory arrays: the journal hook before any
member write, full-stripe runs (one write per member, parity off the event loop when large),
suspect rows, re-planning around a member that fails mid-update, and the ``LogicalVolume``
face the checkpoint regions use."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Sequence

import pytest

from fusenas.stripe import plan
from fusenas.stripe import writer as writer_module
from fusenas.stripe.plan import Strategy
from fusenas.stripe.writer import StripeWriter
from fusenas.units import LSN
from fusenas.volume.layout import Level
from fusenas.volume.superblock import MemberState
from fusenas.volume.writes import MemberWrite
from fusenas.wal.checkpoint import CheckpointRegions, LogicalVolume
from fusenas.wal.format import LogPosition
from tests.volume.test_array import make_array


async def test_partial_parity_updates_are_journaled_before_issue() -> None:
    array, devices = make_array(Level.RAID5, 4, 4096, 4)
    journaled: list[int] = []
    before: list[bytes] = []

    async def journal(writes: Sequence[MemberWrite]) -> None:
        # Nothing of this update may have reached the members yet.
        journaled.append(sum(bytes(d.data) != b for d, b in zip(devices, before, strict=True)))

    writer = StripeWriter(array, journal=journal)
    await writer.write(0, b"\1" * 3 * 4096)  # full stripe: no journal
    assert journaled == []
    before[:] = [bytes(d.data) for d in devices]
    await writer.write(4096 * 3, b"\2" * 100)  # partial: journal first
    assert len(journaled) == 1
    assert journaled == [0]
    assert [bytes(d.data) for d in devices] != before  # and then issued


@pytest.mark.parametrize(
    "level,members",
    [(Level.RAID0, 4), (Level.RAID1, 3), (Level.RAID10, 4), (Level.RAID5, 4), (Level.RAID6, 5)],
)
async def test_full_stripe_runs_equal_stripe_by_stripe_writes(level: Level, members: int) -> None:
    """``write_full_stripes`` leaves every member byte for byte as ``write`` of the same data
    does, with one write per member for the whole run; a member down during the run misses
    its write and the data still reads back (degraded) at every redundant level."""
    rng = random.Random(members)
    by_run_array, by_run_devs = make_array(level, members)
    by_stripe_array, by_stripe_devs = make_array(level, members)
    by_run, by_stripe = StripeWriter(by_run_array), StripeWriter(by_stripe_array)
    g = by_run_array.geometry
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
    by_run_array.fail_member(1, "test")
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
    threads: list[int] = []
    real = plan.full_stripe_writes

    def spy(*args: object) -> list[MemberWrite]:
        threads.append(threading.get_ident())
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_module, "full_stripe_writes", spy)
    chunk = 64 << 10
    by_run_array, by_run_devs = make_array(level, members, chunk, 24)
    by_stripe_array, by_stripe_devs = make_array(level, members, chunk, 24)
    by_run, by_stripe = StripeWriter(by_run_array), StripeWriter(by_stripe_array)
    g = by_run_array.geometry
    big = -(-writer_module.OFFLOAD_BYTES // g.stripe_data_size)
    rng = random.Random(members)
    for first, count in [(2, big), (2 + big, 1)]:
        data = rng.randbytes(count * g.stripe_data_size)
        await by_stripe.write(first * g.stripe_data_size, data)
        await by_run.write_full_stripes(first, data)
    main = threading.get_ident()
    assert threads[0] != main and threads[1] == main, threads
    assert [d.data for d in by_run_devs] == [d.data for d in by_stripe_devs]


async def test_suspect_rows_are_never_patched() -> None:
    """The predicate is asked for each stripe of a parity level under its row lock: a suspect
    row takes reconstruct-write where read-modify-write would need fewer reads. Levels without
    parity never ask."""
    array, _ = make_array(Level.RAID5, 6)  # 5 data blocks a row: RMW reads fewer
    asked: list[int] = []
    suspect = {3}

    def suspect_parity(stripe: int) -> bool:
        asked.append(stripe)
        return stripe in suspect

    writer = StripeWriter(array, suspect_parity=suspect_parity)
    g = array.geometry
    one_block = [(2 * g.stripe_data_size, bytes(4096))]
    assert await writer.write_stripe(2, one_block) is Strategy.RMW
    one_block = [(3 * g.stripe_data_size, bytes(4096))]
    assert await writer.write_stripe(3, one_block) is Strategy.RCW
    assert asked == [2, 3]
    mirror, _ = make_array(Level.RAID1, 2)
    asked.clear()
    mirror_writer = StripeWriter(mirror, suspect_parity=suspect_parity)
    mirror_block = [(3 * mirror.geometry.stripe_data_size, b"x")]
    assert await mirror_writer.write_stripe(3, mirror_block) is None
    assert asked == []


@pytest.mark.parametrize(("level", "members"), [(Level.RAID5, 4), (Level.RAID6, 5)])
async def test_member_failing_during_the_reads_is_planned_around(
    level: Level, members: int
) -> None:
    """A member that fails while an update reads the old row is marked faulty and the stripe
    is planned again, degraded, without it: the write lands and reads back, and the journal
    hook sees only the writes finally issued."""
    array, devices = make_array(level, members)
    g = array.geometry
    rng = random.Random(members)
    image = rng.randbytes(array.size)
    await StripeWriter(array).write(0, image)
    journaled: list[Sequence[MemberWrite]] = []

    async def journal(writes: Sequence[MemberWrite]) -> None:
        journaled.append(writes)

    writer = StripeWriter(array, journal=journal)
    # 4 KiB across data indexes 0 and 1 of stripe 1: reconstruct-write, which reads every
    # data block of the row, index 0's (failing) member included.
    victim = g.data_copies(1, 0)[0]
    devices[victim].failing = True
    new = rng.randbytes(4096)
    offset = g.stripe_data_size + 100
    assert await writer.write_stripe(1, [(offset, new)]) is Strategy.DEGRADED
    assert array.states[victim] == MemberState.FAULTY
    assert len(journaled) == 1
    image = image[:offset] + new + image[offset + len(new) :]
    assert await writer.read(0, array.size) == image


async def test_the_writer_is_the_volume_of_the_checkpoint_regions() -> None:
    """Checkpoints are written through an unjournaled writer (``LogicalVolume``)."""
    array, _ = make_array(Level.RAID5, 4, 4096, 16)
    volume: LogicalVolume = StripeWriter(array)
    regions = CheckpointRegions(volume, 4 * array.geometry.stripe_data_size, uuid.UUID(int=7))
    image = random.Random(5).randbytes(10000)
    written = await regions.write(LogPosition(LSN(3), 4096), image)
    fresh = CheckpointRegions(StripeWriter(array), regions.region_size, uuid.UUID(int=7))
    loaded, notes = await fresh.load()
    assert (loaded.image, loaded.seq, loaded.log_start) == (image, 1, written.log_start)
    assert loaded.region == 0 and notes == []
