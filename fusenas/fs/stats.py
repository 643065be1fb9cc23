"""Counters of the FUSE adapter: requests, failures by errno, latency, logical bytes.

``OperationStats.observe`` is called once per request, by the one error boundary of
``fusenas.fs.operations`` (``_boundary``/``_sync_boundary``), on the trio thread (or in
pyfuse3's FUSE callback, which runs on the same thread). The hot path only adds to integers
and bisects a bucket list: no lock, no allocation beyond the first request of a name, no
formatting. ``statistics()`` returns a frozen record (trio's ``statistics()`` shape) that the
observability floor reads; it copies, so the record never changes under its reader.

``Histogram`` is also the latency histogram of the device timing in the observability floor:
it lives here, the lower of the two floors that use it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

#: Upper bounds (seconds, inclusive) of the latency histograms (FUSE operations, device I/O).
LATENCY_BUCKETS: tuple[float, ...] = (
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
    100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


@dataclass(frozen=True)
class HistogramSnapshot:
    """``counts[i]`` observations at most ``bounds[i]`` and above the bound before it; the
    last count is the overflow (above every bound). ``total``: sum of the observations."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float


class Histogram:
    """Counts per bucket of ``bounds`` (inclusive upper bounds) plus an overflow bucket."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.total)


class _Op:
    """The counters of one operation name."""

    __slots__ = ("count", "errors", "latency")

    def __init__(self) -> None:
        self.count = 0
        self.errors: Counter[int] = Counter()
        self.latency = Histogram()


@dataclass(frozen=True)
class OpSnapshot:
    """One operation: requests answered (errors included), errors by errno, latency."""

    count: int
    errors: Mapping[int, int]
    latency: HistogramSnapshot


@dataclass(frozen=True)
class OperationStatistics:
    """Every operation seen since the mount, by handler name; logical bytes of the
    successful ``read`` replies and ``write`` requests."""

    ops: Mapping[str, OpSnapshot]
    bytes_read: int
    bytes_written: int


class OperationStats:
    """Per FUSE operation: calls, failures by errno, latency; logical bytes read/written."""

    def __init__(self) -> None:
        self._ops: dict[str, _Op] = {}
        self.bytes_read = 0
        self.bytes_written = 0

    def observe(self, op: str, seconds: float, result: object = None, errno: int = 0) -> None:
        """One request of handler ``op`` answered after ``seconds``: with ``result``, or
        failed with ``errno``."""
        rec = self._ops.get(op)
        if rec is None:
            rec = self._ops[op] = _Op()
        rec.count += 1
        rec.latency.observe(seconds)
        if errno:
            rec.errors[errno] += 1
        elif op == "write" and isinstance(result, int):
            self.bytes_written += result
        elif op == "read" and isinstance(result, bytes | bytearray | memoryview):
            self.bytes_read += len(result)

    def statistics(self) -> OperationStatistics:
        return OperationStatistics(
            ops={
                name: OpSnapshot(rec.count, dict(rec.errors), rec.latency.snapshot())
                for name, rec in self._ops.items()
            },
            bytes_read=self.bytes_read,
            bytes_written=self.bytes_written,
        )
