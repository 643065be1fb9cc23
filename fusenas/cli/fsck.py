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

from fusenas.engine import open_volume
from fusenas.engine.config import load_config, lock_volume
from fusenas.engine.verify import verify_checksums
from fusenas.errors import FusenasError
from fusenas.meta.fsck import check


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
