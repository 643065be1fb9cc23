"""The state of a mounted volume at one instant: ``Monitor.snapshot()`` → ``Snapshot``.

Every Prometheus scrape and every live status report is rendered from one ``Snapshot``, so the
values of one scrape belong together (``fusenas_fuse_operation_seconds_count{op}`` always
equals ``fusenas_fuse_operations_total{op}``).

Where the values come from
    Only the layers' own counters are read, never recomputed here: the frozen
    ``statistics()`` records of ``WriteAheadLog``, ``StripeCache``, ``LockShardTable``,
    ``Checkpointer`` (``Engine.checkpointer``), ``DataBlocks`` (``Engine.blocks``, ordered
    writes), ``OperationStats`` (the FUSE adapter) and ``DeviceTimings`` (device calls), and the
    public attributes of ``Array`` (member states, bytes per member, ``heal``) and ``Engine``
    (``integrity``, ``readonly``, ``failed_readonly``).

Checksum errors (each one counted once)
    A block failing its crc32c is found either by a read (``DataBlocks.heal`` counts it in
    ``Array.heal.checksum_mismatches``) or by scrub (``Engine.integrity.checksum_errors_found``);
    scrub heals through ``Array.read_verified`` directly, not ``DataBlocks.heal``, so the two
    counts are disjoint and ``checksum_errors_found`` is their sum. Repairs are counted by the
    array for both (``Array.heal.repaired``: member copies rewritten), so scrub's own count of
    repaired blocks is not added to it.

Threads
    Everything is counted on the trio thread and ``snapshot`` must run there (trio's run
    statistics can only be read on the loop). The Prometheus server's thread calls
    ``snapshot_from_thread``, which hops onto the loop (``trio.from_thread.run_sync``); once
    the loop is gone (shutdown) it gets None.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from fusenas.fs.stats import OperationStatistics, OperationStats
from fusenas.observability.devices import (
    SLOW_IO_SECONDS,
    DeviceSnapshot,
    DeviceTimings,
    TimedProvider,
)

if TYPE_CHECKING:
    from fusenas.engine import Engine
    from fusenas.engine.blocks import OrderedWriteStatistics
    from fusenas.engine.checkpointer import CheckpointStatistics
    from fusenas.meta.locks import LockTableStatistics
    from fusenas.stripe.cache import CacheStatistics
    from fusenas.volume.device import DeviceProvider
    from fusenas.wal.log import WalStatistics

#: How many of the most contended lock shards are shown one by one.
HOTTEST_SHARDS = 8
#: How many task names are shown with their count (the most numerous).
TASK_NAMES = 20


@dataclass(frozen=True)
class MemberSnapshot:
    """One member slot: its device, state (``MemberState`` name, lower case), data-area bytes
    since the mount and blocks found bad on it (self-heal)."""

    slot: int
    path: str
    state: str
    size: int | None
    bytes_read: int
    bytes_written: int
    bad_blocks: int


@dataclass(frozen=True)
class IntegritySnapshot:
    """Checksum errors since the mount (module docstring) and the progress of the running
    jobs: ``progress[kind]`` = ``(done, total)`` bytes of a ``"rebuild"`` or ``"scrub"``."""

    checksum_errors_found: int
    checksum_errors_repaired: int
    checksum_errors_unrecoverable: int
    progress: Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class TaskSnapshot:
    """trio's tasks (``current_statistics``, the task tree walked by name) and its default
    thread limiter."""

    living: int
    runnable: int
    by_name: Mapping[str, int]
    threads_busy: int
    threads_limit: float
    threads_waiting: int


@dataclass(frozen=True)
class Snapshot:
    """Everything a scrape or a live status report shows, taken at one instant."""

    taken: float
    uptime: float
    pid: int
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
    readonly: bool
    #: Why the volume turned read-only while running (fault handling), or None.
    failed_readonly: str | None
    usable: bool
    members: tuple[MemberSnapshot, ...]
    wal: WalStatistics
    cache: CacheStatistics
    ordered: OrderedWriteStatistics
    checkpoints: CheckpointStatistics
    locks: LockTableStatistics
    ops: OperationStatistics
    devices: tuple[DeviceSnapshot, ...]
    tasks: TaskSnapshot
    integrity: IntegritySnapshot

    @property
    def active_members(self) -> int:
        return sum(m.state == "active" for m in self.members)


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
    """Reads one mounted volume's counters into ``Snapshot``s; owns the device timing.

    Built before the volume opens (``provider`` wraps the devices ``open_volume`` opens), then
    ``attach``ed to the open volume and the FUSE adapter's counters.
    """

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
        self.started = clock()
        self._clock = clock
        self.timings = DeviceTimings(slow_io=slow_io, clock=clock)
        self.vol: Engine | None = None
        self.ops = OperationStats()
        #: Where the Prometheus endpoint answers (set by ``MetricsServer``), or None.
        self.metrics_url: str | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    def provider(self, inner: DeviceProvider) -> TimedProvider:
        """``inner`` with every device it opens timed (``DeviceTimings``)."""
        return self.timings.provider(inner)

    def attach(self, vol: Engine, ops: OperationStats | None = None) -> None:
        """Watch ``vol`` (and the FUSE operation counters ``ops``). Call on the trio thread."""
        self.vol = vol
        if ops is not None:
            self.ops = ops
        self._token = trio.lowlevel.current_trio_token()

    def snapshot(self) -> Snapshot:
        """Read every counter at one instant. Call on the trio thread."""
        vol = self.vol
        if vol is None:
            raise RuntimeError("no volume attached")
        array = vol.members.array
        g = array.geometry
        tpl = vol.members.template
        heal = array.heal
        run = trio.lowlevel.current_statistics()
        threads = trio.to_thread.current_default_thread_limiter().statistics()
        members = tuple(
            MemberSnapshot(
                slot=i,
                path=str(path),
                state=array.states[i].name.lower(),
                size=dev.size if dev is not None else None,
                bytes_read=array.bytes_read[i],
                bytes_written=array.bytes_written[i],
                bad_blocks=heal.bad_by_member.get(i, 0),
            )
            for i, (path, dev) in enumerate(zip(vol.members.paths, array.devices, strict=True))
        )
        return Snapshot(
            taken=time.time(),
            uptime=self._clock() - self.started,
            pid=os.getpid(),
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
            readonly=vol.readonly,
            failed_readonly=vol.failed_readonly,
            usable=array.usable,
            members=members,
            wal=vol.wal.statistics(),
            cache=vol.cache.statistics(),
            ordered=vol.blocks.statistics(),
            checkpoints=vol.checkpointer.statistics(),
            locks=vol.locks.statistics(),
            ops=self.ops.statistics(),
            devices=self.timings.statistics(),
            tasks=TaskSnapshot(
                living=run.tasks_living,
                runnable=run.tasks_runnable,
                by_name=dict(_task_names().most_common(TASK_NAMES)),
                threads_busy=threads.borrowed_tokens,
                threads_limit=threads.total_tokens,
                threads_waiting=threads.tasks_waiting,
            ),
            integrity=IntegritySnapshot(
                checksum_errors_found=heal.checksum_mismatches
                + vol.integrity.checksum_errors_found,
                checksum_errors_repaired=heal.repaired,
                checksum_errors_unrecoverable=heal.unrecoverable,
                progress=dict(vol.integrity.progress),
            ),
        )

    def snapshot_from_thread(self) -> Snapshot | None:
        """``snapshot`` taken on the trio loop from another thread; None once it is gone."""
        if self._token is None:
            return None
        try:
            return trio.from_thread.run_sync(self.snapshot, trio_token=self._token)
        except (trio.RunFinishedError, RuntimeError):
            return None
