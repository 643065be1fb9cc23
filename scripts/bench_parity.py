"""Micro-benchmark of fusenas.volume.parity: MB/s of *data* processed (parity bytes not counted).

Cases, each repeated for about one second with 64 KiB chunks:

* P      — ``gen_p`` (RAID5 full-stripe write)
* P+Q    — ``gen_pq`` (RAID6 full-stripe write)
* 2-data — ``recover`` with two data blocks missing (RAID6 double-degraded read); the data
  counted is the whole stripe's data, as for the other rows.

for a 4-member stripe (3 data, RAID5 shape; RAID6 rows use 3 data + P + Q, i.e. 5 members)
and an 8-member RAID6 stripe (6 data).

Usage: ``.venv/bin/python scripts/bench_parity.py [--seconds S]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from fusenas.units import ByteData
from fusenas.volume import parity

CHUNK = 64 * 1024
MB = 1_000_000


def measure(fn: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Run ``fn`` repeatedly for about ``seconds``; return (calls, elapsed seconds)."""
    fn()  # warm-up: first call pays for page faults in fresh buffers
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls, now - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per case (default 1)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    print(f"chunk {CHUNK // 1024} KiB, ~{args.seconds:g} s per case, MB = 10^6 bytes of data")
    print(f"{'data blocks':>11}  {'case':<8} {'MB/s':>9}  {'calls':>7}")
    for n_data in (3, 6):
        data = [rng.integers(0, 256, CHUNK, dtype=np.uint8).tobytes() for _ in range(n_data)]
        p, q = parity.gen_pq(data)
        degraded: list[ByteData | None] = [None, None, *data[2:]]
        cases: list[tuple[str, Callable[[], object]]] = [
            ("P", partial(parity.gen_p, data)),
            ("P+Q", partial(parity.gen_pq, data)),
            ("2-data", partial(parity.recover, degraded, p, q)),
        ]
        for name, fn in cases:
            calls, elapsed = measure(fn, args.seconds)
            rate = calls * n_data * CHUNK / elapsed / MB
            print(f"{n_data:>11}  {name:<8} {rate:>9.1f}  {calls:>7}")


if __name__ == "__main__":
    main()
