"""Real mounts: the Prometheus endpoint during a workload, checksum errors found by a read
and by a scrub, request counts that show what the kernel answers itself (FLUSH, negative
lookups), and the control socket."""

from __future__ import annotations

import itertools
import json
import os
import random
import stat
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.mount.conftest import Mounter, run_fusenas
from tests.observability.rot import rot_one_block
from tests.observability.schema import check_report

pytestmark = pytest.mark.mount

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def status_json(target: Path) -> dict[str, Any]:
    r = run_fusenas("status", str(target), "--json")
    assert r.returncode == 0, r.stderr
    report: dict[str, Any] = json.loads(r.stdout)
    return report


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(lab)[label]: v for (n, lab), v in samples.items() if n == name}


def test_metrics_follow_a_workload(volume: Path, mounter: Mounter) -> None:
    m = mounter.mount(volume, None, "-o", "metrics=0")
    report = status_json(m.mnt)
    url = report["metrics"]
    assert url and url.startswith("http://127.0.0.1:"), report
    before = scrape(url)

    # Scrape continuously while the workload runs: every scrape parses, and every counter
    # only grows from one scrape to the next.
    scrapes: list[Samples] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def scraper() -> None:
        try:
            while not done.is_set():
                scrapes.append(scrape(url))
                time.sleep(0.05)
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=scraper)
    t.start()
    chunk = os.urandom(64 << 10)
    writes = fsyncs = written = 0
    path = m.mnt / "data"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(160):  # 10 MiB in 64 KiB write(2) calls, an fsync every 16
            written += os.pwrite(fd, chunk, i * len(chunk))
            writes += 1
            if i % 16 == 15:
                os.fsync(fd)
                fsyncs += 1
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # make the reads reach the daemon
        read = len(os.pread(fd, 1 << 20, 0))
    finally:
        os.close(fd)
    done.set()
    t.join(30)
    assert not errors, errors
    assert len(scrapes) >= 2

    after = scrape(url)
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    # FUSE requests: no writeback cache, so the kernel never merges two write(2) calls; it may
    # split one, so the daemon sees at least as many writes as we made.
    assert delta[("fusenas_fuse_operations_total", (("op", "write"),))] >= writes
    assert delta[("fusenas_fuse_operations_total", (("op", "fsync"),))] >= fsyncs
    assert (
        value(after, "fusenas_logical_written_bytes_total")
        - value(before, "fusenas_logical_written_bytes_total")
        >= written
    )
    assert read > 0 and value(after, "fusenas_logical_read_bytes_total") > 0
    # Every fsync followed new writes, so each needed its own group commit.
    assert (
        value(after, "fusenas_wal_commits_total") - value(before, "fusenas_wal_commits_total")
        >= fsyncs
    )
    assert value(after, "fusenas_wal_appends_total") > value(before, "fusenas_wal_appends_total")
    assert value(after, "fusenas_wal_records_committed_total") >= value(
        after, "fusenas_wal_commits_total"
    )
    # The latency histogram counts what the op counter counts (one snapshot per scrape).
    for op, n in labelled(after, "fusenas_fuse_operations_total", "op").items():
        assert value(after, "fusenas_fuse_operation_seconds_count", op=op) == n
        assert value(after, "fusenas_fuse_operation_seconds_bucket", op=op, le="+Inf") == n

    # The stripe cache writes the data in place within its max age: every member gets bytes.
    deadline = time.monotonic() + 30
    while True:
        now = scrape(url)
        per_member = labelled(now, "fusenas_member_written_bytes_total", "member")
        if len(per_member) == 4 and all(v > 0 for v in per_member.values()):
            break
        assert time.monotonic() < deadline, per_member
        time.sleep(0.2)
    assert total(now, "fusenas_member_written_bytes_total") >= written  # data + parity
    assert total(now, "fusenas_cache_stripe_writes_total") > 0
    assert value(now, "fusenas_array_degraded") == 0
    assert value(now, "fusenas_array_active_members") == 4
    states = {
        (dict(lab)["member"], dict(lab)["fusenas_member_state"]): v
        for (n, lab), v in now.items()
        if n == "fusenas_member_state"
    }
    assert all(states[(str(i), "active")] == 1 for i in range(4))
    assert value(now, "fusenas_trio_tasks") > 0
    journal = str(volume / "journal")
    assert value(now, "fusenas_device_written_bytes_total", device=journal) >= written

    # Counters never went down between consecutive scrapes.
    series = [before, *scrapes, after]
    for a, b in itertools.pairwise(series):
        for key, v in a.items():
            name = key[0]
            if (name.endswith(("_total", "_count", "_bucket"))) and key in b:
                assert b[key] >= v, (key, v, b[key])
    assert mounter.unmount(m) == 0, m.log()


