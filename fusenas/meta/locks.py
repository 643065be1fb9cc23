"""LockShardTable: a fixed table of shared/exclusive locks indexed by a hash of the key.

Design note (read before the code)
==================================

What it is
    ``shard_count`` readers-writer locks ("shards"), fixed at construction. A key (an inode
    number, or bytes) maps to exactly one shard through :meth:`LockShardTable.shard_of`: a
    64-bit hash (Fibonacci multiplicative hashing for ints, an 8-byte BLAKE2b digest for
    bytes), scaled to the table by its high bits (``h * shard_count >> 64``). The mapping is
    the same in every process, and consecutive inode numbers land in different shards almost
    perfectly evenly (the multiplier walks the golden-ratio sequence). Different keys may share
    a shard; that only costs concurrency, never correctness.

Lock order (why nothing deadlocks)
    One call (:meth:`~LockShardTable.acquire`, :meth:`~LockShardTable.acquire_nowait`, or the
    ``exclusive`` / ``shared`` / ``lock`` context managers) names *every* key of an operation
    (rename, link, ...). The call maps them to their distinct shards, resolves a shard wanted
    in both modes to exclusive, and takes the shards in **ascending shard index**, holding the
    lower ones while it waits for a higher one. Since every holder waits only for a shard above
    all the shards it holds, no cycle of waiters can form. Release goes in reverse order.

    The ordering argument holds only if a task never waits for a shard while holding shards
    from an *earlier* call. Hence the table is **not reentrant**, and stricter than that: a task
    that holds a grant from this table may not acquire another one (``RuntimeError``; it is a
    bug that would otherwise be a rare deadlock, since two of its keys may hash to one shard).
    Take all keys in one call; if a wait reveals that more keys are needed, release, re-acquire
    the full set in one call, and re-check state ("removed while we waited").

    Not detected: a task that holds shards and waits for another task that wants them.

Per-shard state and transitions
    ``readers`` (number of shared holders), ``writer`` (an exclusive holder exists) and a FIFO
    queue of waiters. Invariants: ``writer`` implies ``readers == 0``; a waiter is queued only
    while it could not be granted when it arrived or something ahead of it is queued.

    * A request is granted on arrival only if it is compatible with the holders **and** the
      queue is empty: a reader arriving behind a queued writer queues too (writer preference,
      no barging), so a stream of readers cannot starve a writer, and FIFO order means writers
      cannot starve readers either.
    * On release, and when a queued waiter is cancelled, the queue head is granted: one writer
      if the shard is free, or the run of consecutive readers at the head if no writer holds it.
      Ownership is *handed off*: the releaser updates ``readers``/``writer`` and reschedules the
      waiter, so nobody can slip in between.

Cancellation
    :meth:`~LockShardTable.acquire` is a trio checkpoint. If it raises ``Cancelled`` the caller
    holds nothing: shards this call had already taken are released (synchronously, so no shield
    is needed) before ``Cancelled`` propagates, and a waiter removed from a queue lets the
    waiters behind it proceed if they now can. :meth:`~LockShardTable.release` is synchronous
    and cannot be cancelled. State lives in memory only; a crash leaves nothing behind.

Wait-time accounting (seconds, from ``trio.current_time()``)
    Per shard: acquisitions, acquisitions that had to queue ("contended"), total and maximum
    wait, and a histogram over :data:`WAIT_BUCKETS` in which every acquisition is one
    observation (uncontended ones as 0.0), so ``sum(histogram) == acquisitions`` and the
    total is the histogram's sum, as Prometheus expects. A wait runs from queueing on the
    shard to resuming with it held. Cancelled waits are not counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Final

import trio
from trio.lowlevel import Task

__all__ = [
    "DEFAULT_SHARD_COUNT",
    "WAIT_BUCKETS",
    "Key",
    "LockContext",
    "LockGrant",
    "LockMode",
    "LockShardTable",
    "LockTableStatistics",
    "ShardStatistics",
]

#: What a lock key may be: an inode number or an opaque byte string (e.g. a name hash).
Key = int | bytes

DEFAULT_SHARD_COUNT: Final = 256

#: Upper bounds (seconds, inclusive) of the wait-time histogram buckets. A histogram has
#: ``len(WAIT_BUCKETS) + 1`` counts; the last one counts waits longer than ``WAIT_BUCKETS[-1]``.
WAIT_BUCKETS: Final[tuple[float, ...]] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)

_MASK64: Final = (1 << 64) - 1


#: 2**64 / golden ratio, odd: Fibonacci hashing's multiplier (Knuth, TAOCP 6.4).
_FIBONACCI: Final = 0x9E3779B97F4A7C15


class LockMode(Enum):
    SHARED = "shared"
    EXCLUSIVE = "exclusive"


@dataclass(frozen=True, slots=True, eq=False)
class LockGrant:
    """What one successful acquire holds: ``(shard, mode)`` pairs in ascending shard order.

    A grant is a token (compared by identity): pass the very object to
    :meth:`LockShardTable.release`, from the task that acquired it.
    """

    held: tuple[tuple[int, LockMode], ...]

    @property
    def shards(self) -> tuple[int, ...]:
        return tuple(shard for shard, _ in self.held)


@dataclass(frozen=True, slots=True)
class ShardStatistics:
    """One shard's counters and current state. Times in seconds."""

    shard: int
    acquisitions: int
    #: Acquisitions that had to queue (their wait may still be 0.0 under a fake clock).
    contended: int
    wait_total: float
    wait_max: float
    #: Counts per :data:`WAIT_BUCKETS` bucket, plus one overflow count at the end.
    wait_histogram: tuple[int, ...]
    readers: int
    writer: bool
    tasks_waiting: int


