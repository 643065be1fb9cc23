"""Observability of a mounted volume: counters on the hot paths, snapshots at scrape time.

What is counted where
    * FUSE operations: ``OperationStats``, fed by the one error boundary of
      ``fs/operations.py`` (count, errno of failures, latency histogram per operation, logical
      bytes of ``read``/``write`` replies).
    * Device I/O: ``TimedProvider`` wraps the device provider that ``open_volume`` opens the
      members and the journal with, so every ``read``/``write``/``flush`` of every device is
      timed (histogram per device and op), its bytes counted, its queue depth known (I/Os
      issued and not finished: waiting for a worker thread or running in one), and an I/O
      slower than ``slow_io`` seconds logged (rate-limited).
    * Everything else is already counted by the layers and read from their ``statistics()``
      snapshots: ``WriteAheadLog``, ``StripeCache``, ``LockShardTable``, and ``Array``
      (member states, bytes per member).
    * Checkpoints: ``Monitor.attach`` times ``Volume.checkpoint`` by wrapping the instance's
      method (until ``Volume`` keeps its own statistics).
    * Later work (scrub, rebuild, checksum repair) reports through :data:`INTEGRITY`.

The hot path only adds to integers and bisects a bucket list: no locks, no allocation beyond
the first observation of a name, no formatting.

Threads
    All counters are written on the trio thread. ``Monitor.snapshot`` reads them there too: the
    Prometheus HTTP server runs in its own thread (prometheus_client's ``start_http_server``)
    and its collector calls ``trio.from_thread.run_sync(monitor.snapshot)``, so one scrape sees
    one consistent instant and trio's run statistics (which must be read on the loop) are
    available; the text formatting then happens off the loop. If the loop is gone (shutdown)
    the scrape answers with no fusenas metrics.

The metric names and their meaning are listed in docs/metrics.md; the live status report built
from the same snapshot is documented in docs/status.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from fusenas.errors import FusenasError
from fusenas.logs import RateLimiter, event
from fusenas.units import ByteData
from fusenas.wal.log import BATCH_BUCKETS

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from fusenas import control
    from fusenas.filesystem import Volume
    from fusenas.volume.device import BlockDevice, DeviceProvider

log = logging.getLogger(__name__)

#: Upper bounds (seconds, inclusive) of the latency histograms (FUSE operations, device I/O,
#: checkpoints).
LATENCY_BUCKETS: tuple[float, ...] = (
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
    100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: A device I/O slower than this is a "slow I/O" (counted, and logged rate-limited).
SLOW_IO_SECONDS = 1.0
#: At most one warning line per device / condition per this many seconds.
WARN_INTERVAL = 30.0
#: Reminder interval while the array stays degraded.
DEGRADED_REMINDER = 600.0
#: The journal is "nearly full" above this fill (warned, rate-limited).
JOURNAL_FILL_WARN = 0.9
#: How many of the most contended lock shards are exported one by one.
HOTTEST_SHARDS = 8
#: How many task names are exported with their count (the most numerous).
TASK_NAMES = 20


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


@dataclass(frozen=True)
class HistogramSnapshot:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: ``(le, cumulative count)``, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_float(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def _float(v: float) -> str:
    return repr(float(v))


# -- FUSE operations ------------------------------------------------------------------------


class _Op:
    __slots__ = ("count", "errors", "latency")

    def __init__(self) -> None:
        self.count = 0
        self.errors: Counter[int] = Counter()
        self.latency = Histogram()


@dataclass(frozen=True)
class OpSnapshot:
    count: int
    errors: dict[int, int]
    latency: HistogramSnapshot


class OperationStats:
    """Per FUSE operation: calls, failures by errno, latency; logical bytes read/written.

    ``observe`` is called once per request by the error boundary of ``FusenasOperations``.
    """

    def __init__(self) -> None:
        self.ops: dict[str, _Op] = {}
        self.bytes_read = 0
        self.bytes_written = 0

    def observe(self, op: str, seconds: float, result: object = None, errno: int = 0) -> None:
        rec = self.ops.get(op)
        if rec is None:
            rec = self.ops[op] = _Op()
        rec.count += 1
        rec.latency.observe(seconds)
        if errno:
            rec.errors[errno] += 1
        elif op == "write" and isinstance(result, int):
            self.bytes_written += result
        elif op == "read" and isinstance(result, bytes | bytearray | memoryview):
            self.bytes_read += len(result)

    def snapshot(self) -> dict[str, OpSnapshot]:
        return {
            name: OpSnapshot(rec.count, dict(rec.errors), rec.latency.snapshot())
            for name, rec in self.ops.items()
        }


# -- devices --------------------------------------------------------------------------------


class DeviceStats:
    """Counters of one device (by name), kept across reopenings."""

    def __init__(self, name: str, monitor: Monitor) -> None:
        self.name = name
        self.monitor = monitor
        self.in_flight = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.slow = 0
        self.errors: Counter[str] = Counter()
        self.latency = {op: Histogram() for op in ("read", "write", "flush")}

    def end(self, op: str, started: float, nbytes: int, failed: bool) -> None:
        self.in_flight -= 1
        seconds = time.perf_counter() - started
        self.latency[op].observe(seconds)
        if failed:
            self.errors[op] += 1
        elif op == "read":
            self.bytes_read += nbytes
        elif op == "write":
            self.bytes_written += nbytes
        if seconds > self.monitor.slow_io:
            self.slow += 1
            self.monitor.slow_io_seen(self, op, seconds)


@dataclass(frozen=True)
class DeviceSnapshot:
    name: str
    in_flight: int
    bytes_read: int
    bytes_written: int
    slow: int
    errors: dict[str, int]
    latency: dict[str, HistogramSnapshot]


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

    @property
    def wrapped(self) -> BlockDevice:
        return self._dev

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
    """A ``DeviceProvider`` whose devices are ``TimedDevice``s reporting to ``monitor``."""

    def __init__(self, inner: DeviceProvider, monitor: Monitor) -> None:
        self._inner = inner
        self._monitor = monitor

    async def open(self, path: Path, *, readonly: bool = False) -> BlockDevice:
        dev = await self._inner.open(path, readonly=readonly)
        return TimedDevice(dev, self._monitor.device_stats(str(path)))

    async def create(self, path: Path, size: int, *, allocate: bool = False) -> None:
        await self._inner.create(path, size, allocate=allocate)


# -- later work: scrub, rebuild, checksum repair -------------------------------------------


@dataclass
class IntegrityCounters:
    """Filled by the code that finds and repairs bad blocks, and by scrub/rebuild.

    ``progress[kind]`` is ``(done_bytes, total_bytes)`` of a running ``"rebuild"`` or
    ``"scrub"``; remove the key when it ends. Process-wide (one volume per daemon); call from
    the trio thread.
    """

    checksum_errors_found: int = 0
    checksum_errors_repaired: int = 0
    progress: dict[str, tuple[int, int]] = field(default_factory=dict)

    def checksum_error(self, *, repaired: bool) -> None:
        self.checksum_errors_found += 1
        if repaired:
            self.checksum_errors_repaired += 1


INTEGRITY = IntegrityCounters()

PROGRESS_KINDS = ("rebuild", "scrub")


# -- the snapshot ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything a scrape or a live status report shows, taken at one instant."""

    taken: float
    uptime: float
    pid: int
    readonly: bool
    volume: Path
    mountpoint: Path | None
    metrics_url: str | None
    uuid: str
    name: str
    level: int
    chunk: int
    size: int
    events: int
    journal_path: str
    journal_size: int
    #: Why the volume turned read-only while running (fault handling), or None.
    failed_readonly: str | None
    member_paths: list[str]
    member_sizes: list[int | None]
    member_states: list[str]
    member_bytes_read: list[int]
    member_bytes_written: list[int]
    usable: bool
    wal: Any  # WalStatistics
    cache: Any  # CacheStatistics
    locks: Any  # LockTableStatistics
    ops: dict[str, OpSnapshot]
    logical_bytes_read: int
    logical_bytes_written: int
    devices: list[DeviceSnapshot]
    checkpoints: HistogramSnapshot
    last_checkpoint_seconds: float | None
    tasks_living: int
    tasks_runnable: int
    tasks_by_name: dict[str, int]
    threads_busy: int
    threads_limit: float
    threads_waiting: int
    checksum_errors_found: int
    checksum_errors_repaired: int
    checksum_errors_unrecoverable: int
    bad_blocks_by_member: dict[int, int]
    progress: dict[str, tuple[int, int]]


