"""``fusenas fsck VOLUME-DIR [--repair]``: check an unmounted volume and say what is wrong.

Checks, in order: the array assembles (members, superblocks, event counters); the journal
replays (recovery runs as on mount); the metadata tree (``meta.fsck.check``: link counts,
reachability, ``..``, extent overlaps, the allocator); then every mapped data block is read
and its crc32c compared with the one kept in its extent map.

Without ``--repair`` nothing is changed beyond what mounting would do (journal replay and a
fresh checkpoint). ``--repair`` also drops orphan inodes. Exit status: 0 clean, 1 problems.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import crc32c

from fusenas.errors import FusenasError
from fusenas.filesystem import Volume, open_volume
from fusenas.meta.fsck import check
from fusenas.units import BLOCK_SIZE
from fusenas.voldir import load_config, lock_volume


async def verify_checksums(vol: Volume) -> list[str]:
    """Read every mapped, written data block and compare its crc32c; one line per mismatch."""
    problems: list[str] = []
    for ino, node in sorted(vol.meta.inodes.items()):
        if node.extents is None:
            continue
        for m in vol.meta.map(ino, 0, node.extents.end_block()):
            if m.vol_block is None:
                continue
            data = await vol.cache.read(vol.block_offset(m.vol_block), m.count * BLOCK_SIZE)
            for i, crc in enumerate(m.crcs):
                if crc < 0:
                    continue
                block = data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
                if crc32c.crc32c(block) != crc:
                    problems.append(
                        f"inode {ino}: block {m.file_block + i} (volume block "
                        f"{m.vol_block + i}) does not match its checksum"
                    )
    return problems


async def run_fsck(voldir: Path, *, repair: bool = False) -> int:
    load_config(voldir)
    fd = lock_volume(voldir)
    try:
        async with open_volume(voldir, checkpointer=False) as vol:
            for note in vol.notes:
                print(f"fusenas fsck: {note}")
            problems = check(vol.meta)
            problems += await verify_checksums(vol)
            if repair:
                dropped = vol.meta.reclaim_orphans()
                if dropped:
                    print(f"fusenas fsck: dropped {dropped} orphan inodes")
    except FusenasError as exc:
        print(f"fusenas fsck: {exc}", file=sys.stderr)
        return 1
    finally:
        os.close(fd)
    stats = vol.meta.statfs()
    if problems:
        for p in problems:
            print(f"fusenas fsck: {p}")
        print(f"fusenas fsck: {len(problems)} problems found")
        return 1
    print(
        f"fusenas fsck: clean: {stats.files - stats.free_files} inodes, "
        f"{stats.blocks - stats.free_blocks} of {stats.blocks} blocks in use"
    )
    return 0