@dataclass(frozen=True, slots=True)
class LockTableStatistics:
    """A snapshot of the whole table: totals over all shards, and every shard's record."""

    shard_count: int
    acquisitions: int
    contended: int
    wait_total: float
    wait_max: float
    wait_histogram: tuple[int, ...]
    bucket_bounds: tuple[float, ...]
    #: Tasks queued on some shard right now.
    tasks_waiting: int
    #: Grants currently outstanding (one per holding task).
    grants_held: int
    shards: tuple[ShardStatistics, ...]

    def hottest(self, n: int) -> tuple[ShardStatistics, ...]:
        """The (at most) ``n`` shards with the most total wait, most first.

        Shards that never had to wait are left out; ties go to more contended acquisitions,
        then to the lower shard index.
        """
        waited = [s for s in self.shards if s.contended]
        waited.sort(key=lambda s: (-s.wait_total, -s.contended, s.shard))
        return tuple(waited[: max(n, 0)])


class _Waiter:
    __slots__ = ("exclusive", "task")

    def __init__(self, task: Task, exclusive: bool) -> None:
        self.task = task
        self.exclusive = exclusive


class _Shard:
    """One readers-writer lock plus its counters. All methods are synchronous."""

    __slots__ = (
        "acquisitions",
        "contended",
        "histogram",
        "readers",
        "wait_max",
        "wait_total",
        "waiters",
        "writer",
    )

    def __init__(self) -> None:
        self.readers = 0
        self.writer = False
        # FIFO queue; a dict gives O(1) removal of a cancelled waiter while keeping order.
        self.waiters: dict[_Waiter, None] = {}
        self.acquisitions = 0
        self.contended = 0
        self.wait_total = 0.0
        self.wait_max = 0.0
        self.histogram = [0] * (len(WAIT_BUCKETS) + 1)

    def can_take_now(self, exclusive: bool) -> bool:
        if self.waiters or self.writer:
            return False
        return not exclusive or self.readers == 0

    def take(self, exclusive: bool) -> None:
        if exclusive:
            self.writer = True
        else:
            self.readers += 1

    def release(self, exclusive: bool) -> None:
        if exclusive:
            assert self.writer, "exclusive release of a shard not held exclusive"
            self.writer = False
        else:
            assert self.readers > 0, "shared release of a shard with no readers"
            self.readers -= 1
        self.grant_waiters()

    def grant_waiters(self) -> None:
        """Hand the shard to the queue head: one writer, or the run of readers at the head."""
        while self.waiters and not self.writer:
            head = next(iter(self.waiters))
            if head.exclusive:
                if self.readers:
                    return
                self.writer = True
            else:
                self.readers += 1
            del self.waiters[head]
            trio.lowlevel.reschedule(head.task)

    def record(self, waited: float, contended: bool) -> None:
        self.acquisitions += 1
        if contended:
            self.contended += 1
            self.wait_total += waited
            self.wait_max = max(self.wait_max, waited)
        for i, bound in enumerate(WAIT_BUCKETS):
            if waited <= bound:
                self.histogram[i] += 1
                return
        self.histogram[-1] += 1

    def statistics(self, index: int) -> ShardStatistics:
        return ShardStatistics(
            shard=index,
            acquisitions=self.acquisitions,
            contended=self.contended,
            wait_total=self.wait_total,
            wait_max=self.wait_max,
            wait_histogram=tuple(self.histogram),
            readers=self.readers,
            writer=self.writer,
            tasks_waiting=len(self.waiters),
        )


