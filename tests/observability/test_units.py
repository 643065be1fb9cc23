"""In-process tests: log format, rate limiting, the control protocol, and the Monitor over a
real (file-backed) volume: snapshot → Prometheus text, slow I/O and degraded warnings, the live
status report's schema, and checksum errors found by a read and by a scrub, each counted
once."""

from __future__ import annotations

import errno
import logging
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from fusenas.cli import control
from fusenas.engine import create_volume, open_volume
from fusenas.engine.scrub import scrub_volume
from fusenas.fs.files import FileStore
from fusenas.fs.stats import Histogram, OperationStats
from fusenas.logs import RateLimiter, StructuredFormatter, event
from fusenas.observability import HealthLog, Monitor, families, parse_address, status_report
from fusenas.observability.metrics import cumulative
from fusenas.volume.layout import Level
from fusenas.volume.member import FILES
from tests.observability.rot import rot_one_block
from tests.observability.schema import check_report


def _record(msg: str, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("fusenas.cli.mount", logging.WARNING, __file__, 1, msg, (), None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_log_line_format() -> None:
    f = StructuredFormatter()
    line = f.format(
        _record(
            "slow I/O",
            event="slow_io",
            fields={"device": "/v/member-1.img", "seconds": 1.5, "note": 'a "b" c', "ok": True},
        )
    )
    stamp, level, name, _ = line.split(" ", 3)
    assert stamp.endswith("Z") and level == "warning" and name == "slow_io"
    assert 'device=/v/member-1.img seconds=1.5 note="a \\"b\\" c" ok=true msg="slow I/O"' in line
    plain = f.format(_record("opening volume /x y"))
    assert plain.split(" ")[2] == "cli.mount" and plain.endswith('msg="opening volume /x y"')
    with_pid = StructuredFormatter(pid=True).format(_record("m"))
    assert f" pid={os.getpid()} " in with_pid


def test_log_traceback_is_indented() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = _record("failed")
        rec.exc_info = sys.exc_info()
    lines = StructuredFormatter().format(rec).splitlines()
    assert lines[0].endswith('msg="failed"')
    assert all(x.startswith("  ") for x in lines[1:]) and "ValueError: boom" in lines[-1]


def test_rate_limiter_counts_what_it_drops() -> None:
    now = [0.0]
    rl = RateLimiter(30.0, clock=lambda: now[0])
    assert rl.allow("a") == 0
    assert rl.allow("a") is None and rl.allow("a") is None
    assert rl.allow("b") == 0  # keys are independent
    now[0] = 30.0
    assert rl.allow("a") == 2


def test_histogram_buckets_are_inclusive() -> None:
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 2.0, 3.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap.counts == (2, 2, 1) and snap.total == 8.0
    assert cumulative(snap.bounds, snap.counts) == [("1.0", 2), ("2.0", 4), ("+Inf", 5)]


def test_operation_stats() -> None:
    ops = OperationStats()
    ops.observe("write", 0.001, 4096)
    ops.observe("read", 0.001, b"x" * 100)
    ops.observe("lookup", 0.001, errno=errno.ENOENT)
    snap = ops.statistics()
    assert snap.bytes_written == 4096 and snap.bytes_read == 100
    assert snap.ops["lookup"].errors == {errno.ENOENT: 1} and snap.ops["lookup"].count == 1


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        (":9100", ("127.0.0.1", 9100)),
    ],
)
def test_parse_address(text: str, want: tuple[str, int]) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["", "x", "host:", "1:99999", "a:b"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


async def _serve_and_ask(voldir: Path, *requests: str) -> list[Any]:
    listener = control.bind(voldir)
    sock = control.socket_path(voldir)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    handler = control.dispatcher({"ping": lambda: {"pid": os.getpid()}})
    out: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, listener, handler)
        for cmd in requests:
            try:
                out.append(await control.request(voldir, cmd))
            except control.ControlError as exc:
                out.append(str(exc))
        nursery.cancel_scope.cancel()
    control.unlink(voldir)
    assert not sock.exists()
    return out


