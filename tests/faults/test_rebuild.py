"""Replace and rebuild (work-stealing workers), resume after an interruption, hot spares.

In-memory volumes; each test ends by losing another member (where the level allows) so the
rebuilt member's bytes are what serves the reads, and checks fsck and the model.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from fusenas.engine import open_volume
from fusenas.engine.rebuild import rebuild_member, replace
from fusenas.engine.spares import add_spare, load_spares
from fusenas.engine.verify import verify_checksums
from fusenas.meta.fsck import check
from fusenas.volume.faults import FaultyProvider
from fusenas.volume.layout import Level
from fusenas.volume.superblock import MemberState
from tests.crash.harness import PowerCutProvider, Tree, Workload, make_volume, read_tree

LEVELS = [(Level.RAID1, 2), (Level.RAID5, 4), (Level.RAID6, 5), (Level.RAID10, 4)]


async def verify_without(
    voldir: Path, mem: PowerCutProvider, model: Tree, lose: list[Path]
) -> None:
    """Reopen without the members in ``lose``: fsck clean and the tree equals the model."""
    provider = PowerCutProvider.booted({p: bytes(d.data) for p, d in mem.devices.items()}, lose)
    async with open_volume(voldir, provider=provider, checkpointer=False) as vol:
        assert not check(vol.meta) + await verify_checksums(vol)
        assert await read_tree(vol) == model


def other_member(level: Level, replaced: int) -> int:
    # A member whose loss the level tolerates together with the replaced one being needed.
    return 0 if level != Level.RAID10 else 2


@pytest.mark.parametrize(("level", "members"), LEVELS, ids=lambda v: str(v))
async def test_online_replace_with_foreground_writes(
    tmp_path: Path, level: Level, members: int
) -> None:
    voldir = tmp_path / "vol"
    mem = PowerCutProvider(random.Random(1))
    await make_volume(voldir, level, members, mem)
    faulty = FaultyProvider(mem)
    rng = random.Random(int(level) + 100)
    new = voldir / "new-1.img"
    async with open_volume(voldir, provider=faulty, max_dirty=64 << 10, spares=False) as vol:
        work = Workload(vol, rng, mem)
        for _ in range(40):
            await work.step()
        paths = vol.config.member_paths(voldir)
        faulty.opened[paths[1]].failing = True
        for _ in range(20):
            await work.step()
        assert vol.members.array.states[1] == MemberState.FAULTY
        seen: list[int] = []

        async def foreground() -> None:
            for _ in range(60):
                await work.step()
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(foreground)
            stats = await replace(
                vol, "1", new, provider=mem, workers=3, progress=lambda d, t: seen.append(d)
            )
        assert vol.members.array.states[1] == MemberState.ACTIVE
        assert stats.stripes == vol.members.array.geometry.stripes
        assert seen and seen[-1] == stats.stripes
        chunk = vol.members.array.geometry.chunk
        assert vol.integrity.progress["rebuild"] == (stats.stripes * chunk, stats.stripes * chunk)
        for _ in range(20):
            await work.step()
        model = dict(work.model)
    assert vol.config.member_paths(voldir)[1] == new
    lose = [vol.config.member_paths(voldir)[other_member(level, 1)]]
    await verify_without(voldir, mem, model, lose)


async def test_interrupted_rebuild_resumes_from_recovery_offset(tmp_path: Path) -> None:
    voldir = tmp_path / "vol"
    mem = PowerCutProvider(random.Random(2))
    await make_volume(voldir, Level.RAID5, 4, mem)
    rng = random.Random(2)
    new = voldir / "new-2.img"
    async with open_volume(voldir, provider=mem, spares=False) as vol:
        work = Workload(vol, rng, mem)
        for _ in range(60):
            await work.step()
        stripes = vol.members.array.geometry.stripes
        with trio.move_on_after(10) as scope:

            def stop(done: int, total: int) -> None:
                if done >= stripes // 2:
                    scope.cancel()

            member = 2
            from fusenas.engine import rebuild as rb

            dev = await rb.open_new_device(mem, new, rb.member_size(vol))
            await rb.attach_replacement(vol, member, dev, new)
            await rebuild_member(vol, member, workers=2, progress=stop, checkpoint_bytes=16384)
        assert scope.cancelled_caught
        model = dict(work.model)
    async with open_volume(voldir, provider=mem, spares=False) as vol:
        assert vol.members.array.states[2] == MemberState.REBUILDING
        assert any("being rebuilt" in n for n in vol.notes)
        assert await read_tree(vol) == model
        stats = await rebuild_member(vol, 2)
        assert 0 < stats.stripes < stripes
        assert vol.members.array.states[2] == MemberState.ACTIVE
    await verify_without(voldir, mem, model, [voldir / "member-0.img"])


async def test_spare_takes_over_a_failed_member(tmp_path: Path) -> None:
    voldir = tmp_path / "vol"
    mem = PowerCutProvider(random.Random(3))
    await make_volume(voldir, Level.RAID6, 5, mem)
    faulty = FaultyProvider(mem)
    spare = voldir / "spare-0.img"
    async with open_volume(voldir, provider=mem, checkpointer=False, spares=False) as vol:
        await add_spare(vol, spare, provider=mem)
    assert load_spares(voldir) == [spare]
    rng = random.Random(3)
    async with open_volume(voldir, provider=faulty, checkpointer=False, spares=True) as vol:
        work = Workload(vol, rng, mem)
        for _ in range(30):
            await work.step()
        faulty.opened[vol.config.member_paths(voldir)[3]].failing = True
        for _ in range(30):
            await work.step()
        with trio.fail_after(20):
            while vol.members.array.states[3] != MemberState.ACTIVE:
                await trio.sleep(0.01)
        assert vol.config.member_paths(voldir)[3] == spare
        assert load_spares(voldir) == []
        model = dict(work.model)
    await verify_without(voldir, mem, model, [voldir / "member-0.img", voldir / "member-1.img"])


async def test_idle_workers_steal_from_a_slow_one(tmp_path: Path) -> None:
    """The new member is slow in its first quarter: the workers that finish early take over
    the unstarted half of the slow range, again and again."""
    from fusenas.engine import rebuild as rb
    from fusenas.units import ByteData
    from fusenas.volume.superblock import DATA_OFFSET
    from tests.devices import MemoryDevice

    voldir = tmp_path / "vol"
    mem = PowerCutProvider(random.Random(4))
    await make_volume(voldir, Level.RAID5, 4, mem)
    async with open_volume(voldir, provider=mem, spares=False) as vol:
        g = vol.members.array.geometry
        quarter = DATA_OFFSET + g.member_data_size // 4

        class SlowStart(MemoryDevice):
            async def write(self, offset: int, data: ByteData) -> None:
                if DATA_OFFSET <= offset < quarter:
                    await trio.sleep(0.002)
                await super().write(offset, data)

        dev = SlowStart(rb.member_size(vol), "slow")
        await rb.attach_replacement(vol, 1, dev, voldir / "slow.img")
        stats = await rebuild_member(vol, 1, workers=4)
        assert stats.steals >= 2
        assert stats.stripes == g.stripes
        old = mem.devices[voldir / "member-1.img"]
        assert dev.data[DATA_OFFSET:] == old.data[DATA_OFFSET:]
