"""Engine: one open fusenas volume — members, journal, checkpoints, metadata and stripe cache,
wired — and the policy that spans them.

``fusenas.engine.open.open_volume`` builds it (recovery) and closes it; this module holds what
runs while it is open:

member failure (``Array.fail_member`` → ``Engine._on_member_failure``, synchronous)
    marks a superblock update pending and wakes the updater task, which writes the new member
    states to the surviving members (events + 1). A checkpoint never completes while an update
    is pending: the checkpoint reclaims the log window that covers the writes the failed
    member missed, so the failure must be on record first. If the failures exceed what the
    level tolerates, the volume turns read-only (one error line): writes and metadata changes
    get EROFS, reads of surviving data keep working, nothing more is written in place or
    checkpointed, and the journal keeps everything fsynced for the next mount.

The floors above see the engine through a few names: ``meta`` and ``locks`` (the namespace),
``blocks`` (the data area, ``DataBlocks``), ``reserve_meta`` (backpressure and EROFS before
every change) and ``sync`` (fsync). Only the engine's own jobs (rebuild, spares, scrub) and the
observability floor look at ``members`` and ``array``.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from fusenas.engine.blocks import DataBlocks
from fusenas.engine.checkpointer import Checkpointer
from fusenas.engine.config import VolumeConfig
from fusenas.engine.metatree import MetadataTree
from fusenas.errors import DataLostError, FsError
from fusenas.meta.locks import LockShardTable
from fusenas.meta.store import MetadataStore
from fusenas.stripe.cache import StripeCache
from fusenas.volume.array import Array
from fusenas.volume.assemble import ArrayMembers
from fusenas.volume.bitmap import WriteIntentBitmap
from fusenas.volume.device import DeviceProvider
from fusenas.volume.superblock import ArrayState, MemberState
from fusenas.wal.checkpoint import CheckpointRegions
from fusenas.wal.format import LogPosition
from fusenas.wal.log import WriteAheadLog

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Room reserved in the log before a metadata operation, bytes (ops are far smaller).
META_RESERVE = 1 << 16


class MemberJobs(Protocol):
    """What the engine's member jobs (``replace``, ``add_spare``) ask of the running spare
    manager (``fusenas.engine.spares.SpareManager``): the device provider the volume was
    opened with, the member it is rebuilding, the members others work on (``busy``: it keeps
    its hands off them), and a wake-up after a change."""

    provider: DeviceProvider
    rebuilding: int | None
    busy: set[int]

    def wake(self) -> None: ...


@dataclass
class IntegrityCounters:
    """What the engine's jobs report beyond the array's own counters (``Array.heal`` counts
    every checksum mismatch a read heals through ``DataBlocks.heal``, and every repair):
    checksum mismatches found by scrub, which reads around ``DataBlocks``, and the progress
    of running jobs: ``progress[kind]`` is ``(done, total)`` bytes of a running
    ``"rebuild"`` or ``"scrub"``, removed when the job ends. Touched from the trio thread
    only."""

    checksum_errors_found: int = 0
    progress: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class Engine:
    """One open volume (see the module docstring). Offsets handed to ``cache`` are logical;
    file blocks start at ``blocks.data_start``."""

    voldir: Path
    config: VolumeConfig
    members: ArrayMembers
    wal: WriteAheadLog
    checkpoints: CheckpointRegions
    meta: MetadataStore
    cache: StripeCache
    locks: LockShardTable
    blocks: DataBlocks
    readonly: bool
    notes: list[str]
    #: Log position of the checkpoint the volume opened from (the older live checkpoint).
    previous_start: InitVar[LogPosition | None]
    checkpointer: Checkpointer = field(init=False)
    #: Why the volume turned read-only while running (None while healthy).
    failed_readonly: str | None = None
    integrity: IntegrityCounters = field(default_factory=IntegrityCounters)
    #: Called (synchronously) after every member failure, once recorded: spares, metrics.
    failure_listeners: list[Callable[[int, str], None]] = field(default_factory=list)
    spare_manager: MemberJobs | None = None
    #: Members found back at open (recorded failed or missing, device present): member →
    #: True if the write-intent bitmap allows a resync of its dirty regions only, False for
    #: a full rebuild. The spare manager re-adds them (``rebuild.readd_member``).
    returning: dict[int, bool] = field(default_factory=dict)
    #: Metadata on pages (None: the v1 image in memory); ``run_meta`` loads its pages.
    metadata_tree: MetadataTree | None = None
    _sb_pending: bool = False
    _fatal: set[int] = field(default_factory=set)
    _sb_lock: trio.Lock = field(default_factory=trio.Lock)
    _sb_wake: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self, previous_start: LogPosition | None) -> None:
        self.blocks.writable = not self.readonly
        self.checkpointer = Checkpointer(
            regions=self.checkpoints,
            wal=self.wal,
            meta=self.meta,
            cache=self.cache,
            array=self.array,
            record_member_states=self.update_superblocks,
            failed=lambda: self.failed_readonly is not None,
            previous_start=previous_start,
        )

    @property
    def array(self) -> Array:
        return self.members.array

    @property
    def bitmap(self) -> WriteIntentBitmap | None:
        """The write-intent bitmap (``attach_bitmap``; None for RAID0 and read-only opens)."""
        return self.members.bitmap

    def attach_bitmap(self, bitmap: WriteIntentBitmap) -> None:
        """From now on every member write sets its region's bit first, superblock updates
        keep its events counter, and checkpoints clear the bits of regions in sync."""
        self.members.bitmap = bitmap
        self.array.write_intent = bitmap
        self.checkpointer.bitmap = bitmap

    # -- member failures and read-only -------------------------------------------------------

    def _on_member_failure(self, member: int, reason: str) -> None:
        """``Array.failure_hooks`` entry: schedule the superblock update; go read-only if the
        level no longer covers the failures. Never raises, never blocks."""
        self.request_superblock_update()
        array = self.array
        if not array.usable:
            self._fatal.add(member)
            self._go_readonly(
                f"members {', '.join(map(str, array.failed_members))} of "
                f"{array.geometry.members} failed, more than "
                f"{array.geometry.level.name} tolerates"
            )
        for listener in self.failure_listeners:
            listener(member, reason)

    def _go_readonly(self, reason: str) -> None:
        """Switch to read-only after data became unreachable (once, one log line)."""
        if self.failed_readonly is not None:
            return
        self.failed_readonly = reason
        self.readonly = True
        self.blocks.writable = False
        log.error(
            "volume %s is now READ-ONLY: %s; fsynced data is kept in the journal, "
            "reads of surviving data still work",
            self.voldir,
            reason,
        )

    def request_superblock_update(self) -> None:
        """Member states changed: the updater task records them (``update_superblocks``)."""
        self._sb_pending = True
        self._sb_wake.set()

    async def update_superblocks(self) -> None:
        """Write pending member-state changes to the superblocks (idempotent, serialized).
        Returns once no update is pending or one is in flight no more."""
        async with self._sb_lock:
            while self._sb_pending and not (self.readonly and self.failed_readonly is None):
                self._sb_pending = False
                # The failures past the level's tolerance are not recorded: nothing is written
                # in place after them, so once those members are back the next mount replays
                # the journal over them instead of refusing a failed array.
                recorded = [
                    MemberState.ACTIVE if i in self._fatal else s
                    for i, s in enumerate(self.array.states)
                ]
                await self.members.commit_superblocks(ArrayState.DIRTY, recorded=recorded)

    async def commit_superblocks(
        self,
        state: ArrayState | None = None,
        *,
        recovery_offset: int | None = None,
        settle: bool = False,
    ) -> None:
        """Write the current member states (and ``recovery_offset``, member bytes, if given)
        to every superblock, serialized with the updater; ``state`` defaults to the recorded
        one. ``settle``: this write records every pending change (open and close), so no
        update is pending afterwards."""
        members = self.members
        async with self._sb_lock:
            if recovery_offset is not None:
                members.template = members.template.with_(recovery_offset=recovery_offset)
            if settle:
                self._sb_pending = False
            await members.commit_superblocks(state if state is not None else members.template.state)

    async def run_superblock_updater(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Background task: commits superblock updates as soon as a failure is recorded."""
        task_status.started()
        while True:
            await self._sb_wake.wait()
            self._sb_wake = trio.Event()
            with trio.CancelScope(shield=True):
                await self.update_superblocks()

    async def run_cache(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The stripe cache's flusher; when the array loses data it stops (read-only)."""
        try:
            await self.cache.run(task_status=task_status)
        except* DataLostError as group:
            self._go_readonly(str(group.exceptions[0]))
            await trio.sleep_forever()

    async def run_checkpointer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The checkpointer's loop (``Checkpointer.run``) at the cache's flush age."""
        await self.checkpointer.run(max_age=self.cache.max_age, task_status=task_status)

    # -- what the floors above call ------------------------------------------------------------

    async def reserve_meta(self) -> None:
        """Wait until the log has room for a metadata operation (backpressure).

        Every change passes here first: ``FsError(EROFS)`` once the volume is read-only."""
        if self.failed_readonly is not None:
            raise FsError(errno.EROFS, f"volume is read-only: {self.failed_readonly}")
        await self.wal.reserve(META_RESERVE)

    async def run_meta(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a synchronous metadata call; on pages, load the page it missed and run it
        again (``MetadataTree.run``). In memory: one call, no schedule point."""
        if self.metadata_tree is None:
            return fn(*args, **kw)
        return await self.metadata_tree.run(fn, *args, **kw)

    async def sync(self) -> None:
        """Make everything done so far durable (fsync): one group commit of the WAL."""
        await self.wal.commit()

    async def checkpoint(self) -> None:
        """Write a checkpoint now (``Checkpointer.checkpoint``)."""
        await self.checkpointer.checkpoint()