async def test_control_protocol(tmp_path: Path) -> None:
    ping, unknown = await _serve_and_ask(tmp_path, "ping", "nope")
    assert ping == {"pid": os.getpid()}
    assert "unknown command 'nope'" in unknown


async def test_control_socket_long_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(control.socket_path(deep))) > 107
    assert await _serve_and_ask(deep, "ping") == [{"pid": os.getpid()}]


async def test_control_replaces_a_stale_socket_and_reports_a_dead_one(tmp_path: Path) -> None:
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(control.socket_path(tmp_path)))
    s.close()  # a socket file nobody listens on: a crashed daemon's
    with pytest.raises(control.ControlError, match="cannot reach the daemon"):
        await control.request(tmp_path, "ping")
    assert await _serve_and_ask(tmp_path, "ping") == [{"pid": os.getpid()}]


async def test_control_rejects_garbage(tmp_path: Path) -> None:
    listener = control.bind(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, listener, control.dispatcher({}))
        stream = await trio.open_unix_socket(str(control.socket_path(tmp_path)))
        await stream.send_all(b"not json\n")
        reply = b""
        while chunk := await stream.receive_some():
            reply += chunk
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert b'"ok": false' in reply and b"not JSON" in reply


def _scrape(s: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    class Fixed:
        def collect(self) -> Any:
            return iter(families(s))

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Fixed())  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    return {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for fam in text_string_to_metric_families(text)
        for x in fam.samples
    }


async def test_monitor_over_a_volume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    voldir = tmp_path / "vol"
    await create_volume(
        voldir,
        level=Level.RAID5,
        chunk=64 << 10,
        member_count=4,
        member_size=64 << 20,
        journal_size=16 << 20,
    )
    monitor = Monitor(voldir)
    async with open_volume(voldir, provider=monitor.provider(FILES), checkpointer=False) as vol:
        monitor.attach(vol)
        opened = monitor.snapshot().checkpoints.count  # open_volume writes checkpoints too
        await vol.checkpoint()  # timed by the checkpointer itself
        await vol.cache.write(vol.blocks.offset(0), b"\1" * (256 << 10))
        await vol.sync()
        await vol.cache.flush()
        s = monitor.snapshot()
        assert s.checkpoints.count == opened + 1
        assert all(m.bytes_written > 0 for m in s.members)
        samples = _scrape(s)
        assert samples[("fusenas_array_degraded", ())] == 0
        assert samples[("fusenas_cache_stripe_writes_total", (("strategy", "full"),))] >= 1
        assert samples[("fusenas_wal_commits_total", ())] >= 1
        assert samples[("fusenas_checkpoint_seconds_count", ())] == opened + 1
        assert samples[("fusenas_checkpoint_seconds_bucket", (("le", "+Inf"),))] == opened + 1
        check_report(status_report(s))

        # slow I/O: one warning per device and interval, however many slow I/Os
        monitor.timings.slow_io = 0.0
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fusenas.observability.devices"):
            dev = vol.members.array.devices[0]
            assert dev is not None
            for _ in range(5):
                await dev.read(0, 4096)
        slow = [r for r in caplog.records if getattr(r, "event", None) == "slow_io"]
        assert len(slow) == 1 and slow[0].fields["device"] == str(voldir / "member-0.img")
        assert monitor.timings.devices[str(voldir / "member-0.img")].slow >= 5
        monitor.timings.slow_io = 1.0

        # a failed member: one "degraded" warning, then quiet until the reminder
        caplog.clear()
        health = HealthLog(vol)
        with caplog.at_level(logging.WARNING, logger="fusenas.observability.health"):
            vol.members.array.fail_member(2, "test")
            failed = health.check_health(())
            health.check_health(failed)
        degraded = [r for r in caplog.records if getattr(r, "event", None) == "degraded"]
        assert len(degraded) == 1 and degraded[0].fields["member"] == 2
        report = status_report(monitor.snapshot())
        check_report(report)
        assert report["degraded"] and report["members"][2]["state"] == "faulty"
        samples = _scrape(monitor.snapshot())
        assert samples[("fusenas_array_degraded", ())] == 1
        key = (
            "fusenas_member_state",
            (
                ("device", str(voldir / "member-2.img")),
                ("fusenas_member_state", "faulty"),
                ("member", "2"),
            ),
        )
        assert samples[key] == 1


