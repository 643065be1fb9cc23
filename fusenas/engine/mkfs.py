"""mkfs: create a volume directory with its members, journal and an empty filesystem.

Everything is checked before anything is written; files this call created are removed if it
fails. The logical volume is laid out as two checkpoint regions (whole stripes, 1/64 of the
volume, at least 16 MiB each) followed by the data area (docs/architecture.md, "On-volume
layout").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fusenas.engine.config import VolumeConfig, save_config
from fusenas.engine.metatree import MetadataTree
from fusenas.errors import VolumeError
from fusenas.meta.btree import Tree
from fusenas.meta.image import encode_image
from fusenas.meta.pagecache import PageCache
from fusenas.meta.paged import SpaceAllocator
from fusenas.meta.root import RootDescriptor
from fusenas.meta.space import SpaceMap
from fusenas.meta.store import ROOT_INO, MetadataStore
from fusenas.stripe.writer import StripeWriter
from fusenas.units import BLOCK_SIZE
from fusenas.volume.assemble import check_distinct, create_array
from fusenas.volume.device import DeviceProvider
from fusenas.volume.layout import Level, format_size
from fusenas.volume.member import FILES
from fusenas.volume.superblock import DATA_OFFSET
from fusenas.wal.checkpoint import CheckpointRegions
from fusenas.wal.log import WriteAheadLog

DEFAULT_JOURNAL_SIZE = 512 << 20
#: Average bytes of image per inode used to size the inode cap from the checkpoint region.
BYTES_PER_INODE = 512


def checkpoint_region_size(logical_size: int, stripe: int) -> int:
    """Bytes per checkpoint region: 1/64 of the volume, at least 16 MiB, whole stripes."""
    want = max(16 << 20, logical_size // 64)
    return -(-want // stripe) * stripe


async def create_volume(
    voldir: Path,
    *,
    level: Level,
    chunk: int,
    member_count: int | None = None,
    member_paths: Sequence[Path] = (),
    member_size: int | None = None,
    journal: Path | None = None,
    journal_size: int = DEFAULT_JOURNAL_SIZE,
    force: bool = False,
    name: str = "",
    checkpoint_region: int | None = None,
    provider: DeviceProvider = FILES,
    paged: bool = False,
) -> list[str]:
    """mkfs: create ``voldir`` with its members, journal and an empty filesystem.

    Either ``member_paths`` (existing files or block devices; ``member_size`` ignored) or
    ``member_count`` sparse files of ``member_size`` bytes inside ``voldir``. Everything is
    checked before anything is written; files this call created are removed if it fails.
    Returns notes for the user.
    """
    if (voldir / "fusenas.toml").exists() and not force:
        raise VolumeError(f"{voldir} already holds a fusenas volume (use --force to recreate it)")
    if voldir.exists() and not voldir.is_dir():
        raise VolumeError(f"{voldir} exists and is not a directory")
    created: list[Path] = []
    made_dir = not voldir.exists()
    try:
        voldir.mkdir(parents=True, exist_ok=True)
        if member_paths:
            paths = [Path(p).absolute() for p in member_paths]
            check_distinct(paths)
            for p in paths:
                if p.is_dir():
                    raise VolumeError(f"member {p} is a directory")
                if not p.exists():
                    raise VolumeError(f"member {p} does not exist")
        else:
            if member_count is None or member_size is None:
                raise VolumeError("give --members and --size, or --member paths")
            paths = [voldir / f"member-{i}.img" for i in range(member_count)]
            if member_size < DATA_OFFSET + 4 * chunk:
                raise VolumeError(f"member size {format_size(member_size)} is too small")
            for p in paths:
                if p.exists() and not force:
                    raise VolumeError(f"{p} already exists (use --force to overwrite it)")
            for p in paths:
                if p.exists():
                    p.unlink()
                await provider.create(p, member_size)
                created.append(p)
        members = await create_array(paths, level, chunk, name=name, force=force, provider=provider)
        try:
            notes = list(members.notes)
            array = members.array
            g = array.geometry
            region = checkpoint_region or checkpoint_region_size(g.logical_size, g.stripe_data_size)
            region = -(-region // g.stripe_data_size) * g.stripe_data_size  # whole stripes
            if 2 * region + g.stripe_data_size > g.logical_size:
                raise VolumeError(
                    f"volume of {format_size(g.logical_size)} is too small for its metadata"
                )
            jpath = journal if journal is not None else voldir / "journal"
            if jpath.exists() and jpath.is_file() and not force:
                raise VolumeError(f"journal {jpath} already exists (use --force to overwrite it)")
            if not jpath.exists() or jpath.is_file():
                if jpath.exists():
                    jpath.unlink()
                # Allocated: a journal commit is an fdatasync per fsync(2), and on a sparse
                # file each one also commits the file system's allocation (~1.5x slower).
                await provider.create(jpath, journal_size, allocate=True)
                created.append(jpath)
            jdev = await provider.open(jpath)
            try:
                start = await WriteAheadLog.format(jdev, members.array_uuid)
            finally:
                await jdev.aclose()
            data_blocks = (g.logical_size - 2 * region) // BLOCK_SIZE
            stripe_blocks = g.stripe_data_size // BLOCK_SIZE
            writer = StripeWriter(array)
            regions = CheckpointRegions(writer, region, members.array_uuid)
            if paged:
                image = await _empty_tree(writer, 2 * region, data_blocks, stripe_blocks)
            else:
                meta = MetadataStore.create(
                    data_blocks=data_blocks,
                    stripe_blocks=stripe_blocks,
                    max_inodes=region // BYTES_PER_INODE,
                    journal=lambda payload: None,
                    now_ns=time.time_ns(),
                )
                image = encode_image(meta)
            await array.flush()
            await regions.write(start, image)
            cfg = VolumeConfig(
                array_uuid=members.array_uuid,
                level=g.level,
                chunk=g.chunk,
                members=tuple(_relative(p, voldir) for p in paths),
                journal=_relative(jpath, voldir),
                journal_size=journal_size,
                checkpoint_region=region,
            )
            save_config(voldir, cfg)
            notes.append(
                f"created {g.level.name} volume {members.array_uuid}: {len(paths)} members, "
                f"chunk {format_size(g.chunk)}, {format_size(data_blocks * BLOCK_SIZE)} usable"
            )
            return notes
        finally:
            await members.aclose()
    except BaseException:
        for p in created:
            with contextlib.suppress(OSError):
                p.unlink()
        if made_dir:
            shutil.rmtree(voldir, ignore_errors=True)
        raise


async def _empty_tree(
    writer: StripeWriter, data_start: int, data_blocks: int, stripe_blocks: int
) -> bytes:
    """The root descriptor of a new filesystem on pages (metadata that outgrows RAM,
    docs/metadata_format.md): its first metadata chunk and the root directory's pages."""

    class NoPages:  # an empty tree has no page to read
        async def read(self, block: int, count: int) -> bytes:
            raise AssertionError("a new volume has no metadata page to read")

        def read_nowait(self, block: int, count: int) -> bytes | None:
            return None

        async def heal_block(self, block: int, check: Callable[[bytes], bool]) -> bytes | None:
            return None

    async def write_pages(block: int, data: bytes) -> None:
        await writer.write(data_start + block * BLOCK_SIZE, data)

    empty = RootDescriptor(0, Tree(None), data_blocks, stripe_blocks, ROOT_INO + 1, 0)
    tree = MetadataTree(
        empty,
        PageCache(NoPages(), 1 << 20),
        SpaceMap.empty(data_blocks, stripe_blocks),
        write_pages,
    )
    store = MetadataStore.create_on_pages(
        tree.state,
        space=SpaceAllocator(tree.state, tree.space),
        stripe_blocks=stripe_blocks,
        max_inodes=2**63,
        journal=lambda payload: None,
        now_ns=time.time_ns(),
    )
    return await tree.write(tree.freeze(), next_ino=store.next_ino, inode_count=len(store.inodes))


def _relative(p: Path, base: Path) -> str:
    try:
        return os.path.relpath(p, base) if p.is_relative_to(base) else str(p)
    except ValueError:
        return str(p)
