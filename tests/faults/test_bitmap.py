"""Write-intent bitmap: a member missing briefly is resynced by its dirty regions only; a
power cut during a bitmap update leaves a usable bitmap or a full rebuild, never lost data.

In-memory volumes (``tests.crash.harness``). "Missing" means the member's image is left out
of the provider; "back" means its old image is put back. Every test ends with a scrub that
finds no parity/copy mismatch (so the returning member agrees with the others on every row),
the tree equal to the model, fsck clean, and the tree read again with another member lost,
so the resynced member's bytes are what serves the reads.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest

from fusenas.engine import open_volume
from fusenas.engine.rebuild import readd_member
from fusenas.engine.scrub import scrub_volume
from fusenas.engine.verify import verify_checksums
from fusenas.meta.fsck import check
from fusenas.volume.bitmap import BITMAP_OFFSET, SLOT_SIZE
from fusenas.volume.layout import Level
from fusenas.volume.superblock import DATA_OFFSET, MemberState
from tests.crash.harness import PowerCutProvider, Tree, Workload, make_volume, read_tree

REGION = 64 << 10  # 4 stripe rows of the harness's 16 KiB chunk; 32 regions per member
LEVELS = [(Level.RAID1, 2), (Level.RAID5, 4), (Level.RAID6, 5), (Level.RAID10, 4)]


def images(mem: PowerCutProvider) -> dict[Path, bytes]:
    return {p: bytes(d.data) for p, d in mem.devices.items()}


async def run_steps(
    vol: object, mem: PowerCutProvider, model: Tree, seed: int, steps: int
) -> Workload:
    work = Workload(vol, random.Random(seed), mem)  # type: ignore[arg-type]
    work.model = copy.deepcopy(model)
    work.history = [copy.deepcopy(model)]
    for _ in range(steps):
        await work.step()
    return work


async def first_session(voldir: Path, level: Level, members: int) -> tuple[PowerCutProvider, Tree]:
    mem = PowerCutProvider(random.Random(1))
    await make_volume(voldir, level, members, mem)
    async with open_volume(voldir, provider=mem, bitmap_region=REGION, spares=False) as vol:
        work = await run_steps(vol, mem, {"": ("d", b"")}, int(level), 40)
        # Two checkpoints with no file writes between them clear every region but those of
        # the checkpoint images (rewritten at every checkpoint).
        await vol.checkpoint()
        await vol.checkpoint()
        assert vol.bitmap is not None
        model = dict(work.model)
    return mem, model


async def check_volume(voldir: Path, mem: PowerCutProvider, model: Tree, lose: Path) -> None:
    """Scrub finds no mismatch, fsck clean, tree = model; then again without ``lose``."""
    async with open_volume(voldir, provider=mem, checkpointer=False, spares=False) as vol:
        report = await scrub_volume(vol)
        assert report.parity_mismatches == 0 and report.checksum_mismatches == 0, report
        assert not check(vol.meta) + await verify_checksums(vol)
        assert await read_tree(vol) == model
    provider = PowerCutProvider.booted(images(mem), [lose])
    async with open_volume(voldir, provider=provider, checkpointer=False, spares=False) as vol:
        assert not check(vol.meta) + await verify_checksums(vol)
        assert await read_tree(vol) == model


def lost_partner(level: Level, back: int, voldir: Path) -> Path:
    # Another member whose loss leaves the returning one needed (RAID10: its pair is 2, 3).
    return voldir / f"member-{0 if level != Level.RAID10 or back >= 2 else 2}.img"


@pytest.mark.parametrize(("level", "members"), LEVELS, ids=lambda v: str(v))
async def test_briefly_missing_member_resyncs_only_dirty_regions(
    tmp_path: Path, level: Level, members: int
) -> None:
    voldir = tmp_path / "vol"
    mem, model = await first_session(voldir, level, members)
    back = 1
    path = voldir / f"member-{back}.img"
    saved = bytes(mem.devices[path].data)
    # Member 1 is missing: the volume mounts degraded and keeps writing.
    away = PowerCutProvider.booted(images(mem), [path])
    async with open_volume(voldir, provider=away, spares=False) as vol:
        bitmap = vol.bitmap
        assert bitmap is not None and vol.members.array.states[back] == MemberState.MISSING
        before = set(bitmap.bits)
        work = await run_steps(vol, away, model, 100 + int(level), 12)
        model = dict(work.model)
    assert bitmap.bits > before  # the writes set bits; nothing is cleared while degraded
    # Back: assembly finds it stale, the survivors' bitmap covers its absence.
    mem = PowerCutProvider.booted({**images(away), path: saved})
    async with open_volume(voldir, provider=mem, spares=False) as vol:
        array = vol.members.array
        assert array.states[back] == MemberState.FAULTY
        assert vol.returning == {back: True}, vol.notes
        assert any("is back: resync of" in n for n in vol.notes)
        bitmap = vol.bitmap
        assert bitmap is not None
        dirty = sum(hi - lo for lo, hi in bitmap.dirty_stripe_ranges())
        stats = await readd_member(vol, back, True, workers=3)
        assert stats.stripes == dirty
        assert 0 < stats.stripes < array.geometry.stripes // 2
        assert array.states[back] == MemberState.ACTIVE
        assert bitmap.image.tracked[back] == vol.members.member_uuids[back]
        assert await read_tree(vol) == model
    await check_volume(voldir, mem, model, lost_partner(level, back, voldir))


async def test_returning_member_is_readded_by_the_spare_manager(tmp_path: Path) -> None:
    """The daemon's path: nobody calls ``readd_member``; the spare manager does, at open."""
    voldir = tmp_path / "vol"
    mem, model = await first_session(voldir, Level.RAID6, 5)
    path = voldir / "member-3.img"
    saved = bytes(mem.devices[path].data)
    away = PowerCutProvider.booted(images(mem), [path])
    async with open_volume(voldir, provider=away, spares=False) as vol:
        model = dict((await run_steps(vol, away, model, 7, 10)).model)
    mem = PowerCutProvider.booted({**images(away), path: saved})
    async with open_volume(voldir, provider=mem, checkpointer=False, spares=True) as vol:
        import trio

        with trio.fail_after(20):
            while vol.members.array.states[3] != MemberState.ACTIVE:
                await trio.sleep(0.01)
        model = dict((await run_steps(vol, mem, model, 8, 10)).model)
    await check_volume(voldir, mem, model, voldir / "member-0.img")