def test_checksum_errors_are_counted_once(volume: Path, mounter: Mounter) -> None:
    """A block rotted on a member file under the mount: reading its file finds it (and heals
    it), a scrub finds another one nobody read; ``fusenas_checksum_errors_found_total`` moves
    by exactly one for each, as does ``..._repaired_total`` (one member copy rewritten)."""
    m = mounter.mount(volume, None, "-o", "metrics=0,flush_age=0.2")
    url = status_json(m.mnt)["metrics"]
    data = {name: random.Random(name).randbytes(1 << 20) for name in ("read", "scrub")}
    for name, content in data.items():
        with open(m.mnt / name, "wb") as f:
            f.write(content)
            os.fsync(f.fileno())
    deadline = time.monotonic() + 30  # the stripe cache writes the edges in place by age
    while status_json(m.mnt)["cache"]["dirty_bytes"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    found, repaired = (
        "fusenas_checksum_errors_found_total",
        "fusenas_checksum_errors_repaired_total",
    )
    before = scrape(url)
    for content in data.values():
        rot_one_block(volume / "member-0.img", content)

    fd = os.open(m.mnt / "read", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # make the read reach the daemon
        assert os.pread(fd, 1 << 20, 0) == data["read"]
    finally:
        os.close(fd)
    after_read = scrape(url)
    assert value(after_read, found) - value(before, found) == 1
    assert value(after_read, repaired) - value(before, repaired) == 1

    r = run_fusenas("scrub", str(m.mnt), "--rate", "1G", "--quiet", timeout=300)
    assert r.returncode == 0 and "mismatches: 1 checksum" in r.stdout, r.stdout + r.stderr
    after_scrub = scrape(url)
    assert value(after_scrub, found) - value(before, found) == 2
    assert value(after_scrub, repaired) - value(before, repaired) == 2
    assert value(after_scrub, "fusenas_checksum_errors_unrecoverable_total") == 0
    assert value(after_scrub, "fusenas_member_bad_blocks_total", member="0") == 2
    assert status_json(m.mnt)["integrity"]["checksum_errors_found"] == value(after_scrub, found)
    assert (m.mnt / "scrub").read_bytes() == data["scrub"]
    assert mounter.unmount(m) == 0, m.log()


def test_close_costs_no_flush_request(volume: Path, mounter: Mounter) -> None:
    """The first FLUSH answers ENOSYS, so the kernel sends no more for the mount: close(2)
    of 20 files (one through a dup'ed descriptor) makes at most one FLUSH request, returns
    0, and everything written reads back."""
    m = mounter.mount(volume, None, "-o", "metrics=0")
    url = status_json(m.mnt)["metrics"]
    for i in range(20):
        fd = os.open(m.mnt / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"%d" % i)
        if i == 7:
            os.close(os.dup(fd))
        os.close(fd)  # raises on an error
    for i in range(20):
        assert (m.mnt / f"f{i}").read_bytes() == b"%d" % i
    flushes = value(scrape(url), "fusenas_fuse_operations_total", op="flush")
    assert flushes <= 1, flushes
    assert mounter.unmount(m) == 0, m.log()


def test_missing_names_are_cached_as_negative_entries(volume: Path, mounter: Mounter) -> None:
    """50 stats of a missing name cost at most two LOOKUP requests (the entry timeout is
    1 s), and a name created through the mount in any way is visible at once, to this
    process and to another, although its absence was cached."""
    m = mounter.mount(volume, None, "-o", "metrics=0")
    url = status_json(m.mnt)["metrics"]
    lookups = labelled(scrape(url), "fusenas_fuse_operations_total", "op").get("lookup", 0.0)
    for _ in range(50):
        assert not (m.mnt / "missing").exists()
    after = value(scrape(url), "fusenas_fuse_operations_total", op="lookup")
    assert after - lookups <= 2, after - lookups

    (m.mnt / "target").write_bytes(b"t")
    makers: dict[str, Callable[[Path], object]] = {
        "file": lambda p: p.write_bytes(b"x"),
        "dir": lambda p: p.mkdir(),
        "symlink": lambda p: p.symlink_to("target"),
        "link": lambda p: os.link(m.mnt / "target", p),
        "fifo": lambda p: os.mkfifo(p),
        "rename": lambda p: (m.mnt / "target").rename(p),
    }
    for kind, make in makers.items():
        p = m.mnt / f"new-{kind}"
        assert not os.path.lexists(p)  # now cached as absent
        make(p)
        assert os.path.lexists(p), kind
        seen = subprocess.run(["stat", "-c", "%F", str(p)], capture_output=True, text=True)
        assert seen.returncode == 0, (kind, seen.stderr)
    # Removal works the other way round: a removed name is gone at once.
    os.unlink(m.mnt / "new-file")
    assert not (m.mnt / "new-file").exists()
    assert mounter.unmount(m) == 0, m.log()


def test_flush_age_option(volume: Path, mounter: Mounter) -> None:
    """``-o flush_age``: with an hour, a partial-stripe write is still dirty in the cache and
    its journal records uncommitted 8 s later (the 5 s default would have written both);
    with 0.2 s, without any fsync, the data goes in place and a mkdir reaches the journal
    long before the 30 s checkpoint interval would commit it. Bad values: one line, exit 2,
    nothing mounted."""
    mnt = mounter.mountpoint()
    for bad in ("abc", "0", "-1", "inf", "nan"):
        r = run_fusenas(str(volume), str(mnt), "-o", f"flush_age={bad}")
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, (bad, r.stderr)
        assert "flush_age" in r.stderr and not os.path.ismount(mnt)

    def unflushed(m: Any) -> tuple[int, int]:
        """(dirty cache bytes, journal records appended but not yet durable)."""
        report = status_json(m.mnt)
        j = report["journal"]
        return int(report["cache"]["dirty_bytes"]), int(j["last_lsn"] - j["durable_lsn"])

    m = mounter.mount(volume, None, "-o", "flush_age=3600")
    (m.mnt / "slow").write_bytes(os.urandom(8192))
    time.sleep(8)
    dirty, uncommitted = unflushed(m)
    assert dirty > 0 and uncommitted > 0, (dirty, uncommitted)
    assert mounter.unmount(m) == 0, m.log()

    m = mounter.mount(volume, None, "-o", "flush_age=0.2")
    (m.mnt / "quick").write_bytes(os.urandom(8192))
    deadline = time.monotonic() + 20  # the checkpointer would commit only after 30 s
    while unflushed(m) != (0, 0):
        assert time.monotonic() < deadline, unflushed(m)
        time.sleep(0.1)
    (m.mnt / "dir").mkdir()  # a journal record with no cached data to flush
    while unflushed(m) != (0, 0):
        assert time.monotonic() < deadline, unflushed(m)
        time.sleep(0.1)
    assert (m.mnt / "slow").stat().st_size == 8192
    assert mounter.unmount(m) == 0, m.log()


def test_metrics_option_refusals(volume: Path, mounter: Mounter) -> None:
    mnt = mounter.mountpoint()
    r = run_fusenas(str(volume), str(mnt), "-o", "metrics=notaport")
    assert r.returncode == 2 and "metrics" in r.stderr
    assert not os.path.ismount(mnt)


def test_metrics_off_by_default(mounted: Any) -> None:
    report = status_json(mounted.mnt)
    assert report["metrics"] is None


def test_control_socket_and_status_schema(volume: Path, mounter: Mounter) -> None:
    m = mounter.mount(volume)
    sock = volume / "control.sock"
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()

    (m.mnt / "f").write_bytes(b"x" * 10000)
    for target in (m.mnt, volume):  # a mount point, or the volume dir of a mounted volume
        r = status_json(target)
        check_report(r)
        assert r["source"] == "daemon"
        assert r["mountpoint"] == str(m.mnt)
        assert r["volume"] == str(volume)
        assert r["member_count"] == 4 and r["active_members"] == 4 and not r["degraded"]
        assert r["io"]["bytes_written"] >= 10000
        assert r["pid"] == m.proc.pid
    text = run_fusenas("status", str(m.mnt))
    assert text.returncode == 0, text.stderr
    assert "[UUUU]" in text.stdout and f"daemon pid {m.proc.pid}" in text.stdout

    assert mounter.unmount(m) == 0, m.log()
    assert not sock.exists()
    r = status_json(volume)
    check_report(r)
    assert r["source"] == "superblocks" and r["mountpoint"] is None


def test_background_daemon_logs_structured_lines(volume: Path, mounter: Mounter) -> None:
    mnt = mounter.mountpoint()
    r = run_fusenas(str(volume), str(mnt))
    assert r.returncode == 0, r.stderr
    try:
        assert os.path.ismount(mnt)
        assert status_json(mnt)["source"] == "daemon"
    finally:
        os.system(f"fusermount3 -u {mnt}")
    deadline = time.monotonic() + 30
    log = volume / "fusenas.log"
    while "closed cleanly" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    lines = [x for x in log.read_text().splitlines() if not x.startswith("  ")]
    assert lines
    for line in lines:
        stamp, level, ev, *rest = line.split(" ")
        assert stamp.endswith("Z") and "T" in stamp, line
        assert level in ("debug", "info", "warning", "error", "critical"), line
        assert ev and "=" not in ev, line
        assert rest[0].startswith("pid=") and rest[-1].endswith('"'), line
