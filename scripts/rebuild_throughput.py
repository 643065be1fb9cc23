#!/usr/bin/env python3
"""Rebuild throughput: mkfs a volume of sparse member files, write data, lose one member,
``replace`` it offline, and print MB/s (bytes written to the new member per second); then
fio on the mounted volume, idle and during an online ``fusenas replace MOUNTPOINT``.

    .venv/bin/python scripts/rebuild_throughput.py [--level raid5] [--members 4]
        [--size 512M] [--fill 256M] [--workers 1,4] [--dir /tmp] [--no-fio]
        [--fio-size 256m] [--fio-runtime 15]

The fill is written through the real file layer so the rebuilt rows hold data, not holes.
Reported per worker count: seconds, MB/s of member rebuilt, steals. The fio part (needs fio
and FUSE; mounts with ``fusenas VOLDIR MNT -f``) runs ``fio --rw=randrw --bs=64k
--size=SIZE --runtime=T --time_based`` twice on the same file: once idle, once started right
after an online replace of member 2, and prints read/write MB/s and IOPS of both, the online
rebuild's own MB/s, and how much of the fio run the rebuild overlapped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from fusenas.engine import create_volume, open_volume
from fusenas.engine.rebuild import replace
from fusenas.fs.files import FileStore
from fusenas.volume.layout import parse_level, parse_size


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
                if off % (16 << 20) == 0:  # no checkpointer: keep the log from filling
                    await vol.checkpoint()
        print(f"{args.level}, {args.members} members of {args.size}, {args.fill} of data")
        for n, workers in enumerate(int(w) for w in args.workers.split(",")):
            async with open_volume(voldir, checkpointer=False, spares=False) as vol:
                stats = await replace(vol, "1", voldir / f"new-{n}.img", workers=workers)
            print(
                f"  workers {workers}: {stats.bytes / (1 << 20):.0f} MiB rebuilt in "
                f"{stats.seconds:.2f} s = {stats.mb_per_s:.1f} MB/s ({stats.steals} steals)"
            )
        if args.fio:
            fio_compare(args, voldir, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


FUSENAS = str(Path(sys.executable).with_name("fusenas"))


def fio(args: argparse.Namespace, mnt: Path, name: str) -> dict[str, float]:
    r = subprocess.run(
        [
            "fio",
            f"--name={name}",
            f"--directory={mnt}",
            "--filename=fio.dat",
            "--rw=randrw",
            "--bs=64k",
            f"--size={args.fio_size}",
            f"--runtime={args.fio_runtime}",
            "--time_based",
            "--output-format=json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    job = json.loads(r.stdout[r.stdout.index("{") :])["jobs"][0]
    return {
        "read_mb_s": job["read"]["bw_bytes"] / 1e6,
        "write_mb_s": job["write"]["bw_bytes"] / 1e6,
        "read_iops": job["read"]["iops"],
        "write_iops": job["write"]["iops"],
    }


def fio_compare(args: argparse.Namespace, voldir: Path, base: Path) -> None:
    mnt = base / "mnt"
    mnt.mkdir()
    log = open(base / "daemon.log", "wb")  # noqa: SIM115
    daemon = subprocess.Popen([FUSENAS, str(voldir), str(mnt), "-f"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mount failed: {(base / 'daemon.log').read_text()}")
            time.sleep(0.05)
        # Lay the fio file out first, so both runs measure I/O only.
        fio(args, mnt, "layout").clear()
        idle = fio(args, mnt, "idle")
        t0 = time.monotonic()
        rebuild = subprocess.Popen(
            [FUSENAS, "replace", str(mnt), "2", str(voldir / "online-2.img"), "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        busy = fio(args, mnt, "during-rebuild")
        fio_end = time.monotonic()
        out, err = rebuild.communicate(timeout=3600)
        rebuild_end = time.monotonic()
        if rebuild.returncode != 0:
            raise SystemExit(f"online replace failed: {err}")
        # The rebuild's own duration (the job's summary), not the client's: the client also
        # waits for its next status poll and starts a Python interpreter.
        secs = float(out.split(" s (")[0].rsplit(" in ", 1)[1])
        overlap = min(1.0, secs / (fio_end - t0))
        print(
            f"fio randrw 64k, {args.fio_size}, {args.fio_runtime} s on the mount "
            f"({args.level}, {args.members} members):"
        )
        for label, f in (("idle", idle), ("during online rebuild", busy)):
            print(
                f"  {label:>22}: read {f['read_mb_s']:.1f} MB/s ({f['read_iops']:.0f} IOPS), "
                f"write {f['write_mb_s']:.1f} MB/s ({f['write_iops']:.0f} IOPS)"
            )
        total_idle = idle["read_mb_s"] + idle["write_mb_s"]
        total_busy = busy["read_mb_s"] + busy["write_mb_s"]
        print(
            f"  during/idle: {total_busy / total_idle:.2f}x; the rebuild overlapped "
            f"{overlap:.0%} of the fio run ({secs:.1f} s of rebuild; the client returned after "
            f"{rebuild_end - t0:.1f} s)"
        )
        print(f"  online replace: {out.strip()}")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
        try:
            daemon.wait(120)
        except subprocess.TimeoutExpired:
            daemon.kill()
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, check=False)
        log.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--level", default="raid5")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--size", default="512M")
    p.add_argument("--fill", default="256M")
    p.add_argument("--workers", default="1,4")
    p.add_argument("--dir", default=None)
    p.add_argument("--no-fio", dest="fio", action="store_false", help="skip the fio part")
    p.add_argument("--fio-size", default="256m")
    p.add_argument("--fio-runtime", type=int, default=15)
    trio.run(main, p.parse_args())
