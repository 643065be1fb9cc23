"""The live status report: a ``Snapshot`` as the JSON object of docs/status.md (schema 1).

``fusenas status`` gets it from the daemon through the control socket (``fusenas.cli.control``
serves ``status_report(monitor.snapshot())``); the report read from the superblocks of a
volume that is not mounted is built by ``fusenas.cli.status`` and shares the common keys.
Pure: no I/O, no clock; the counters mean the same as the metrics of the same name.
"""

from __future__ import annotations

from typing import Any

from fusenas.observability.snapshot import HOTTEST_SHARDS, MemberSnapshot, Snapshot


def _member(m: MemberSnapshot, events: int, devices: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """One slot; ``devices``: (calls in flight, slow calls) by device path."""
    in_flight, slow = devices.get(m.path, (0, 0))
    return {
        "slot": m.slot,
        "index": m.slot,
        "path": m.path,
        "state": m.state,
        "size": m.size,
        "events": events,
        "bytes_read": m.bytes_read,
        "bytes_written": m.bytes_written,
        "in_flight": in_flight,
        "slow_ios": slow,
        "bad_blocks": m.bad_blocks,
    }


def _journal(s: Snapshot) -> dict[str, Any]:
    w = s.wal
    return {
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
    }


def _cache(s: Snapshot) -> dict[str, Any]:
    c = s.cache
    return {
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
    }


def _locks(s: Snapshot) -> dict[str, Any]:
    lk = s.locks
    return {
        "acquisitions": lk.acquisitions,
        "contended": lk.contended,
        "wait_total": lk.wait_total,
        "wait_max": lk.wait_max,
        "tasks_waiting": lk.tasks_waiting,
        "hottest": [
            {"shard": h.shard, "contended": h.contended, "wait_total": h.wait_total}
            for h in lk.hottest(HOTTEST_SHARDS)
        ],
    }


def _integrity(s: Snapshot) -> dict[str, Any]:
    i = s.integrity
    return {
        "checksum_errors_found": i.checksum_errors_found,
        "checksum_errors_repaired": i.checksum_errors_repaired,
        "checksum_errors_unrecoverable": i.checksum_errors_unrecoverable,
        "progress": {
            kind: {"done": done, "total": total} for kind, (done, total) in i.progress.items()
        },
    }


def status_report(s: Snapshot) -> dict[str, Any]:
    """The live status report of docs/status.md (``"source": "daemon"``)."""
    devices = {d.name: (d.in_flight, d.slow) for d in s.devices}
    ck = s.checkpoints
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
        "member_count": len(s.members),
        "active_members": s.active_members,
        "degraded": s.active_members < len(s.members),
        "state": "mounted",
        "events": s.events,
        "journal": _journal(s),
        "members": [_member(m, s.events, devices) for m in s.members],
        "pid": s.pid,
        "uptime": round(s.uptime, 3),
        "readonly": s.readonly or s.failed_readonly is not None,
        "failed_readonly": s.failed_readonly,
        "usable": s.usable,
        "metrics": s.metrics_url,
        "io": {
            "bytes_read": s.ops.bytes_read,
            "bytes_written": s.ops.bytes_written,
            "operations": {name: op.count for name, op in sorted(s.ops.ops.items())},
            "errors": sum(sum(op.errors.values()) for op in s.ops.ops.values()),
        },
        "cache": _cache(s),
        "checkpoints": {
            "count": ck.count,
            "failed": ck.failed,
            "seconds_total": round(ck.seconds_total, 6),
            "last_seconds": ck.last_seconds,
            "image_bytes": ck.last_image_bytes,
        },
        "locks": _locks(s),
        "tasks": {"living": s.tasks.living, "runnable": s.tasks.runnable},
        "integrity": _integrity(s),
    }
