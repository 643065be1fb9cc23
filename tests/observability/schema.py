"""The status report schema of docs/status.md, as a checker: required keys and their types."""

from __future__ import annotations

from typing import Any

INT = int
NUM = (int, float)
STR = str
OPT_STR = (str, type(None))

#: Keys every report has, whatever its source.
COMMON: dict[str, Any] = {
    "schema": INT,
    "source": STR,
    "volume": STR,
    "mountpoint": OPT_STR,
    "uuid": STR,
    "name": STR,
    "level": INT,
    "chunk": INT,
    "size": INT,
    "member_count": INT,
    "active_members": INT,
    "degraded": bool,
    "state": STR,
    "events": INT,
    "journal": dict,
    "members": list,
}
COMMON_JOURNAL = {"path": STR, "size": INT}
COMMON_MEMBER = {"slot": INT, "path": STR, "state": STR}

#: Keys a live report (``"source": "daemon"``) has in addition.
LIVE: dict[str, Any] = {
    "pid": INT,
    "uptime": NUM,
    "readonly": bool,
    "failed_readonly": OPT_STR,
    "usable": bool,
    "metrics": OPT_STR,
    "io": dict,
    "cache": dict,
    "checkpoints": dict,
    "locks": dict,
    "tasks": dict,
    "integrity": dict,
}
LIVE_JOURNAL = {
    "capacity": INT,
    "used": INT,
    "fill": NUM,
    "pending": INT,
    "appends": INT,
    "commits": INT,
    "records_committed": INT,
    "bytes_written": INT,
    "waiting_for_room": INT,
    "durable_lsn": INT,
    "last_lsn": INT,
}
LIVE_MEMBER = {
    "index": INT,
    "size": (int, type(None)),
    "events": INT,
    "bytes_read": INT,
    "bytes_written": INT,
    "in_flight": INT,
    "slow_ios": INT,
    "bad_blocks": INT,
}
LIVE_SECTIONS: dict[str, dict[str, Any]] = {
    "io": {"bytes_read": INT, "bytes_written": INT, "operations": dict, "errors": INT},
    "cache": {
        "dirty_stripes": INT,
        "dirty_bytes": INT,
        "flushing_stripes": INT,
        "writes": INT,
        "stripes_flushed": INT,
        "blocks_per_flush": NUM,
        "full_stripe_writes": INT,
        "rmw_writes": INT,
        "rcw_writes": INT,
        "degraded_writes": INT,
    },
    "checkpoints": {
        "count": INT,
        "failed": INT,
        "seconds_total": NUM,
        "last_seconds": (int, float, type(None)),
        "image_bytes": INT,
    },
    "locks": {
        "acquisitions": INT,
        "contended": INT,
        "wait_total": NUM,
        "wait_max": NUM,
        "tasks_waiting": INT,
        "hottest": list,
    },
    "tasks": {"living": INT, "runnable": INT},
    "integrity": {
        "checksum_errors_found": INT,
        "checksum_errors_repaired": INT,
        "checksum_errors_unrecoverable": INT,
        "progress": dict,
    },
}
MEMBER_STATES = {"active", "faulty", "missing", "spare", "rebuilding", "stale", "foreign"}


def _keys(where: str, obj: Any, spec: dict[str, Any]) -> None:
    assert isinstance(obj, dict), f"{where} is not an object"
    for key, typ in spec.items():
        assert key in obj, f"{where}: missing {key!r}"
        value = obj[key]
        # bool is an int subclass: an int field must not be a bool
        if typ is INT or typ == (int, type(None)):
            assert not isinstance(value, bool), f"{where}.{key} is a bool"
        assert isinstance(value, typ), f"{where}.{key} = {value!r} is not {typ}"


def check_report(r: dict[str, Any]) -> None:
    """Assert that ``r`` follows docs/status.md (schema version 1)."""
    _keys("report", r, COMMON)
    assert r["schema"] == 1
    assert r["source"] in ("daemon", "superblocks")
    _keys("journal", r["journal"], COMMON_JOURNAL)
    assert len(r["members"]) == r["member_count"]
    for i, m in enumerate(r["members"]):
        _keys(f"members[{i}]", m, COMMON_MEMBER)
        assert m["state"] in MEMBER_STATES, m["state"]
    if r["source"] != "daemon":
        return
    assert r["state"] == "mounted"
    _keys("journal", r["journal"], LIVE_JOURNAL)
    for i, m in enumerate(r["members"]):
        _keys(f"members[{i}]", m, LIVE_MEMBER)
    _keys("report", r, LIVE)
    for name, spec in LIVE_SECTIONS.items():
        _keys(name, r[name], spec)
    for h in r["locks"]["hottest"]:
        _keys("locks.hottest[]", h, {"shard": INT, "contended": INT, "wait_total": NUM})
    for op, n in r["io"]["operations"].items():
        assert isinstance(op, str) and isinstance(n, int)
