"""Assembly from superblocks: foreign members, missing members, stale members (event counters)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fusenas.engine import create_volume, open_volume
from fusenas.engine.config import load_config
from fusenas.errors import VolumeError
from fusenas.volume.assemble import assemble
from fusenas.volume.layout import Level
from fusenas.volume.superblock import ArrayState, MemberState

SIZE = 48 << 20


async def mkvol(path: Path, level: Level = Level.RAID5, members: int = 4) -> Path:
    await create_volume(
        path, level=level, chunk=16384, member_count=members, member_size=SIZE, journal_size=8 << 20
    )
    return path


def heads(vol: Path) -> list[bytes]:
    return [p.read_bytes()[: 1 << 20] for p in sorted(vol.glob("member-*.img"))]


async def test_member_of_another_array_is_refused(tmp_path: Path) -> None:
    a = await mkvol(tmp_path / "a")
    b = await mkvol(tmp_path / "b")
    shutil.copy(b / "member-1.img", a / "member-1.img")
    with pytest.raises(VolumeError, match="another array"):
        async with open_volume(a):
            pass


async def test_two_missing_raid5_refused_and_nothing_written(tmp_path: Path) -> None:
    vol = await mkvol(tmp_path / "v")
    (vol / "member-0.img").unlink()
    (vol / "member-3.img").unlink()
    before = heads(vol)
    with pytest.raises(VolumeError, match="cannot start"):
        async with open_volume(vol):
            pass
    assert heads(vol) == before


async def test_one_missing_mounts_degraded(tmp_path: Path) -> None:
    vol = await mkvol(tmp_path / "v", Level.RAID6, 5)
    (vol / "member-4.img").unlink()
    async with open_volume(vol) as v:
        assert v.members.array.degraded and v.members.array.usable
        assert any("missing" in n for n in v.notes)


async def test_stale_member_is_not_used(tmp_path: Path) -> None:
    vol = await mkvol(tmp_path / "v")
    cfg = load_config(vol)
    paths = cfg.member_paths(vol)
    # Assemble without member 2 and commit a state change: member 2 misses the event.
    members = await assemble([p for i, p in enumerate(paths) if i != 2], expect_uuid=cfg.array_uuid)
    await members.commit_superblocks(ArrayState.CLEAN)
    await members.aclose()
    members = await assemble(paths, expect_uuid=cfg.array_uuid)
    try:
        assert members.array.states[2] == MemberState.FAULTY
        assert any("stale" in n for n in members.notes)
    finally:
        await members.aclose()


async def test_same_index_twice_refused(tmp_path: Path) -> None:
    vol = await mkvol(tmp_path / "v")
    shutil.copy(vol / "member-1.img", tmp_path / "copy.img")
    cfg = load_config(vol)
    paths = [*cfg.member_paths(vol)[:3], tmp_path / "copy.img"]
    with pytest.raises(VolumeError, match="both claim"):
        await assemble(paths, expect_uuid=cfg.array_uuid)
