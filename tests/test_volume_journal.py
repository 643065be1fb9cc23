"""Journal and checkpoint behaviour of a whole volume: bad journals, bad slots, clean shutdown,
and the lock shard table under concurrent renames, links and unlinks."""

from __future__ import annotations

import random
import shutil
import stat
import time
from pathlib import Path

import pytest
import trio

from fusenas.engine import create_volume, open_volume
from fusenas.errors import JournalError, VolumeError
from fusenas.meta.fsck import check
from fusenas.stripe.writer import StripeWriter
from fusenas.volume.layout import Level
from fusenas.wal.checkpoint import HEADER_SIZE


async def mkvol(path: Path) -> Path:
    await create_volume(
        path,
        level=Level.RAID5,
        chunk=16384,
        member_count=4,
        member_size=48 << 20,
        journal_size=8 << 20,
    )
    return path


async def test_clean_close_leaves_log_empty(tmp_path: Path) -> None:
    vol = await mkvol(tmp_path / "v")
    async with open_volume(vol) as v:
        await v.reserve_meta()
        v.meta.mkdir(1, b"d", 0o755, 0, 0, time.time_ns())
    async with open_volume(vol) as v:
        assert not any("replayed" in n for n in v.notes), v.notes
        assert v.meta.lookup(1, b"d")


async def test_unclean_stop_replays(tmp_path: Path) -> None:
    vol = await mkvol(tmp_path / "v")
    keep = tmp_path / "keep"
    async with open_volume(vol) as v:
        await v.reserve_meta()
        v.meta.mkdir(1, b"d", 0o755, 0, 0, time.time_ns())
        await v.sync()
        shutil.copytree(vol, keep)  # the disk as a power cut right now would leave it
    async with open_volume(keep) as v:
        assert any("replayed" in n for n in v.notes), v.notes
        assert v.meta.lookup(1, b"d")


async def test_journal_of_another_array_is_refused(tmp_path: Path) -> None:
    a = await mkvol(tmp_path / "a")
    b = await mkvol(tmp_path / "b")
    shutil.copy(b / "journal", a / "journal")
    with pytest.raises(JournalError, match="another array"):
        async with open_volume(a):
            pass


async def test_corrupt_newest_checkpoint_slot_falls_back(tmp_path: Path) -> None:
    vol = await mkvol(tmp_path / "v")
    async with open_volume(vol) as v:
        await v.reserve_meta()
        v.meta.mkdir(1, b"kept", 0o755, 0, 0, time.time_ns())
        await v.sync()
        newest = v.checkpoints.current
        assert newest is not None
        region = v.checkpoints.region_size
        array = v.members.array
    # Corrupt the header of the newest slot through a fresh assembly of the array.
    from fusenas.engine.config import load_config
    from fusenas.volume.assemble import assemble

    cfg = load_config(vol)
    members = await assemble(cfg.member_paths(vol), expect_uuid=cfg.array_uuid)
    try:
        base = newest.region * region
        header = bytearray(await members.array.read(base, HEADER_SIZE))
        header[40] ^= 0xFF
        await StripeWriter(members.array).write(base, bytes(header))
        await members.array.flush()
    finally:
        await members.aclose()
    del array
    async with open_volume(vol) as v:
        assert any("unusable" in n and "checksum" in n for n in v.notes), v.notes
        assert v.meta.lookup(1, b"kept")  # replayed from the older checkpoint's position


async def test_concurrent_renames_links_unlinks_never_deadlock(tmp_path: Path) -> None:
    """Many tasks, each taking the shards of every inode it touches in one call, with awaits
    while holding them: no deadlock, and the tree is consistent at the end."""
    vol = await mkvol(tmp_path / "v")
    async with open_volume(vol) as v:
        meta, locks = v.meta, v.locks
        dirs = [1]
        for i in range(8):
            await v.reserve_meta()
            dirs.append(meta.mkdir(1, b"dir%d" % i, 0o755, 0, 0, time.time_ns()).ino)
        for i in range(60):
            await v.reserve_meta()
            meta.mknod(random.choice(dirs), b"f%d" % i, stat.S_IFREG | 0o644, 0, 0, 0, 1)
        done = 0

        async def worker(seed: int) -> None:
            nonlocal done
            rng = random.Random(seed)
            for _ in range(40):
                a, b = rng.choice(dirs), rng.choice(dirs)
                async with locks.exclusive(a, b):
                    await trio.sleep(0)  # hold the shards across a checkpoint of the loop
                    names = [n for n, node, _ in meta.readdir(a, 0) if stat.S_ISREG(node.mode)]
                    if not names:
                        continue
                    name = rng.choice(names)
                    await v.reserve_meta()
                    op = rng.random()
                    now = time.time_ns()
                    try:
                        if op < 0.5:
                            meta.rename(a, name, b, b"r%d" % rng.randrange(200), 0, now)
                        elif op < 0.8:
                            node = meta.lookup(a, name)
                            meta.link(node.ino, b, b"l%d" % rng.randrange(200), now)
                        else:
                            meta.unlink(a, name, now)
                    except Exception as exc:  # EEXIST and the like are fine; a hang is not
                        assert getattr(exc, "errno", None), exc
                    await trio.sleep(0)
            done += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for seed in range(50):
                    nursery.start_soon(worker, seed)
        assert done == 50
        assert check(meta) == []
    async with open_volume(vol) as v:
        assert check(v.meta) == []


async def test_open_volume_refuses_missing_journal(tmp_path: Path) -> None:
    vol = await mkvol(tmp_path / "v")
    (vol / "journal").unlink()
    with pytest.raises(VolumeError, match="journal"):
        async with open_volume(vol):
            pass


async def test_full_log_backpressure_never_deadlocks(tmp_path: Path) -> None:
    """Write 5x the journal's size: writers wait for checkpoints, nothing hangs or fails."""
    from fusenas.fs.files import FileStore

    vol = tmp_path / "v"
    await create_volume(
        vol,
        level=Level.RAID6,
        chunk=16384,
        member_count=4,
        member_size=64 << 20,
        journal_size=2 << 20,
    )
    rng = random.Random(5)
    model: dict[int, bytes] = {}
    async with open_volume(vol) as v:
        v.blocks.ordered_span = lambda block, count: None  # type: ignore[method-assign]
        files = FileStore(v)  # every byte journaled: the log must fill
        inos = []
        for i in range(4):
            await v.reserve_meta()
            inos.append(v.meta.mknod(1, b"f%d" % i, stat.S_IFREG | 0o644, 0, 0, 0, 1).ino)

        async def writer(ino: int) -> None:
            data = bytearray()
            for _ in range(40):
                chunk = rng.randbytes(rng.choice([4096, 30000, 200000]))
                await files.write(ino, len(data), chunk)
                data += chunk
            model[ino] = bytes(data)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for ino in inos:
                    nursery.start_soon(writer, ino)
        assert v.wal.statistics().bytes_written > 5 * (2 << 20)
    async with open_volume(vol) as v:
        files = FileStore(v)
        for ino, data in model.items():
            assert await files.read(ino, 0, len(data)) == data
        assert check(v.meta) == []


async def test_error_in_the_body_reaches_the_caller_unwrapped(tmp_path: Path) -> None:
    """open_volume runs its body inside a nursery; callers still see the error itself."""
    vol = await mkvol(tmp_path / "v")
    with pytest.raises(VolumeError, match="boom"):
        async with open_volume(vol):
            raise VolumeError("boom")