def _task_names() -> Counter[str]:
    """Living tasks by name: a walk of the task tree from the root (O(tasks))."""
    names: Counter[str] = Counter()
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        names[task.name] += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


class Monitor:
    """The daemon's observability hub: device timing, the snapshot, health warnings, and the
    two endpoints (Prometheus over HTTP, the control socket)."""

    def __init__(
        self,
        voldir: Path,
        mountpoint: Path | None = None,
        *,
        slow_io: float = SLOW_IO_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.voldir = voldir
        self.mountpoint = mountpoint
        self.slow_io = slow_io
        self.started = clock()
        self._clock = clock
        self.devices: dict[str, DeviceStats] = {}
        self.vol: Volume | None = None
        self.ops: OperationStats = OperationStats()
        self.checkpoints = Histogram()
        self.last_checkpoint: float | None = None
        self.metrics_url: str | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._warn = RateLimiter(WARN_INTERVAL, clock)

    # -- wiring ----------------------------------------------------------------------------

    def provider(self, inner: DeviceProvider) -> TimedProvider:
        return TimedProvider(inner, self)

    def device_stats(self, name: str) -> DeviceStats:
        stats = self.devices.get(name)
        if stats is None:
            stats = self.devices[name] = DeviceStats(name, self)
        return stats

    def attach(self, vol: Volume, ops: OperationStats | None = None) -> None:
        """Watch ``vol`` (and the FUSE operation counters ``ops``). Call on the trio thread."""
        self.vol = vol
        if ops is not None:
            self.ops = ops
        self._token = trio.lowlevel.current_trio_token()
        inner = vol.checkpoint

        async def timed_checkpoint() -> None:
            started = time.perf_counter()
            await inner()
            self.last_checkpoint = time.perf_counter() - started
            self.checkpoints.observe(self.last_checkpoint)

        vol.checkpoint = timed_checkpoint  # type: ignore[method-assign]

    # -- hot-path callbacks ----------------------------------------------------------------

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

    # -- snapshot --------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Read every counter at one instant. Call on the trio thread (the collector does it
        through ``trio.from_thread.run_sync``)."""
        vol = self.vol
        if vol is None:
            raise RuntimeError("no volume attached")
        array = vol.members.array
        g = array.geometry
        tpl = vol.members.template
        run = trio.lowlevel.current_statistics()
        limiter = trio.to_thread.current_default_thread_limiter()
        lim = limiter.statistics()
        paths = [str(p) for p in vol.members.paths]
        heal = getattr(array, "heal", None)  # Array.heal: the self-heal counters
        devices = [
            DeviceSnapshot(
                name=s.name,
                in_flight=s.in_flight,
                bytes_read=s.bytes_read,
                bytes_written=s.bytes_written,
                slow=s.slow,
                errors=dict(s.errors),
                latency={op: h.snapshot() for op, h in s.latency.items()},
            )
            for s in self.devices.values()
        ]
        return Snapshot(
            taken=time.time(),
            uptime=self._clock() - self.started,
            pid=os.getpid(),
            readonly=vol.readonly,
            volume=self.voldir,
            mountpoint=self.mountpoint,
            metrics_url=self.metrics_url,
            uuid=str(tpl.array_uuid),
            name=tpl.name,
            level=int(g.level),
            chunk=g.chunk,
            size=g.logical_size,
            events=vol.members.events,
            journal_path=str(vol.config.journal_path(self.voldir)),
            journal_size=vol.config.journal_size,
            failed_readonly=getattr(vol, "failed_readonly", None),
            member_paths=paths,
            member_sizes=[d.size if d is not None else None for d in array.devices],
            member_states=[s.name.lower() for s in array.states],
            member_bytes_read=list(array.bytes_read),
            member_bytes_written=list(array.bytes_written),
            usable=array.usable,
            wal=vol.wal.statistics(),
            cache=vol.cache.statistics(),
            locks=vol.locks.statistics(),
            ops=self.ops.snapshot(),
            logical_bytes_read=self.ops.bytes_read,
            logical_bytes_written=self.ops.bytes_written,
            devices=devices,
            checkpoints=self.checkpoints.snapshot(),
            last_checkpoint_seconds=self.last_checkpoint,
            tasks_living=run.tasks_living,
            tasks_runnable=run.tasks_runnable,
            tasks_by_name=dict(_task_names().most_common(TASK_NAMES)),
            threads_busy=lim.borrowed_tokens,
            threads_limit=lim.total_tokens,
            threads_waiting=lim.tasks_waiting,
            checksum_errors_found=INTEGRITY.checksum_errors_found
            + getattr(heal, "checksum_mismatches", 0),
            checksum_errors_repaired=INTEGRITY.checksum_errors_repaired
            + getattr(heal, "repaired", 0),
            checksum_errors_unrecoverable=getattr(heal, "unrecoverable", 0),
            bad_blocks_by_member=dict(getattr(heal, "bad_by_member", {})),
            progress=dict(INTEGRITY.progress),
        )

    def snapshot_from_thread(self) -> Snapshot | None:
        """``snapshot`` taken on the trio loop from another thread; None once it is gone."""
        if self._token is None:
            return None
        try:
            return trio.from_thread.run_sync(self.snapshot, trio_token=self._token)
        except (trio.RunFinishedError, RuntimeError):
            return None

    # -- health warnings -------------------------------------------------------------------

    async def watch(
        self,
        interval: float = 1.0,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Log degraded states and journal backpressure; runs until cancelled (between
        checks, nothing to clean up)."""
        task_status.started()
        failed: tuple[int, ...] = ()
        while True:
            failed = self.check_health(failed)
            await trio.sleep(interval)

    def check_health(self, before: tuple[int, ...]) -> tuple[int, ...]:
        """One round of health checks; returns the failed members to compare with next."""
        vol = self.vol
        if vol is None:
            return before
        array = vol.members.array
        failed = tuple(array.failed_members)
        paths = vol.members.paths
        if failed != before:
            self._warn.allow("degraded")  # restart the reminder interval
            for m in sorted(set(failed) - set(before)):
                event(
                    log,
                    logging.WARNING,
                    "degraded",
                    f"array degraded: member {m} ({paths[m]}) is {array.states[m].name.lower()}",
                    member=m,
                    device=paths[m],
                    state=array.states[m].name.lower(),
                    failed=len(failed),
                    usable=array.usable,
                )
            for m in sorted(set(before) - set(failed)):
                event(
                    log,
                    logging.INFO,
                    "member_active",
                    f"member {m} ({paths[m]}) is active again",
                    member=m,
                    device=paths[m],
                )
        elif failed and self._warn.allow("degraded") is not None:
            event(
                log,
                logging.WARNING,
                "degraded",
                f"array still degraded: members {', '.join(map(str, failed))} not active",
                failed=len(failed),
                usable=array.usable,
            )
        wal = vol.wal.statistics()
        fill = wal.used_bytes / wal.capacity if wal.capacity else 0.0
        if wal.waiting_for_room:
            dropped = self._warn.allow("journal_backpressure")
            if dropped is not None:
                event(
                    log,
                    logging.WARNING,
                    "journal_backpressure",
                    f"{wal.waiting_for_room} writers wait for journal space "
                    f"({fill:.0%} full); a checkpoint will free it",
                    waiting=wal.waiting_for_room,
                    fill=round(fill, 3),
                    suppressed=dropped,
                )
        elif fill > JOURNAL_FILL_WARN:
            dropped = self._warn.allow("journal_full")
            if dropped is not None:
                event(
                    log,
                    logging.WARNING,
                    "journal_full",
                    f"journal {fill:.0%} full",
                    fill=round(fill, 3),
                    suppressed=dropped,
                )
        return failed

    # -- endpoints ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def endpoints(self, metrics: tuple[str, int] | None) -> Iterator[trio.SocketListener]:
        """Bind the control socket and (if asked) start the Prometheus server; yields the
        control listener for :meth:`start`. Both are gone when the block ends.
        ``FusenasError`` if either cannot be set up (nothing is left behind)."""
        from fusenas import control

        listener = control.bind(self.voldir)
        server = None
        try:
            if metrics is not None:
                try:
                    server = MetricsServer(self, *metrics)
                except OSError as exc:
                    raise FusenasError(
                        f"cannot serve metrics on {metrics[0]}:{metrics[1]}: {exc.strerror}"
                    ) from None
                event(log, logging.INFO, "metrics", f"metrics on {server.url}", url=server.url)
            yield listener
        finally:
            if server is not None:
                server.close()
            control.unlink(self.voldir)

    def start(
        self,
        nursery: trio.Nursery,
        listener: trio.SocketListener,
        commands: dict[str, control.Command] | None = None,
    ) -> None:
        """Serve the control socket and watch health in ``nursery`` (until it is cancelled).
        ``commands``: more control commands (``control.Jobs``), taking the request."""
        from fusenas import control

        handler = control.dispatcher(
            {"status": self.status_report, "ping": lambda: {"pid": os.getpid()}}, commands
        )
        nursery.start_soon(control.serve, listener, handler)
        nursery.start_soon(self.watch)

    # -- the live status report (schema: docs/status.md) ---------------------------------

    def status_report(self) -> dict[str, Any]:
        return status_report(self.snapshot())