class LockShardTable:
    """A fixed table of shared/exclusive locks; see the module docstring for the rules.

    Usage::

        async with table.exclusive(parent_ino, child_ino):
            ...  # both inodes' shards held exclusive

        async with table.lock(exclusive=[old_dir, new_dir], shared=[ino]):
            ...
    """

    def __init__(self, shard_count: int = DEFAULT_SHARD_COUNT) -> None:
        if isinstance(shard_count, bool) or not isinstance(shard_count, int):
            raise TypeError(f"shard_count must be an int, not {type(shard_count).__name__}")
        if shard_count < 1:
            raise ValueError(f"shard_count must be >= 1, not {shard_count}")
        self._shards = tuple(_Shard() for _ in range(shard_count))
        # Task -> its one outstanding grant (not reentrant: at most one per task).
        self._holders: dict[Task, LockGrant] = {}

    def __repr__(self) -> str:
        waiting = sum(len(s.waiters) for s in self._shards)
        return (
            f"<LockShardTable {len(self._shards)} shards, {len(self._holders)} grants held, "
            f"{waiting} waiting>"
        )

    @property
    def shard_count(self) -> int:
        return len(self._shards)

    def shard_of(self, key: Key) -> int:
        """The shard index of ``key``: stable across processes and Python versions.

        Ints are multiplied by 2**64/phi modulo 2**64 (so inodes 1, 2, 3... spread out; ints
        equal modulo 2**64 share a shard); bytes are digested with BLAKE2b, never Python's
        per-process randomized ``hash``. The high bits pick the shard, so any ``shard_count``
        works, power of two or not.
        """
        if isinstance(key, bytes):
            h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        elif isinstance(key, int) and not isinstance(key, bool):
            h = (key * _FIBONACCI) & _MASK64
        else:
            raise TypeError(f"lock keys are int or bytes, not {type(key).__name__}")
        return (h * len(self._shards)) >> 64

    def _plan(
        self, exclusive: Iterable[Key], shared: Iterable[Key]
    ) -> tuple[tuple[int, LockMode], ...]:
        modes: dict[int, LockMode] = {}
        for key in shared:
            modes[self.shard_of(key)] = LockMode.SHARED
        for key in exclusive:
            modes[self.shard_of(key)] = LockMode.EXCLUSIVE  # exclusive wins over shared
        return tuple(sorted(modes.items(), key=lambda item: item[0]))

    def _check_not_holding(self, task: Task) -> None:
        if task in self._holders:
            raise RuntimeError(
                "this task already holds shards of this LockShardTable; take every key of an "
                "operation in one call (the table is not reentrant)"
            )

    @trio.lowlevel.enable_ki_protection
    def acquire_nowait(
        self, *, exclusive: Iterable[Key] = (), shared: Iterable[Key] = ()
    ) -> LockGrant:
        """Take the shards of all keys now, all or nothing, without blocking.

        A shard wanted in both modes is taken exclusive. Fails rather than jumping the queue:
        a shard with queued waiters counts as busy even if the request is compatible.

        Raises:
          trio.WouldBlock: some shard is busy; nothing is held.
          RuntimeError: the current task already holds a grant from this table.
          TypeError: a key is neither int nor bytes.
        """
        task = trio.lowlevel.current_task()
        plan = self._plan(exclusive, shared)
        self._check_not_holding(task)
        shards = [self._shards[index] for index, _ in plan]
        if not all(
            shard.can_take_now(mode is LockMode.EXCLUSIVE)
            for shard, (_, mode) in zip(shards, plan, strict=True)
        ):
            raise trio.WouldBlock
        for shard, (_, mode) in zip(shards, plan, strict=True):
            shard.take(mode is LockMode.EXCLUSIVE)
            shard.record(0.0, contended=False)
        grant = LockGrant(plan)
        self._holders[task] = grant
        return grant

    @trio.lowlevel.enable_ki_protection
    async def acquire(
        self, *, exclusive: Iterable[Key] = (), shared: Iterable[Key] = ()
    ) -> LockGrant:
        """Take the shards of all keys, in ascending shard order, blocking as needed.

        A shard wanted in both modes is taken exclusive; a shard named twice is taken once.
        Release the returned grant with :meth:`release` from the same task.

        This is a checkpoint. Cancellation can strike on entry (nothing taken) or while queued
        for a shard; either way ``Cancelled`` propagates only after every shard this call had
        already taken is released, so a cancelled acquire holds nothing. A cancelled waiter
        leaves the queue, which may let the waiters behind it in.

        Raises:
          RuntimeError: the current task already holds a grant from this table.
          TypeError: a key is neither int nor bytes.
        """
        task = trio.lowlevel.current_task()
        plan = self._plan(exclusive, shared)
        self._check_not_holding(task)
        await trio.lowlevel.checkpoint_if_cancelled()
        taken = 0
        blocked = False
        try:
            for index, mode in plan:
                shard = self._shards[index]
                is_exclusive = mode is LockMode.EXCLUSIVE
                if shard.can_take_now(is_exclusive):
                    shard.take(is_exclusive)
                    shard.record(0.0, contended=False)
                else:
                    blocked = True
                    await self._wait(shard, task, is_exclusive)
                taken += 1
        except BaseException:
            # Cancelled (or KeyboardInterrupt) while queued: the shard we were queued on is
            # not ours (the abort removed us), the ones before it are. Synchronous, so it
            # cannot be interrupted and needs no shield.
            for index, mode in reversed(plan[:taken]):
                self._shards[index].release(mode is LockMode.EXCLUSIVE)
            raise
        grant = LockGrant(plan)
        self._holders[task] = grant
        if not blocked:
            # Every acquire is a schedule point, even uncontended (trio's Lock does the same).
            await trio.lowlevel.cancel_shielded_checkpoint()
        return grant

    async def _wait(self, shard: _Shard, task: Task, exclusive: bool) -> None:
        """Queue on ``shard`` until a releaser hands it to us; on return we hold it.

        Cancellable while queued; on ``Cancelled`` we are off the queue and hold nothing here.
        """
        waiter = _Waiter(task, exclusive)
        shard.waiters[waiter] = None
        start = trio.current_time()

        def abort_fn(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            # Only reached while still queued: a granted waiter is already rescheduled.
            del shard.waiters[waiter]
            # If we were a writer at the head, readers behind us may be able to go now.
            shard.grant_waiters()
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort_fn)
        shard.record(trio.current_time() - start, contended=True)

    @trio.lowlevel.enable_ki_protection
    def release(self, grant: LockGrant) -> None:
        """Release every shard of ``grant``, in descending shard order, waking waiters.

        Synchronous; never blocks, is not a checkpoint and cannot be cancelled.

        Raises:
          RuntimeError: ``grant`` is not the current task's outstanding grant (released twice,
              released from another task, or not from this table).
        """
        task = trio.lowlevel.current_task()
        if self._holders.get(task) is not grant:
            raise RuntimeError("this task does not hold this grant from this LockShardTable")
        del self._holders[task]
        for index, mode in reversed(grant.held):
            self._shards[index].release(mode is LockMode.EXCLUSIVE)

    def lock(self, *, exclusive: Iterable[Key] = (), shared: Iterable[Key] = ()) -> LockContext:
        """``async with table.lock(exclusive=[...], shared=[...]) as grant:`` — see
        :meth:`acquire` for ordering and cancellation, :meth:`release` for the exit."""
        return LockContext(self, tuple(exclusive), tuple(shared))

    def exclusive(self, *keys: Key) -> LockContext:
        """``async with table.exclusive(*keys):`` — every key's shard, exclusive."""
        return LockContext(self, keys, ())

    def shared(self, *keys: Key) -> LockContext:
        """``async with table.shared(*keys):`` — every key's shard, shared."""
        return LockContext(self, (), keys)

    def statistics(self) -> LockTableStatistics:
        """A frozen snapshot of the counters (seconds) and current state; cheap enough to
        scrape, O(shard_count)."""
        shards = tuple(shard.statistics(i) for i, shard in enumerate(self._shards))
        histogram = [0] * (len(WAIT_BUCKETS) + 1)
        for s in shards:
            for i, count in enumerate(s.wait_histogram):
                histogram[i] += count
        return LockTableStatistics(
            shard_count=len(shards),
            acquisitions=sum(s.acquisitions for s in shards),
            contended=sum(s.contended for s in shards),
            wait_total=sum(s.wait_total for s in shards),
            wait_max=max((s.wait_max for s in shards), default=0.0),
            wait_histogram=tuple(histogram),
            bucket_bounds=WAIT_BUCKETS,
            tasks_waiting=sum(s.tasks_waiting for s in shards),
            grants_held=len(self._holders),
            shards=shards,
        )


class LockContext:
    """The async context manager returned by :meth:`LockShardTable.lock` and friends.

    Entering acquires (a checkpoint; on ``Cancelled`` nothing is held and the body does not
    run); leaving releases, whether the body returned, raised or was cancelled. Single use.
    """

    __slots__ = ("_exclusive", "_grant", "_shared", "_table", "_used")

    def __init__(
        self, table: LockShardTable, exclusive: Sequence[Key], shared: Sequence[Key]
    ) -> None:
        self._table = table
        self._exclusive = exclusive
        self._shared = shared
        self._grant: LockGrant | None = None
        self._used = False

    async def __aenter__(self) -> LockGrant:
        if self._used:
            raise RuntimeError("a LockContext can be entered only once")
        self._used = True
        self._grant = await self._table.acquire(exclusive=self._exclusive, shared=self._shared)
        return self._grant

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        grant, self._grant = self._grant, None
        assert grant is not None
        self._table.release(grant)