async def test_member_back_without_usable_bitmap_is_rebuilt_in_full(tmp_path: Path) -> None:
    voldir = tmp_path / "vol"
    mem, model = await first_session(voldir, Level.RAID5, 4)
    path = voldir / "member-2.img"
    saved = bytes(mem.devices[path].data)
    away = PowerCutProvider.booted(images(mem), [path])
    async with open_volume(voldir, provider=away, spares=False) as vol:
        model = dict((await run_steps(vol, away, model, 9, 10)).model)
    imgs = images(away)
    for p in list(imgs):  # both bitmap copies of every survivor destroyed
        if p.name.startswith("member-"):
            raw = bytearray(imgs[p])
            raw[BITMAP_OFFSET:DATA_OFFSET] = bytes(DATA_OFFSET - BITMAP_OFFSET)
            imgs[p] = bytes(raw)
    mem = PowerCutProvider.booted({**imgs, path: saved})
    async with open_volume(voldir, provider=mem, spares=False) as vol:
        assert vol.returning == {2: False}
        assert any("full rebuild" in n for n in vol.notes)
        stats = await readd_member(vol, 2, False)
        assert stats.stripes == vol.members.array.geometry.stripes
    await check_volume(voldir, mem, model, voldir / "member-0.img")


async def test_replaced_slot_is_not_resynced_from_the_bitmap(tmp_path: Path) -> None:
    """The old member of a slot that was replaced meanwhile: its uuid is not the tracked one,
    so it is not taken for the slot's member (a full rebuild instead)."""
    from fusenas.engine import rebuild as rb

    voldir = tmp_path / "vol"
    mem, model = await first_session(voldir, Level.RAID5, 4)
    path = voldir / "member-1.img"
    saved = bytes(mem.devices[path].data)
    async with open_volume(voldir, provider=mem, spares=False) as vol:
        tracked_before = vol.bitmap.image.tracked[1]  # type: ignore[union-attr]
        vol.members.array.fail_member(1, "test")
        await vol.update_superblocks()
        dev = await rb.open_new_device(mem, voldir / "member-1b.img", rb.member_size(vol))
        await rb.attach_replacement(vol, 1, dev, voldir / "member-1b.img")
        await rb.rebuild_member(vol, 1)
        assert vol.bitmap.image.tracked[1] != tracked_before  # type: ignore[union-attr]
    # Put the old member file back under the slot's configured path.
    mem = PowerCutProvider.booted({**images(mem), voldir / "member-1b.img": saved})
    async with open_volume(voldir, provider=mem, spares=False) as vol:
        # The newest superblock records slot 1 active, and the old member's lower event
        # counter alone would pass for an interrupted update: the bitmap's tracked uuid tells
        # it is not the slot's member. It is rebuilt in full, never read.
        assert vol.members.array.states[1] == MemberState.FAULTY
        assert vol.returning == {1: False}
        assert any("is not the member this slot last had" in n for n in vol.notes)
        await readd_member(vol, 1, False)
        assert await read_tree(vol) == model
    await check_volume(voldir, mem, model, voldir / "member-0.img")