def status_report(s: Snapshot) -> dict[str, Any]:
    """The live status report (``fusenas status`` through the control socket)."""
    by_name = {d.name: d for d in s.devices}
    members: list[dict[str, Any]] = []
    for i, path in enumerate(s.member_paths):
        d = by_name.get(path)
        entry: dict[str, Any] = {
            "slot": i,
            "index": i,
            "path": path,
            "state": s.member_states[i],
            "size": s.member_sizes[i],
            "events": s.events,
            "bytes_read": s.member_bytes_read[i],
            "bytes_written": s.member_bytes_written[i],
            "in_flight": d.in_flight if d else 0,
            "slow_ios": d.slow if d else 0,
            "bad_blocks": s.bad_blocks_by_member.get(i, 0),
        }
        members.append(entry)
    active = sum(st == "active" for st in s.member_states)
    w, c, lk = s.wal, s.cache, s.locks
    return {
        "schema": 1,
        "source": "daemon",
        "volume": str(s.volume),
        "mountpoint": str(s.mountpoint) if s.mountpoint else None,
        "uuid": s.uuid,
        "name": s.name,
        "level": s.level,
        "chunk": s.chunk,
        "size": s.size,
        "member_count": len(s.member_paths),
        "active_members": active,
        "degraded": active < len(s.member_paths),
        "state": "mounted",
        "events": s.events,
        "journal": {
            "path": s.journal_path,
            "size": s.journal_size,
            "capacity": w.capacity,
            "used": w.used_bytes,
            "fill": w.used_bytes / w.capacity if w.capacity else 0.0,
            "pending": w.pending_bytes,
            "appends": w.appends,
            "commits": w.commits,
            "records_committed": w.records_committed,
            "bytes_written": w.bytes_written,
            "waiting_for_room": w.waiting_for_room,
            "durable_lsn": int(w.durable_lsn),
            "last_lsn": int(w.last_lsn),
        },
        "members": members,
        "pid": s.pid,
        "uptime": round(s.uptime, 3),
        "readonly": s.readonly or s.failed_readonly is not None,
        "failed_readonly": s.failed_readonly,
        "usable": s.usable,
        "metrics": s.metrics_url,
        "io": {
            "bytes_read": s.logical_bytes_read,
            "bytes_written": s.logical_bytes_written,
            "operations": {name: op.count for name, op in sorted(s.ops.items())},
            "errors": sum(sum(op.errors.values()) for op in s.ops.values()),
        },
        "cache": {
            "dirty_stripes": c.dirty_stripes,
            "dirty_bytes": c.dirty_bytes,
            "flushing_stripes": c.flushing_stripes,
            "writes": c.writes,
            "stripes_flushed": c.stripes_flushed,
            "blocks_per_flush": round(c.blocks_per_flush, 3),
            "full_stripe_writes": c.full_stripe_writes,
            "rmw_writes": c.rmw_writes,
            "rcw_writes": c.rcw_writes,
            "degraded_writes": c.degraded_writes,
        },
        "checkpoints": {
            "count": s.checkpoints.count,
            "seconds_total": round(s.checkpoints.total, 6),
            "last_seconds": s.last_checkpoint_seconds,
        },
        "locks": {
            "acquisitions": lk.acquisitions,
            "contended": lk.contended,
            "wait_total": lk.wait_total,
            "wait_max": lk.wait_max,
            "tasks_waiting": lk.tasks_waiting,
            "hottest": [
                {"shard": h.shard, "contended": h.contended, "wait_total": h.wait_total}
                for h in lk.hottest(HOTTEST_SHARDS)
            ],
        },
        "tasks": {"living": s.tasks_living, "runnable": s.tasks_runnable},
        "integrity": {
            "checksum_errors_found": s.checksum_errors_found,
            "checksum_errors_repaired": s.checksum_errors_repaired,
            "checksum_errors_unrecoverable": s.checksum_errors_unrecoverable,
            "progress": {
                kind: {"done": done, "total": total} for kind, (done, total) in s.progress.items()
            },
        },
    }


