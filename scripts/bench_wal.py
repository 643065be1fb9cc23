"""WAL throughput: N committers each looping append(4 KiB META) + commit for ~2 s.

Runs on a real journal file in a temporary directory under /var/tmp (FileDevice, fdatasync),
for 1, 8 and 64 concurrent committers; prints records/s, MB/s and records per flush.
Usage: python scripts/bench_wal.py [seconds-per-run] [log-MiB]
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

from fusenas.volume.member import FileDevice
from fusenas.wal.format import RecordType
from fusenas.wal.log import WriteAheadLog

PAYLOAD = bytes(4096)


async def run(tasks: int, seconds: float, log_bytes: int, directory: Path) -> None:
    path = directory / f"journal-{tasks}"
    await FileDevice.create_file(path, log_bytes)
    dev = await FileDevice.open(path)
    array = uuid.uuid4()
    start = await WriteAheadLog.format(dev, array)
    wal = await WriteAheadLog.open(dev, array, start)
    deadline = trio.current_time() + seconds

    async def committer() -> None:
        while trio.current_time() < deadline:
            lsn = await wal.append(RecordType.META, PAYLOAD)
            await wal.commit(lsn)
            # A checkpoint would do this; here nothing needs the records afterwards.
            wal.reclaim(wal.position_of(wal.durable_lsn))

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(committer)
    elapsed = time.perf_counter() - t0
    s = wal.statistics()
    await wal.aclose()
    path.unlink()
    print(
        f"{tasks:3d} committers: {s.records_committed / elapsed:9.0f} records/s "
        f"{s.bytes_written / elapsed / 1e6:8.1f} MB/s "
        f"{s.records_committed / max(1, s.commits):6.1f} records/flush "
        f"({s.commits} flushes in {elapsed:.2f} s)"
    )


async def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    log_bytes = int(sys.argv[2] if len(sys.argv) > 2 else 64) << 20
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="fusenas-bench-wal-") as d:
        for tasks in (1, 8, 64):
            await run(tasks, seconds, log_bytes, Path(d))


if __name__ == "__main__":
    trio.run(main)