async def test_power_cut_during_bitmap_updates(tmp_path: Path) -> None:
    """Cuts at bitmap writes (and right after them) while a member is away: each image, with
    the member back, recovers to a state at or after the last fsync, the member is re-added
    (quick or full), scrub finds the rows consistent, and the data survives losing another
    member afterwards."""
    voldir = tmp_path / "vol"
    mem, model = await first_session(voldir, Level.RAID5, 4)
    path = voldir / "member-3.img"
    saved = bytes(mem.devices[path].data)
    away = PowerCutProvider.booted(images(mem), [path])
    away.record()
    async with open_volume(
        voldir, provider=away, checkpointer=False, spares=False, max_dirty=64 << 10
    ) as vol:
        work = Workload(vol, random.Random(11), away)
        work.model = copy.deepcopy(model)
        work.history = [copy.deepcopy(model)]
        for i in range(36):
            await work.step()
            if i % 12 == 11:
                await vol.checkpoint()
    cuts = [
        n + k
        for n, (p, off, _data) in enumerate(away.events, start=1)
        if p.name.startswith("member-") and BITMAP_OFFSET <= off < BITMAP_OFFSET + 2 * SLOT_SIZE
        for k in (0, 1)
        if n + k <= len(away.events)
    ]
    assert len(cuts) >= 6, len(cuts)
    rng = random.Random(3)
    kinds = {True: 0, False: 0}
    for n in sorted(set(rng.sample(cuts, min(len(cuts), 14)))):
        cut = away.cut(n, rng)
        booted = PowerCutProvider.booted({**cut.images, path: saved})
        async with open_volume(voldir, provider=booted, checkpointer=False, spares=False) as vol:
            assert set(vol.returning) == {3}, vol.notes
            kinds[vol.returning[3]] += 1
            await readd_member(vol, 3, vol.returning[3])
            assert not check(vol.meta) + await verify_checksums(vol)
            tree = await read_tree(vol)
            report = await scrub_volume(vol)
            assert report.parity_mismatches == 0, (n, report)
        assert tree in work.history[cut.acked : cut.done + 2], n
        lose = PowerCutProvider.booted(images(booted), [voldir / "member-0.img"])
        async with open_volume(voldir, provider=lose, checkpointer=False, spares=False) as vol:
            assert await read_tree(vol) == tree, n
    assert kinds[True] > 0