# -- Prometheus -----------------------------------------------------------------------------


class FusenasCollector:
    """A prometheus_client collector that renders one ``Snapshot`` per scrape."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Any]:
        s = self.monitor.snapshot_from_thread()
        if s is None:
            return iter(())
        return iter(families(s))


def families(s: Snapshot) -> list[Any]:
    """The metric families of a snapshot (names and meanings: docs/metrics.md)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        InfoMetricFamily,
        StateSetMetricFamily,
    )

    out: list[Any] = []

    def gauge(name: str, doc: str, value: float, unit: str = "") -> None:
        out.append(GaugeMetricFamily(name, doc, value=value, unit=unit))

    def counter(name: str, doc: str, value: float) -> None:
        out.append(CounterMetricFamily(name, doc, value=value))

    def hist(fam: HistogramMetricFamily, labels: Sequence[str], h: HistogramSnapshot) -> None:
        fam.add_metric(list(labels), h.cumulative(), h.total)

    info = InfoMetricFamily("fusenas_volume", "The mounted volume.")
    info.add_metric(
        [],
        {
            "uuid": s.uuid,
            "name": s.name,
            "level": f"raid{s.level}",
            "volume": str(s.volume),
            "mountpoint": str(s.mountpoint or ""),
        },
    )
    out.append(info)
    gauge("fusenas_uptime_seconds", "Seconds since the daemon started.", s.uptime)
    gauge("fusenas_volume_size_bytes", "Logical size of the volume.", s.size)
    gauge("fusenas_readonly", "1 if mounted read-only.", float(s.readonly))

    # FUSE operations
    ops_total = CounterMetricFamily(
        "fusenas_fuse_operations", "FUSE requests answered, by operation.", labels=["op"]
    )
    errors = CounterMetricFamily(
        "fusenas_fuse_errors",
        "FUSE requests answered with an error, by operation and errno name.",
        labels=["op", "errno"],
    )
    latency = HistogramMetricFamily(
        "fusenas_fuse_operation_seconds",
        "Time from a FUSE request reaching its handler to its reply.",
        labels=["op"],
    )
    for name, op in sorted(s.ops.items()):
        ops_total.add_metric([name], op.count)
        hist(latency, [name], op.latency)
        for err, n in sorted(op.errors.items()):
            errors.add_metric([name, _errno_name(err)], n)
    out += [ops_total, errors, latency]
    counter(
        "fusenas_logical_read_bytes",
        "Bytes returned by FUSE read requests.",
        s.logical_bytes_read,
    )
    counter(
        "fusenas_logical_written_bytes",
        "Bytes accepted by FUSE write requests.",
        s.logical_bytes_written,
    )

    # array and members
    states = ("active", "faulty", "missing", "spare", "rebuilding")
    member_state = StateSetMetricFamily(
        "fusenas_member_state", "State of each member slot.", labels=["member", "device"]
    )
    member_read = CounterMetricFamily(
        "fusenas_member_read_bytes", "Bytes read from each member's data area.", labels=["member"]
    )
    member_written = CounterMetricFamily(
        "fusenas_member_written_bytes",
        "Bytes written to each member's data area.",
        labels=["member"],
    )
    for i, path in enumerate(s.member_paths):
        st = s.member_states[i]
        member_state.add_metric(
            [str(i), path], {k: k == st for k in (*states, *((st,) if st not in states else ()))}
        )
        member_read.add_metric([str(i)], s.member_bytes_read[i])
        member_written.add_metric([str(i)], s.member_bytes_written[i])
    out += [member_state, member_read, member_written]
    active = sum(st == "active" for st in s.member_states)
    gauge("fusenas_array_members", "Member slots of the array.", len(s.member_paths))
    gauge("fusenas_array_active_members", "Members in the active state.", active)
    gauge(
        "fusenas_array_degraded",
        "1 if some member is not active.",
        float(active < len(s.member_paths)),
    )
    gauge(
        "fusenas_array_usable",
        "1 while no data is lost (failures within what the level tolerates).",
        float(s.usable),
    )

    # devices (members and journal)
    dev_lat = HistogramMetricFamily(
        "fusenas_device_io_seconds", "Latency of device calls.", labels=["device", "op"]
    )
    dev_inflight = GaugeMetricFamily(
        "fusenas_device_io_in_flight",
        "Device calls issued and not finished (waiting for a thread or running).",
        labels=["device"],
    )
    dev_slow = CounterMetricFamily(
        "fusenas_device_slow_io",
        "Device calls slower than the slow-I/O threshold.",
        labels=["device"],
    )
    dev_err = CounterMetricFamily(
        "fusenas_device_io_errors", "Device calls that failed.", labels=["device", "op"]
    )
    dev_read = CounterMetricFamily(
        "fusenas_device_read_bytes", "Bytes read from the device.", labels=["device"]
    )
    dev_written = CounterMetricFamily(
        "fusenas_device_written_bytes", "Bytes written to the device.", labels=["device"]
    )
    for d in sorted(s.devices, key=lambda d: d.name):
        for kind, h in d.latency.items():
            hist(dev_lat, [d.name, kind], h)
        dev_inflight.add_metric([d.name], d.in_flight)
        dev_slow.add_metric([d.name], d.slow)
        dev_read.add_metric([d.name], d.bytes_read)
        dev_written.add_metric([d.name], d.bytes_written)
        for kind, n in sorted(d.errors.items()):
            dev_err.add_metric([d.name, kind], n)
    out += [dev_lat, dev_inflight, dev_slow, dev_err, dev_read, dev_written]

    # stripe cache
    c = s.cache
    gauge(
        "fusenas_cache_dirty_stripes",
        "Stripes with data not yet written in place.",
        c.dirty_stripes,
    )
    gauge("fusenas_cache_dirty_bytes", "Bytes of dirty blocks in the stripe cache.", c.dirty_bytes)
    gauge(
        "fusenas_cache_flushing_stripes", "Stripes being written in place now.", c.flushing_stripes
    )
    counter("fusenas_cache_writes", "Block-aligned writes that entered the stripe cache.", c.writes)
    counter(
        "fusenas_cache_stripes_flushed",
        "Stripe flushes (one per stripe written in place).",
        c.stripes_flushed,
    )
    counter(
        "fusenas_cache_blocks_flushed",
        "Dirty 4 KiB blocks written in place by stripe flushes.",
        round(c.blocks_per_flush * c.stripes_flushed),
    )
    gauge(
        "fusenas_cache_blocks_per_flush",
        "Average dirty blocks merged into one stripe flush since mount.",
        c.blocks_per_flush,
    )
    strat = CounterMetricFamily(
        "fusenas_cache_stripe_writes",
        "Stripe flushes by write strategy: full stripe, read-modify-write, reconstruct-write, "
        "degraded.",
        labels=["strategy"],
    )
    strat.add_metric(["full"], c.full_stripe_writes)
    strat.add_metric(["rmw"], c.rmw_writes)
    strat.add_metric(["rcw"], c.rcw_writes)
    strat.add_metric(["degraded"], c.degraded_writes)
    out.append(strat)

    # write-ahead log
    w = s.wal
    counter("fusenas_wal_appends", "Records appended to the journal.", w.appends)
    counter(
        "fusenas_wal_commits",
        "Group commits: journal writes + fdatasync by a commit leader.",
        w.commits,
    )
    counter(
        "fusenas_wal_records_committed",
        "Records made durable (sum of group-commit batch sizes).",
        w.records_committed,
    )
    gauge(
        "fusenas_wal_last_commit_records",
        "Records in the last group-commit batch.",
        w.records_last_commit,
    )
    counter("fusenas_wal_written_bytes", "Bytes written to the journal device.", w.bytes_written)
    gauge(
        "fusenas_wal_used_bytes", "Journal bytes holding records not yet reclaimed.", w.used_bytes
    )
    gauge("fusenas_wal_pending_bytes", "Bytes appended and not yet committed.", w.pending_bytes)
    gauge("fusenas_wal_capacity_bytes", "Bytes of the journal's record area.", w.capacity)
    gauge(
        "fusenas_wal_fill_ratio",
        "used / capacity.",
        w.used_bytes / w.capacity if w.capacity else 0.0,
    )
    gauge(
        "fusenas_wal_waiting_for_room",
        "Tasks waiting for journal space (backpressure).",
        w.waiting_for_room,
    )
    gauge("fusenas_wal_durable_lsn", "Newest durable log sequence number.", int(w.durable_lsn))
    gauge("fusenas_wal_last_lsn", "Newest appended log sequence number.", int(w.last_lsn))
    if w.batch_histogram:
        gc = HistogramMetricFamily(
            "fusenas_wal_commit_batch_records",
            "Records made durable per journal flush (group commit batch size).",
        )
        gc.add_metric(
            [],
            HistogramSnapshot(
                tuple(float(b) for b in BATCH_BUCKETS), w.batch_histogram, w.records_committed
            ).cumulative(),
            w.records_committed,
        )
        out.append(gc)
    ck = HistogramMetricFamily(
        "fusenas_checkpoint_seconds", "Duration of checkpoints (flush, image, slot header)."
    )
    hist(ck, [], s.checkpoints)
    out.append(ck)

    # locks
    lk = s.locks
    lw = HistogramMetricFamily(
        "fusenas_lock_wait_seconds",
        "Wait for a lock shard, every acquisition one observation (uncontended = 0).",
    )
    lw.add_metric(
        [],
        HistogramSnapshot(lk.bucket_bounds, lk.wait_histogram, lk.wait_total).cumulative(),
        lk.wait_total,
    )
    out.append(lw)
    counter("fusenas_lock_acquisitions", "Lock shard acquisitions.", lk.acquisitions)
    counter("fusenas_lock_contended", "Acquisitions that had to queue.", lk.contended)
    gauge(
        "fusenas_lock_wait_max_seconds", "Longest single wait for a shard since mount.", lk.wait_max
    )
    gauge("fusenas_lock_tasks_waiting", "Tasks queued on some shard now.", lk.tasks_waiting)
    gauge("fusenas_lock_grants_held", "Lock grants held now.", lk.grants_held)
    hot_wait = CounterMetricFamily(
        "fusenas_lock_shard_wait_seconds",
        f"Total wait on each of the {HOTTEST_SHARDS} most contended shards.",
        labels=["shard"],
    )
    hot_cont = CounterMetricFamily(
        "fusenas_lock_shard_contended",
        f"Contended acquisitions of each of the {HOTTEST_SHARDS} most contended shards.",
        labels=["shard"],
    )
    for h in lk.hottest(HOTTEST_SHARDS):
        hot_wait.add_metric([str(h.shard)], h.wait_total)
        hot_cont.add_metric([str(h.shard)], h.contended)
    out += [hot_wait, hot_cont]

    # trio and threads
    gauge(
        "fusenas_trio_tasks", "Living trio tasks (a steady climb is a task leak).", s.tasks_living
    )
    gauge(
        "fusenas_trio_tasks_runnable",
        "Trio tasks ready to run (event-loop backlog).",
        s.tasks_runnable,
    )
    by_name = GaugeMetricFamily(
        "fusenas_trio_tasks_by_name",
        f"Living trio tasks of the {TASK_NAMES} most numerous names.",
        labels=["name"],
    )
    for name, n in sorted(s.tasks_by_name.items()):
        by_name.add_metric([name], n)
    out.append(by_name)
    gauge("fusenas_threads_busy", "Tokens of trio's default thread limiter in use.", s.threads_busy)
    gauge("fusenas_threads_limit", "Size of trio's default thread limiter.", s.threads_limit)
    gauge(
        "fusenas_threads_waiting",
        "Tasks waiting for trio's default thread limiter.",
        s.threads_waiting,
    )

    # integrity (filled by scrub, rebuild and checksum repair)
    counter(
        "fusenas_checksum_errors_found",
        "Blocks whose checksum did not match.",
        s.checksum_errors_found,
    )
    counter(
        "fusenas_checksum_errors_repaired",
        "Member copies rewritten with good bytes from redundancy.",
        s.checksum_errors_repaired,
    )
    counter(
        "fusenas_checksum_errors_unrecoverable",
        "Blocks that no combination of members could produce (data lost).",
        s.checksum_errors_unrecoverable,
    )
    bad = CounterMetricFamily(
        "fusenas_member_bad_blocks",
        "Blocks found holding bad bytes, by member.",
        labels=["member"],
    )
    for i in range(len(s.member_paths)):
        bad.add_metric([str(i)], s.bad_blocks_by_member.get(i, 0))
    out.append(bad)
    prog = GaugeMetricFamily(
        "fusenas_progress_ratio",
        "Progress of a running rebuild or scrub (0..1); 0 when none runs.",
        labels=["kind"],
    )
    for kind in sorted({*PROGRESS_KINDS, *s.progress}):
        done, total = s.progress.get(kind, (0, 0))
        prog.add_metric([kind], done / total if total else 0.0)
    out.append(prog)
    return out


