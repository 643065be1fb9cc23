#!/usr/bin/env python3
"""Rebuild throughput: mkfs a volume of sparse member files, write data, lose one member,
``replace`` it offline, and print MB/s (bytes written to the new member per second).

    .venv/bin/python scripts/rebuild_throughput.py [--level raid5] [--members 4]
        [--size 512M] [--fill 256M] [--workers 1,4] [--dir /tmp]

The fill is written through the real file layer so the rebuilt rows hold data, not holes.
Reported per worker count: seconds, MB/s of member rebuilt, steals.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from pathlib import Path

import trio

from fusenas.filesystem import create_volume, open_volume
from fusenas.fs.files import FileStore
from fusenas.volume.layout import parse_level, parse_size
from fusenas.volume.rebuild import replace


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="fusenas-rebuild-", dir=args.dir))
    try:
        voldir = base / "vol"
        await create_volume(
            voldir,
            level=parse_level(args.level),
            chunk=64 << 10,
            member_count=args.members,
            member_size=parse_size(args.size),
            journal_size=256 << 20,
        )
        fill = parse_size(args.fill)
        async with open_volume(voldir, checkpointer=False) as vol:
            ino = vol.meta.mknod(1, b"fill", 0o100644, 0, 0, 0, 0).ino
            files = FileStore(vol)
            chunk = random.Random(1).randbytes(1 << 20)
            for off in range(0, fill, 1 << 20):
                await files.write(ino, off, chunk)
                if off % (64 << 20) == 0:
                    await vol.checkpoint()
        print(f"{args.level}, {args.members} members of {args.size}, {args.fill} of data")
        for n, workers in enumerate(int(w) for w in args.workers.split(",")):
            async with open_volume(voldir, checkpointer=False, spares=False) as vol:
                stats = await replace(vol, "1", voldir / f"new-{n}.img", workers=workers)
            print(
                f"  workers {workers}: {stats.bytes / (1 << 20):.0f} MiB rebuilt in "
                f"{stats.seconds:.2f} s = {stats.mb_per_s:.1f} MB/s ({stats.steals} steals)"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--level", default="raid5")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--size", default="512M")
    p.add_argument("--fill", default="256M")
    p.add_argument("--workers", default="1,4")
    p.add_argument("--dir", default=None)
    trio.run(main, p.parse_args())