async def test_checksum_errors_found_by_a_read_and_by_a_scrub_count_once(tmp_path: Path) -> None:
    """One rotten block found by a read (``DataBlocks.heal``, counted by the array) and one
    found by a scrub (``Engine.integrity``) move ``fusenas_checksum_errors_found_total`` by
    exactly one each; each repair (one member copy rewritten) moves ``..._repaired_total`` by
    one, scrub's repair included only once."""
    voldir = tmp_path / "vol"
    await create_volume(
        voldir,
        level=Level.RAID5,
        chunk=64 << 10,
        member_count=4,
        member_size=32 << 20,
        journal_size=16 << 20,
    )
    data = {name: random.Random(name).randbytes(1 << 20) for name in (b"read", b"scrub")}
    monitor = Monitor(voldir)
    async with open_volume(voldir, provider=monitor.provider(FILES), checkpointer=False) as vol:
        monitor.attach(vol)
        files = FileStore(vol)
        inos = {}
        for name, content in data.items():
            inos[name] = vol.meta.mknod(1, name, 0o100644, 0, 0, 0, 0).ino
            await files.write(inos[name], 0, content)
        await vol.checkpoint()  # flushes the stripe cache: every block is in place
        found = "fusenas_checksum_errors_found_total", ()
        repaired = "fusenas_checksum_errors_repaired_total", ()
        unrecoverable = "fusenas_checksum_errors_unrecoverable_total", ()
        bad0 = "fusenas_member_bad_blocks_total", (("member", "0"),)
        before = _scrape(monitor.snapshot())
        assert before[found] == before[repaired] == before[bad0] == 0
        for content in data.values():
            rot_one_block(voldir / "member-0.img", content)

        assert await files.read(inos[b"read"], 0, 1 << 20) == data[b"read"]
        after_read = _scrape(monitor.snapshot())
        assert after_read[found] == 1 and after_read[repaired] == 1
        assert after_read[bad0] == 1 and after_read[unrecoverable] == 0

        # The scrub finds only the block nobody read (the other one was repaired in place).
        report = await scrub_volume(vol)
        assert report.checksum_mismatches == 1 and report.unrecoverable == 0, report.summary()
        s = monitor.snapshot()
        after_scrub = _scrape(s)
        assert after_scrub[found] == 2 and after_scrub[repaired] == 2
        assert after_scrub[bad0] == 2 and after_scrub[unrecoverable] == 0
        integrity = status_report(s)["integrity"]
        assert integrity["checksum_errors_found"] == 2
        assert integrity["checksum_errors_repaired"] == 2
        assert integrity["progress"]["scrub"]["done"] == integrity["progress"]["scrub"]["total"]
        assert after_scrub[("fusenas_progress_ratio", (("kind", "scrub"),))] == 1.0
        assert await files.read(inos[b"scrub"], 0, 1 << 20) == data[b"scrub"]
        assert _scrape(monitor.snapshot())[found] == 2  # repaired: read back clean


def test_event_helper_skips_disabled_levels(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("fusenas.test")
    with caplog.at_level(logging.WARNING, logger="fusenas.test"):
        event(log, logging.INFO, "x", "not shown")
        event(log, logging.WARNING, "y", "shown", a=1)
    assert [r.event for r in caplog.records] == ["y"]  # type: ignore[attr-defined]