def _errno_name(err: int) -> str:
    import errno as errno_mod

    return errno_mod.errorcode.get(err, str(err))


def parse_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``[V6]:PORT`` or ``PORT`` (on 127.0.0.1) → ``(addr, port)``."""
    addr, sep, port = text.rpartition(":")
    if not sep:
        addr, port = "127.0.0.1", text
    addr = addr.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad port '{port}'")
    return addr, int(port)


class MetricsServer:
    """The Prometheus endpoint: prometheus_client's HTTP server in a daemon thread."""

    def __init__(self, monitor: Monitor, addr: str, port: int) -> None:
        from prometheus_client import start_http_server
        from prometheus_client.process_collector import ProcessCollector
        from prometheus_client.registry import CollectorRegistry

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        self.registry.register(FusenasCollector(monitor))
        ProcessCollector(registry=self.registry)
        self._httpd, self._thread = start_http_server(port, addr, self.registry)
        raw_host, bound = self._httpd.server_address[:2]
        host = raw_host.decode() if isinstance(raw_host, bytes) else str(raw_host)
        host = f"[{host}]" if ":" in host else host
        self.url = f"http://{host}:{bound}/metrics"
        monitor.metrics_url = self.url

    def close(self) -> None:
        """Stop serving (waits up to the server's 0.5 s poll) and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
