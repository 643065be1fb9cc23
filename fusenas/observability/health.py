"""Health warnings in the daemon's log: the signals the alert rules of docs/metrics.md watch.

``HealthLog.watch`` checks once a second, off the hot path (``check_health``):

``degraded``
    on every change of the set of members that are not active (one line per member that
    failed, ``member_active`` at INFO for one that came back), then a reminder every
    ``DEGRADED_REMINDER`` seconds while the array stays degraded;
``journal_backpressure``
    writers wait for journal space (at most every ``WARN_INTERVAL`` seconds);
``journal_full``
    the journal is more than ``JOURNAL_FILL_WARN`` full (same rate limit).

``slow_io`` is not checked here: ``DeviceTimings`` logs it when the slow call returns. Reads
only public state of the engine (member states, ``WriteAheadLog.statistics()``), on the trio
thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from fusenas.logs import RateLimiter, event
from fusenas.observability.devices import WARN_INTERVAL

if TYPE_CHECKING:
    from fusenas.engine import Engine

log = logging.getLogger(__name__)

#: Reminder interval while the array stays degraded, seconds.
DEGRADED_REMINDER = 600.0
#: The journal is "nearly full" above this fill (warned, rate-limited).
JOURNAL_FILL_WARN = 0.9


class HealthLog:
    """The health warnings of one open volume (see the module docstring)."""

    def __init__(self, vol: Engine, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.vol = vol
        self._warn = RateLimiter(WARN_INTERVAL, clock)
        self._degraded = RateLimiter(DEGRADED_REMINDER, clock)

    async def watch(
        self,
        interval: float = 1.0,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Check every ``interval`` seconds until cancelled (cancellation lands in the sleep
        between checks; nothing to clean up)."""
        task_status.started()
        failed: tuple[int, ...] = ()
        while True:
            failed = self.check_health(failed)
            await trio.sleep(interval)

    def check_health(self, before: tuple[int, ...]) -> tuple[int, ...]:
        """One round of checks; returns the members not active, to compare with next time."""
        failed = tuple(self.vol.members.array.failed_members)
        if failed != before:
            self._degraded.allow("degraded")  # restart the reminder interval
            self._members_changed(before, failed)
        elif failed and self._degraded.allow("degraded") is not None:
            event(
                log,
                logging.WARNING,
                "degraded",
                f"array still degraded: members {', '.join(map(str, failed))} not active",
                failed=len(failed),
                usable=self.vol.members.array.usable,
            )
        self._check_journal()
        return failed

    def _members_changed(self, before: tuple[int, ...], failed: tuple[int, ...]) -> None:
        array = self.vol.members.array
        paths = self.vol.members.paths
        for m in sorted(set(failed) - set(before)):
            state = array.states[m].name.lower()
            event(
                log,
                logging.WARNING,
                "degraded",
                f"array degraded: member {m} ({paths[m]}) is {state}",
                member=m,
                device=paths[m],
                state=state,
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

    def _check_journal(self) -> None:
        wal = self.vol.wal.statistics()
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
