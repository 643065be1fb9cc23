"""A volume whose metadata lives on pages (mkfs ``paged=True``): the engine opens it from its
root descriptor, checkpoints write pages and publish a new root, a clean close and an unclean
stop both come back with everything, and the daemon holds only what changed.

The FUSE floor does not run on pages yet (docs/roadmap.md, issue 15 step 4): these tests drive
the metadata store through ``Engine.run_meta`` as the floors above will.
"""

from __future__ import annotations

import shutil
import stat
import time
from pathlib import Path

from fusenas.engine import Engine, create_volume, open_volume
from fusenas.meta.root import RootDescriptor, is_root_descriptor
from fusenas.volume.layout import Level


async def mkvol(path: Path) -> Path:
    await create_volume(
        path,
        level=Level.RAID5,
        chunk=16384,
        member_count=4,
        member_size=96 << 20,
        journal_size=16 << 20,
        paged=True,
    )
    return path


async def populate(v: Engine, dirs: int, files: int, tag: bytes = b"") -> None:
    now = time.time_ns()
    for d in range(dirs):
        await v.reserve_meta()
        dino = (await v.run_meta(v.meta.mkdir, 1, b"d%d%s" % (d, tag), 0o755, 0, 0, now)).ino
        for f in range(files):
            await v.reserve_meta()
            mode = stat.S_IFREG | 0o644
            ino = (await v.run_meta(v.meta.mknod, dino, b"f%d" % f, mode, 0, 0, 0, now)).ino
            if f % 10 == 0:
                await v.run_meta(v.meta.setxattr, ino, b"user.n", b"x" * (f + 1), 0, now)


async def listing(v: Engine, dirs: int, tag: bytes = b"") -> dict[bytes, list[bytes]]:
    out = {}
    for d in range(dirs):
        name = b"d%d%s" % (d, tag)
        dino = (await v.run_meta(v.meta.lookup, 1, name)).ino
        entries = await v.run_meta(lambda i=dino: [n for n, _, _ in v.meta.readdir(i, 0)])
        out[name] = sorted(entries)
    return out


async def test_a_paged_volume_survives_checkpoints_and_a_clean_close(tmp_path: Path) -> None:
    vol = await mkvol(tmp_path / "v")
    async with open_volume(vol, checkpointer=False) as v:
        assert v.metadata_tree is not None
        await populate(v, 5, 300)
        await v.checkpoint()
        tree = v.metadata_tree
        assert tree.state.tree.height >= 1  # 1,500 files do not fit a leaf
        await populate(v, 2, 50, tag=b"b")
        want = await listing(v, 5)
        assert len(tree.state.live) > 0
    async with open_volume(vol, checkpointer=False) as v:
        assert v.notes == [] or not any("replayed" in n for n in v.notes)
        assert await listing(v, 5) == want
        assert len(await listing(v, 2, tag=b"b")) == 2
        f = await v.run_meta(v.meta.lookup, (await v.run_meta(v.meta.lookup, 1, b"d3")).ino, b"f40")
        assert await v.run_meta(v.meta.getxattr, f.ino, b"user.n") == b"x" * 41
        # Nothing of the namespace was loaded at open beyond what these reads needed.
        assert v.metadata_tree is not None
        assert v.metadata_tree.pages.statistics().pages < 200


async def test_an_unclean_stop_replays_on_top_of_the_tree(tmp_path: Path) -> None:
    vol = await mkvol(tmp_path / "v")
    keep = tmp_path / "keep"
    async with open_volume(vol, checkpointer=False) as v:
        await populate(v, 3, 200)
        await v.checkpoint()
        await populate(v, 1, 30, tag=b"late")
        await v.run_meta(v.meta.unlink, (await v.run_meta(v.meta.lookup, 1, b"d1")).ino, b"f7", 1)
        await v.sync()
        want = await listing(v, 3)
        shutil.copytree(vol, keep)  # the disk as a power cut now would leave it
    async with open_volume(keep, checkpointer=False) as v:
        assert any("replayed" in n for n in v.notes), v.notes
        assert await listing(v, 3) == want
        assert b"f7" not in want[b"d1"]
        assert len((await listing(v, 1, tag=b"late"))[b"d0late"]) == 30


async def test_mkfs_writes_a_root_descriptor(tmp_path: Path) -> None:
    from fusenas.engine.config import load_config
    from fusenas.stripe.writer import StripeWriter
    from fusenas.volume.assemble import assemble
    from fusenas.wal.checkpoint import CheckpointRegions

    vol = await mkvol(tmp_path / "v")
    cfg = load_config(vol)
    members = await assemble(cfg.member_paths(vol), expect_uuid=cfg.array_uuid)
    try:
        regions = CheckpointRegions(
            StripeWriter(members.array), cfg.checkpoint_region, cfg.array_uuid
        )
        ckpt, _ = await regions.load()
        assert is_root_descriptor(ckpt.image)
        root = RootDescriptor.decode(ckpt.image)
        assert root.inode_count == 1 and len(root.chunks) == 1 and root.tree.root is not None
    finally:
        await members.aclose()
