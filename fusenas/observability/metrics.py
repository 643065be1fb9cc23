"""The Prometheus endpoint: a ``Snapshot`` as metric families, and the HTTP server serving them.

``families(snapshot)`` renders one snapshot, one function per layer (volume, FUSE operations,
array, devices, stripe cache and ordered writes, journal, checkpoints, locks, tasks,
integrity); the names and their meaning are listed in docs/metrics.md and must not change
(dashboards and alert rules use them). Histograms: the layers count per bucket (each bucket
holds what is above the previous bound), Prometheus wants cumulative counts
(``cumulative``).

``MetricsServer`` runs prometheus_client's HTTP server in its own daemon thread. Each scrape
calls ``FusenasCollector.collect`` there, which takes one snapshot on the trio loop
(``Monitor.snapshot_from_thread``) and renders it off the loop; if the loop is gone
(shutdown) the scrape answers with process metrics only. ``serve_metrics`` is the context the
mount wiring (``fusenas.cli.mount``) holds it in.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator, Sequence

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from fusenas.engine.checkpointer import DURATION_BUCKETS
from fusenas.errors import FusenasError
from fusenas.fs.stats import HistogramSnapshot
from fusenas.logs import event
from fusenas.observability.snapshot import HOTTEST_SHARDS, TASK_NAMES, Monitor, Snapshot
from fusenas.wal.log import BATCH_BUCKETS

log = logging.getLogger(__name__)

#: The states every member slot reports (1 for its own, 0 for the others).
MEMBER_STATES = ("active", "faulty", "missing", "spare", "rebuilding")
#: The jobs whose progress is always reported (0 when none runs).
PROGRESS_KINDS = ("rebuild", "scrub")


def cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus buckets from per-bucket ``counts`` (one per bound, plus the overflow):
    ``(le, observations at most le)``, ending with ``+Inf``."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(bounds, counts, strict=False):
        running += n
        out.append((repr(float(bound)), running))
    out.append(("+Inf", running + sum(counts[len(bounds) :])))
    return out


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _histogram(
    name: str, doc: str, bounds: Sequence[float], counts: Sequence[int], total: float
) -> HistogramMetricFamily:
    """An unlabelled histogram."""
    fam = HistogramMetricFamily(name, doc)
    fam.add_metric([], cumulative(bounds, counts), total)
    return fam


def _add_histogram(fam: HistogramMetricFamily, labels: list[str], h: HistogramSnapshot) -> None:
    fam.add_metric(labels, cumulative(h.bounds, h.counts), h.total)


def _volume(s: Snapshot) -> list[Metric]:
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
    return [
        info,
        _gauge("fusenas_uptime_seconds", "Seconds since the daemon started.", s.uptime),
        _gauge("fusenas_volume_size_bytes", "Logical size of the volume.", s.size),
        _gauge("fusenas_readonly", "1 if mounted read-only.", float(s.readonly)),
    ]


def _fuse(s: Snapshot) -> list[Metric]:
    total = CounterMetricFamily(
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
    for name, op in sorted(s.ops.ops.items()):
        total.add_metric([name], op.count)
        _add_histogram(latency, [name], op.latency)
        for err, n in sorted(op.errors.items()):
            errors.add_metric([name, errno.errorcode.get(err, str(err))], n)
    return [
        total,
        errors,
        latency,
        _counter(
            "fusenas_logical_read_bytes", "Bytes returned by FUSE read requests.", s.ops.bytes_read
        ),
        _counter(
            "fusenas_logical_written_bytes",
            "Bytes accepted by FUSE write requests.",
            s.ops.bytes_written,
        ),
    ]


def _array(s: Snapshot) -> list[Metric]:
    state = StateSetMetricFamily(
        "fusenas_member_state", "State of each member slot.", labels=["member", "device"]
    )
    read = CounterMetricFamily(
        "fusenas_member_read_bytes", "Bytes read from each member's data area.", labels=["member"]
    )
    written = CounterMetricFamily(
        "fusenas_member_written_bytes",
        "Bytes written to each member's data area.",
        labels=["member"],
    )
    for m in s.members:
        # A state outside MEMBER_STATES still shows, as a state of its own.
        states = MEMBER_STATES if m.state in MEMBER_STATES else (*MEMBER_STATES, m.state)
        state.add_metric([str(m.slot), m.path], {k: k == m.state for k in states})
        read.add_metric([str(m.slot)], m.bytes_read)
        written.add_metric([str(m.slot)], m.bytes_written)
    slots = len(s.members)
    return [
        state,
        read,
        written,
        _gauge("fusenas_array_members", "Member slots of the array.", slots),
        _gauge("fusenas_array_active_members", "Members in the active state.", s.active_members),
        _gauge(
            "fusenas_array_degraded",
            "1 if some member is not active.",
            float(s.active_members < slots),
        ),
        _gauge(
            "fusenas_array_usable",
            "1 while no data is lost (failures within what the level tolerates).",
            float(s.usable),
        ),
    ]


def _devices(s: Snapshot) -> list[Metric]:
    latency = HistogramMetricFamily(
        "fusenas_device_io_seconds", "Latency of device calls.", labels=["device", "op"]
    )
    in_flight = GaugeMetricFamily(
        "fusenas_device_io_in_flight",
        "Device calls issued and not finished (waiting for a thread or running).",
        labels=["device"],
    )
    slow = CounterMetricFamily(
        "fusenas_device_slow_io",
        "Device calls slower than the slow-I/O threshold.",
        labels=["device"],
    )
    errors = CounterMetricFamily(
        "fusenas_device_io_errors", "Device calls that failed.", labels=["device", "op"]
    )
    read = CounterMetricFamily(
        "fusenas_device_read_bytes", "Bytes read from the device.", labels=["device"]
    )
    written = CounterMetricFamily(
        "fusenas_device_written_bytes", "Bytes written to the device.", labels=["device"]
    )
    for d in sorted(s.devices, key=lambda d: d.name):
        for kind, h in d.latency.items():
            _add_histogram(latency, [d.name, kind], h)
        in_flight.add_metric([d.name], d.in_flight)
        slow.add_metric([d.name], d.slow)
        read.add_metric([d.name], d.bytes_read)
        written.add_metric([d.name], d.bytes_written)
        for kind, n in sorted(d.errors.items()):
            errors.add_metric([d.name, kind], n)
    return [latency, in_flight, slow, errors, read, written]


def _cache(s: Snapshot) -> list[Metric]:
    c, o = s.cache, s.ordered
    strategy = CounterMetricFamily(
        "fusenas_cache_stripe_writes",
        "Stripe flushes by write strategy: full stripe, read-modify-write, reconstruct-write, "
        "degraded.",
        labels=["strategy"],
    )
    strategy.add_metric(["full"], c.full_stripe_writes)
    strategy.add_metric(["rmw"], c.rmw_writes)
    strategy.add_metric(["rcw"], c.rcw_writes)
    strategy.add_metric(["degraded"], c.degraded_writes)
    return [
        _gauge(
            "fusenas_cache_dirty_stripes",
            "Stripes with data not yet written in place.",
            c.dirty_stripes,
        ),
        _gauge(
            "fusenas_cache_dirty_bytes", "Bytes of dirty blocks in the stripe cache.", c.dirty_bytes
        ),
        _gauge(
            "fusenas_cache_flushing_stripes",
            "Stripes being written in place now.",
            c.flushing_stripes,
        ),
        _counter(
            "fusenas_cache_writes", "Block-aligned writes that entered the stripe cache.", c.writes
        ),
        _counter(
            "fusenas_cache_stripes_flushed",
            "Stripe flushes (one per stripe written in place).",
            c.stripes_flushed,
        ),
        _counter(
            "fusenas_cache_blocks_flushed",
            "Dirty 4 KiB blocks written in place by stripe flushes.",
            round(c.blocks_per_flush * c.stripes_flushed),
        ),
        _gauge(
            "fusenas_cache_blocks_per_flush",
            "Average dirty blocks merged into one stripe flush since mount.",
            c.blocks_per_flush,
        ),
        strategy,
        _counter(
            "fusenas_ordered_writes",
            "Writes of whole fresh stripes in place without a journal record.",
            o.ordered_writes,
        ),
        _counter(
            "fusenas_ordered_stripes",
            "Stripes written in place by ordered writes.",
            o.ordered_stripes,
        ),
    ]


def _wal(s: Snapshot) -> list[Metric]:
    w = s.wal
    out: list[Metric] = [
        _counter("fusenas_wal_appends", "Records appended to the journal.", w.appends),
        _counter(
            "fusenas_wal_commits",
            "Group commits: journal writes + fdatasync by a commit leader.",
            w.commits,
        ),
        _counter(
            "fusenas_wal_records_committed",
            "Records made durable (sum of group-commit batch sizes).",
            w.records_committed,
        ),
        _gauge(
            "fusenas_wal_last_commit_records",
            "Records in the last group-commit batch.",
            w.records_last_commit,
        ),
        _counter(
            "fusenas_wal_written_bytes", "Bytes written to the journal device.", w.bytes_written
        ),
        _gauge(
            "fusenas_wal_used_bytes",
            "Journal bytes holding records not yet reclaimed.",
            w.used_bytes,
        ),
        _gauge(
            "fusenas_wal_pending_bytes", "Bytes appended and not yet committed.", w.pending_bytes
        ),
        _gauge("fusenas_wal_capacity_bytes", "Bytes of the journal's record area.", w.capacity),
        _gauge(
            "fusenas_wal_fill_ratio",
            "used / capacity.",
            w.used_bytes / w.capacity if w.capacity else 0.0,
        ),
        _gauge(
            "fusenas_wal_waiting_for_room",
            "Tasks waiting for journal space (backpressure).",
            w.waiting_for_room,
        ),
        _gauge(
            "fusenas_wal_durable_lsn", "Newest durable log sequence number.", int(w.durable_lsn)
        ),
        _gauge("fusenas_wal_last_lsn", "Newest appended log sequence number.", int(w.last_lsn)),
    ]
    if w.batch_histogram:
        out.append(
            _histogram(
                "fusenas_wal_commit_batch_records",
                "Records made durable per journal flush (group commit batch size).",
                BATCH_BUCKETS,
                w.batch_histogram,
                w.records_committed,
            )
        )
    return out


def _checkpoints(s: Snapshot) -> list[Metric]:
    ck = s.checkpoints
    return [
        _histogram(
            "fusenas_checkpoint_seconds",
            "Duration of checkpoints (flush, image, slot header).",
            DURATION_BUCKETS,
            ck.buckets,
            ck.seconds_total,
        ),
        _counter(
            "fusenas_checkpoint_failures",
            "Checkpoints that did not complete (the journal keeps everything).",
            ck.failed,
        ),
        _gauge(
            "fusenas_checkpoint_image_bytes",
            "Size of the metadata image of the last checkpoint.",
            ck.last_image_bytes,
        ),
    ]


def _locks(s: Snapshot) -> list[Metric]:
    lk = s.locks
    hot_wait = CounterMetricFamily(
        "fusenas_lock_shard_wait_seconds",
        f"Total wait on each of the {HOTTEST_SHARDS} most contended shards.",
        labels=["shard"],
    )
    hot_contended = CounterMetricFamily(
        "fusenas_lock_shard_contended",
        f"Contended acquisitions of each of the {HOTTEST_SHARDS} most contended shards.",
        labels=["shard"],
    )
    for h in lk.hottest(HOTTEST_SHARDS):
        hot_wait.add_metric([str(h.shard)], h.wait_total)
        hot_contended.add_metric([str(h.shard)], h.contended)
    return [
        _histogram(
            "fusenas_lock_wait_seconds",
            "Wait for a lock shard, every acquisition one observation (uncontended = 0).",
            lk.bucket_bounds,
            lk.wait_histogram,
            lk.wait_total,
        ),
        _counter("fusenas_lock_acquisitions", "Lock shard acquisitions.", lk.acquisitions),
        _counter("fusenas_lock_contended", "Acquisitions that had to queue.", lk.contended),
        _gauge(
            "fusenas_lock_wait_max_seconds",
            "Longest single wait for a shard since mount.",
            lk.wait_max,
        ),
        _gauge("fusenas_lock_tasks_waiting", "Tasks queued on some shard now.", lk.tasks_waiting),
        _gauge("fusenas_lock_grants_held", "Lock grants held now.", lk.grants_held),
        hot_wait,
        hot_contended,
    ]


def _tasks(s: Snapshot) -> list[Metric]:
    t = s.tasks
    by_name = GaugeMetricFamily(
        "fusenas_trio_tasks_by_name",
        f"Living trio tasks of the {TASK_NAMES} most numerous names.",
        labels=["name"],
    )
    for name, n in sorted(t.by_name.items()):
        by_name.add_metric([name], n)
    return [
        _gauge(
            "fusenas_trio_tasks", "Living trio tasks (a steady climb is a task leak).", t.living
        ),
        _gauge(
            "fusenas_trio_tasks_runnable",
            "Trio tasks ready to run (event-loop backlog).",
            t.runnable,
        ),
        by_name,
        _gauge(
            "fusenas_threads_busy",
            "Tokens of trio's default thread limiter in use.",
            t.threads_busy,
        ),
        _gauge("fusenas_threads_limit", "Size of trio's default thread limiter.", t.threads_limit),
        _gauge(
            "fusenas_threads_waiting",
            "Tasks waiting for trio's default thread limiter.",
            t.threads_waiting,
        ),
    ]


def _integrity(s: Snapshot) -> list[Metric]:
    i = s.integrity
    bad = CounterMetricFamily(
        "fusenas_member_bad_blocks",
        "Blocks found holding bad bytes, by member.",
        labels=["member"],
    )
    for m in s.members:
        bad.add_metric([str(m.slot)], m.bad_blocks)
    progress = GaugeMetricFamily(
        "fusenas_progress_ratio",
        "Progress of a running rebuild or scrub (0..1); 0 when none runs.",
        labels=["kind"],
    )
    for kind in sorted({*PROGRESS_KINDS, *i.progress}):
        done, total = i.progress.get(kind, (0, 0))
        progress.add_metric([kind], done / total if total else 0.0)
    return [
        _counter(
            "fusenas_checksum_errors_found",
            "Blocks whose checksum did not match, on a read or in a scrub.",
            i.checksum_errors_found,
        ),
        _counter(
            "fusenas_checksum_errors_repaired",
            "Member copies rewritten with good bytes from redundancy.",
            i.checksum_errors_repaired,
        ),
        _counter(
            "fusenas_checksum_errors_unrecoverable",
            "Blocks that no combination of members could produce (data lost).",
            i.checksum_errors_unrecoverable,
        ),
        bad,
        progress,
    ]


def families(s: Snapshot) -> list[Metric]:
    """The metric families of a snapshot (names and meanings: docs/metrics.md)."""
    return [
        *_volume(s),
        *_fuse(s),
        *_array(s),
        *_devices(s),
        *_cache(s),
        *_wal(s),
        *_checkpoints(s),
        *_locks(s),
        *_tasks(s),
        *_integrity(s),
    ]


class FusenasCollector(Collector):
    """A prometheus_client collector that renders one ``Snapshot`` per scrape."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        s = self.monitor.snapshot_from_thread()
        return iter(families(s) if s is not None else ())


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
    """The Prometheus endpoint: prometheus_client's HTTP server in a daemon thread, serving
    ``monitor``'s snapshots and the process metrics. Sets ``monitor.metrics_url``."""

    def __init__(self, monitor: Monitor, addr: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
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


@contextlib.contextmanager
def serve_metrics(monitor: Monitor, address: tuple[str, int] | None) -> Iterator[None]:
    """Serve ``monitor`` on ``address`` (``-o metrics=``; None: not at all) for the duration
    of the block. ``FusenasError`` if the address cannot be bound."""
    if address is None:
        yield
        return
    try:
        server = MetricsServer(monitor, *address)
    except OSError as exc:
        raise FusenasError(
            f"cannot serve metrics on {address[0]}:{address[1]}: {exc.strerror}"
        ) from None
    event(log, logging.INFO, "metrics", f"metrics on {server.url}", url=server.url)
    try:
        yield
    finally:
        server.close()
