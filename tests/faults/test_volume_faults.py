"""Faults on a whole open volume (in memory): failure recorded in the superblocks, degraded
service, the read-only switch past the level's tolerance, and checksum self-heal through
``FileStore`` — each ending with the data equal to the model and fsck clean on a fresh open.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from fusenas.engine import open_volume
from fusenas.engine.verify import verify_checksums
from fusenas.errors import DataLostError, FsError
from fusenas.fs.files import FileStore
from fusenas.meta.fsck import check
from fusenas.volume.faults import FaultyProvider
from fusenas.volume.layout import Level
from fusenas.volume.superblock import DATA_OFFSET, MemberState, read_superblock
from tests.crash.harness import PowerCutProvider, Workload, make_volume, read_tree
from tests.devices import MemoryDevice

LEVELS = [
    (Level.RAID1, 2),
    (Level.RAID5, 4),
    (Level.RAID6, 5),
    (Level.RAID10, 4),
]


def member_paths(provider: PowerCutProvider) -> list[Path]:
    return sorted(p for p in provider.devices if p.name.startswith("member-"))


async def superblock_states(provider: PowerCutProvider, path: Path) -> tuple[int, list[int]]:
    sb, _ = await read_superblock(provider.devices[path])
    return sb.events, list(sb.member_states)


async def fresh_check(voldir: Path, provider: PowerCutProvider, model: object) -> list[str]:
    """Reopen on the bare memory devices: fsck clean, tree equal to the model; the notes."""
    async with open_volume(voldir, provider=provider, checkpointer=False) as vol:
        problems = check(vol.meta) + await verify_checksums(vol)
        assert not problems, problems
        assert await read_tree(vol) == model
        return list(vol.notes)


@pytest.mark.parametrize(("level", "members"), LEVELS, ids=lambda v: str(v))
async def test_failure_recorded_then_degraded_service(
    tmp_path: Path, level: Level, members: int
) -> None:
    voldir = tmp_path / "vol"
    mem = PowerCutProvider(random.Random(1))
    await make_volume(voldir, level, members, mem)
    paths = member_paths(mem)
    faulty = FaultyProvider(mem)
    rng = random.Random(int(level))
    async with open_volume(voldir, provider=faulty, max_dirty=64 << 10) as vol:
        work = Workload(vol, rng, mem)
        for _ in range(40):
            await work.step()
        events_before, _ = await superblock_states(mem, paths[0])
        faulty.opened[paths[1]].failing = True
        for _ in range(60):
            await work.step()
        await vol.checkpoint()
        assert vol.members.array.states[1] == MemberState.FAULTY
        # Recorded on the survivors, events bumped: a checkpoint cannot precede it.
        events, states = await superblock_states(mem, paths[0])
        assert events > events_before and states[1] == MemberState.FAULTY
        assert await read_tree(vol) == work.model
        assert vol.failed_readonly is None
    notes = await fresh_check(voldir, mem, work.model)
    assert any("stale" in n for n in notes), notes


async def test_checkpoint_waits_for_the_superblock_update(tmp_path: Path) -> None:
    voldir = tmp_path / "vol"
    mem = PowerCutProvider(random.Random(2))
    await make_volume(voldir, Level.RAID5, 4, mem)
    paths = member_paths(mem)
    async with open_volume(voldir, provider=mem, checkpointer=False) as vol:
        vol.members.array.fail_member(2, "test")
        # No await between the failure and the checkpoint: the updater task has not run.
        await vol.checkpoint()
        _, states = await superblock_states(mem, paths[0])
        assert states[2] == MemberState.FAULTY


async def test_failure_is_recorded_promptly_without_a_checkpoint(tmp_path: Path) -> None:
    voldir = tmp_path / "vol"
    mem = PowerCutProvider(random.Random(3))
    await make_volume(voldir, Level.RAID6, 5, mem)
    paths = member_paths(mem)
    async with open_volume(voldir, provider=mem, checkpointer=False) as vol:
        vol.members.array.fail_member(3, "test")
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(5):
            while (await superblock_states(mem, paths[0]))[1][3] != MemberState.FAULTY:
                await trio.sleep(0.01)


async def test_past_tolerance_turns_read_only_and_keeps_fsynced_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    voldir = tmp_path / "vol"
    mem = PowerCutProvider(random.Random(4))
    await make_volume(voldir, Level.RAID5, 4, mem)
    paths = member_paths(mem)
    faulty = FaultyProvider(mem)
    rng = random.Random(4)
    async with open_volume(voldir, provider=faulty, max_dirty=64 << 10) as vol:
        work = Workload(vol, rng, mem)
        for _ in range(30):
            await work.step()
        faulty.opened[paths[1]].failing = True
        for _ in range(30):
            await work.step()
        await vol.sync()
        synced = work.history[-1] if work.history[-1] == work.model else dict(work.model)
        work.history.append(dict(work.model))
        faulty.opened[paths[2]].failing = True
        # The next flush or read meets the second failure; writes then get EROFS, reads of
        # blocks whose members are gone get DataLostError (EIO at the FUSE boundary).
        with pytest.raises((FsError, DataLostError)):
            for _ in range(200):
                await work.step()
                await vol.cache.flush()
        assert vol.failed_readonly is not None
        with pytest.raises(FsError) as exc:
            await vol.reserve_meta()
        assert exc.value.errno == errno.EROFS
        some_file = next(p for p, (kind, _) in work.model.items() if kind == "f")
        with pytest.raises(FsError) as exc:
            await FileStore(vol).write(work._ino(some_file), 0, bytes(4096))
        assert exc.value.errno == errno.EROFS
        lines = [r for r in caplog.records if "READ-ONLY" in r.getMessage()]
        assert len(lines) == 1
    # The second member comes back: the volume mounts degraded (member 1 stays out: its
    # failure was recorded, the fatal one was not), the journal replays, and everything
    # fsynced is there.
    async with open_volume(voldir, provider=mem, checkpointer=False) as vol:
        assert vol.members.array.states == [
            MemberState.ACTIVE,
            MemberState.FAULTY,
            MemberState.ACTIVE,
            MemberState.ACTIVE,
        ]
        assert not check(vol.meta) + await verify_checksums(vol)
        tree = await read_tree(vol)
    assert tree in work.history[work.history.index(synced) :], "fsynced state lost"


@pytest.mark.parametrize(("level", "members"), LEVELS, ids=lambda v: str(v))
async def test_bit_rot_is_healed_through_filestore(
    tmp_path: Path, level: Level, members: int
) -> None:
    voldir = tmp_path / "vol"
    mem = PowerCutProvider(random.Random(5))
    await make_volume(voldir, level, members, mem)
    paths = member_paths(mem)
    payload = random.Random(5).randbytes(300_000)
    async with open_volume(voldir, provider=mem, checkpointer=False) as vol:
        ino = vol.meta.mknod(1, b"f", 0o100644, 0, 0, 0, 0).ino
        files = FileStore(vol)
        await files.write(ino, 0, payload)
        await vol.checkpoint()
        # Flip one bit in every 4 KiB block of the data area of member 0 (read first).
        dev: MemoryDevice = mem.devices[paths[0]]
        start = (
            DATA_OFFSET
            + 2 * vol.config.checkpoint_region // vol.members.array.geometry.data_per_stripe
        )
        rng = random.Random(6)
        for off in range(start, dev.size, 4096):
            dev.data[off + rng.randrange(4096)] ^= 1 << rng.randrange(8)
        assert await files.read(ino, 0, len(payload)) == payload
        heal = vol.members.array.heal
        assert heal.checksum_mismatches > 0 and heal.unrecoverable == 0
        assert heal.repaired == heal.checksum_mismatches
        assert set(heal.bad_by_member) == {0}
        # Repaired in place: a second read finds nothing.
        before = heal.checksum_mismatches
        assert await files.read(ino, 0, len(payload)) == payload
        assert heal.checksum_mismatches == before
