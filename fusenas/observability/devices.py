"""Device timing: every call to every member and journal device, timed and counted.

``TimedProvider`` wraps the volume floor's ``DeviceProvider`` that ``open_volume`` opens the
members and the journal with; each device it opens is a ``TimedDevice`` reporting to the
``DeviceStats`` of its path in a ``DeviceTimings`` registry. Per device: a latency histogram
per call kind (``read``, ``write``, ``flush``), bytes read and written, failed (or cancelled)
calls, and the queue depth: calls issued and not finished, whether waiting for a worker
thread or running in one. A call slower than ``DeviceTimings.slow_io`` seconds is counted
and logged (``slow_io``, at most once per device every ``WARN_INTERVAL`` seconds) when it
returns.

The counters live in the registry, not in the device, so they survive a device being closed
and opened again (a member re-added after a failure) and start at zero at each mount.
Everything runs on the trio thread: the wrappers only add to integers (``Histogram``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusenas.fs.stats import Histogram, HistogramSnapshot
from fusenas.logs import RateLimiter, event
from fusenas.units import ByteData
from fusenas.volume.device import BlockDevice, DeviceProvider

log = logging.getLogger(__name__)

#: A device call slower than this (seconds) is a "slow I/O": counted, and logged rate-limited.
SLOW_IO_SECONDS = 1.0
#: At most one warning line per device / condition per this many seconds.
WARN_INTERVAL = 30.0


@dataclass(frozen=True)
class DeviceSnapshot:
    """The counters of one device at one instant."""

    name: str
    in_flight: int
    bytes_read: int
    bytes_written: int
    slow: int
    errors: Mapping[str, int]
    latency: Mapping[str, HistogramSnapshot]


class DeviceStats:
    """Counters of one device (by path), kept across reopenings."""

    def __init__(self, name: str, timings: DeviceTimings) -> None:
        self.name = name
        self._timings = timings
        self.in_flight = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.slow = 0
        self.errors: Counter[str] = Counter()
        self.latency = {op: Histogram() for op in ("read", "write", "flush")}

    def end(self, op: str, started: float, nbytes: int, failed: bool) -> None:
        """A call of kind ``op`` begun at ``started`` (``perf_counter``) finished."""
        self.in_flight -= 1
        seconds = time.perf_counter() - started
        self.latency[op].observe(seconds)
        if failed:
            self.errors[op] += 1
        elif op == "read":
            self.bytes_read += nbytes
        elif op == "write":
            self.bytes_written += nbytes
        if seconds > self._timings.slow_io:
            self.slow += 1
            self._timings.slow_io_seen(self, op, seconds)

    def statistics(self) -> DeviceSnapshot:
        return DeviceSnapshot(
            name=self.name,
            in_flight=self.in_flight,
            bytes_read=self.bytes_read,
            bytes_written=self.bytes_written,
            slow=self.slow,
            errors=dict(self.errors),
            latency={op: h.snapshot() for op, h in self.latency.items()},
        )


class DeviceTimings:
    """The ``DeviceStats`` of every device opened through a ``TimedProvider`` made by
    :meth:`provider`, by path; the slow-I/O threshold and its rate-limited warning."""

    def __init__(
        self, *, slow_io: float = SLOW_IO_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.slow_io = slow_io
        self.devices: dict[str, DeviceStats] = {}
        self._warn = RateLimiter(WARN_INTERVAL, clock)

    def provider(self, inner: DeviceProvider) -> TimedProvider:
        """``inner``, with every device it opens timed here."""
        return TimedProvider(inner, self)

    def stats(self, name: str) -> DeviceStats:
        """The counters of device ``name``, created at its first opening."""
        stats = self.devices.get(name)
        if stats is None:
            stats = self.devices[name] = DeviceStats(name, self)
        return stats

    def slow_io_seen(self, dev: DeviceStats, op: str, seconds: float) -> None:
        dropped = self._warn.allow(("slow_io", dev.name))
        if dropped is None:
            return
        event(
            log,
            logging.WARNING,
            "slow_io",
            f"slow I/O on {dev.name}: {op} took {seconds:.2f} s",
            device=dev.name,
            op=op,
            seconds=round(seconds, 3),
            slow_total=dev.slow,
            suppressed=dropped,
        )

    def statistics(self) -> tuple[DeviceSnapshot, ...]:
        return tuple(s.statistics() for s in self.devices.values())


class TimedDevice:
    """A ``BlockDevice`` that times and counts the calls to the device it wraps."""

    def __init__(self, dev: BlockDevice, stats: DeviceStats) -> None:
        self._dev = dev
        self._stats = stats

    @property
    def size(self) -> int:
        return self._dev.size

    @property
    def name(self) -> str:
        return self._dev.name

    def __getattr__(self, attr: str) -> Any:  # path, is_block_device, ... of the real device
        return getattr(self._dev, attr)

    async def read(self, offset: int, length: int) -> bytes:
        s = self._stats
        s.in_flight += 1
        started = time.perf_counter()
        failed = True
        try:
            data = await self._dev.read(offset, length)
            failed = False
            return data
        finally:
            s.end("read", started, length, failed)

    def read_nowait(self, offset: int, length: int) -> bytes | None:
        started = time.perf_counter()
        data = self._dev.read_nowait(offset, length)
        if data is not None:
            self._stats.in_flight += 1  # ``end`` counts it down
            self._stats.end("read", started, length, False)
        return data

    async def write(self, offset: int, data: ByteData) -> None:
        s = self._stats
        s.in_flight += 1
        started = time.perf_counter()
        failed = True
        try:
            await self._dev.write(offset, data)
            failed = False
        finally:
            s.end("write", started, len(data), failed)

    async def flush(self) -> None:
        s = self._stats
        s.in_flight += 1
        started = time.perf_counter()
        failed = True
        try:
            await self._dev.flush()
            failed = False
        finally:
            s.end("flush", started, 0, failed)

    async def write_many(
        self, writes: Sequence[tuple[int, Sequence[ByteData]]], *, flush: bool
    ) -> None:
        """Several writes (and a flush) in one call, timed as writes and a flush; forwards to
        the device's own ``write_many`` (one thread hop: the WAL's commit path) if it has one."""
        inner = getattr(type(self._dev), "write_many", None)
        if inner is None:
            for offset, bufs in writes:
                await self.write(offset, b"".join(bufs))
            if flush:
                await self.flush()
            return
        s = self._stats
        nbytes = sum(len(b) for _, bufs in writes for b in bufs)
        s.in_flight += 1
        started = time.perf_counter()
        failed = True
        try:
            await inner(self._dev, writes, flush=flush)
            failed = False
        finally:
            s.end("write", started, nbytes, failed)
            if flush:
                s.in_flight += 1
                s.end("flush", started, 0, failed)

    async def aclose(self) -> None:
        await self._dev.aclose()

    def __repr__(self) -> str:
        return f"TimedDevice({self._dev!r})"


class TimedProvider:
    """A ``DeviceProvider`` whose devices are ``TimedDevice``s reporting to ``timings``."""

    def __init__(self, inner: DeviceProvider, timings: DeviceTimings) -> None:
        self._inner = inner
        self._timings = timings

    async def open(self, path: Path, *, readonly: bool = False) -> BlockDevice:
        dev = await self._inner.open(path, readonly=readonly)
        return TimedDevice(dev, self._timings.stats(str(path)))

    async def create(self, path: Path, size: int, *, allocate: bool = False) -> None:
        await self._inner.create(path, size, allocate=allocate)
