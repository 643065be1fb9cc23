"""The patched pyfuse3 session loop (patches/pyfuse3-3.5.0-fusenas.patch, revision 3).

With ``Operations.read_before_wait`` (fusenas sets it) the loop reads a queued request before
it waits for the FUSE fd (which it makes non-blocking), and yields to the scheduler every 16
requests handled without waiting, so that a stream of requests whose handlers never suspend
cannot starve the daemon's own tasks.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
import threading
import time
from pathlib import Path

import pyfuse3
import pytest

from fusenas.fs.operations import FusenasOperations
from tests.mount.conftest import Mounter, run_fusenas

pytestmark = [pytest.mark.mount, pytest.mark.timeout(90)]


def test_pyfuse3_has_the_session_loop_patch() -> None:
    assert getattr(pyfuse3, "fusenas_patch", 0) >= 3, "rebuild: scripts/install-pyfuse3.sh"
    assert pyfuse3.Operations.read_before_wait is False, "opt-in: stock behaviour by default"
    assert FusenasOperations.read_before_wait is True


def fuse_fd_flags(pid: int) -> int:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse":
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            return int(info.split("flags:")[1].split()[0], 8)
    raise AssertionError(f"pid {pid} has no /dev/fuse descriptor")


def test_the_fuse_fd_is_non_blocking_and_requests_are_answered(
    mounter: Mounter, volume: Path
) -> None:
    m = mounter.mount(volume)
    assert fuse_fd_flags(m.proc.pid) & os.O_NONBLOCK
    for i in range(200):  # one request at a time: every read finds nothing queued (EAGAIN)
        (m.mnt / f"f{i}").write_bytes(b"x" * i)
    assert sorted(os.listdir(m.mnt)) == sorted(f"f{i}" for i in range(200))
    assert all((m.mnt / f"f{i}").read_bytes() == b"x" * i for i in range(200))
    assert "reading device" not in m.log(), m.log()  # libfuse is quiet about EAGAIN
    assert mounter.unmount(m) == 0, m.log()


def test_without_the_opt_in_the_stock_loop_runs(mounter: Mounter) -> None:
    """A pyfuse3 daemon that does not set read_before_wait (the toy file system of
    test_xattr_sync) keeps the stock loop: a blocking fd, waited on before each read."""
    mnt = mounter.mountpoint()
    toy = Path(__file__).with_name("getxattr_sync_fs.py")
    m = mounter.spawn([sys.executable, str(toy), str(mnt)], mnt, mnt)
    assert not fuse_fd_flags(m.proc.pid) & os.O_NONBLOCK
    assert os.stat(mnt).st_ino == 1  # answered through the stock loop
    assert mounter.unmount(m) == 0, m.log()


def test_daemon_tasks_run_while_cached_reads_keep_coming(mounter: Mounter, volume: Path) -> None:
    """Sixteen threads re-read a cached file with O_DIRECT (every read is a FUSE request,
    served without a schedule point); meanwhile the control socket must answer and the stripe
    cache must write a dirty file in place by age: both are daemon tasks that need the event
    loop. (On a 2-core machine the daemon still drains the queue now and then, so this did
    not catch a build without the periodic schedule point; it guards against worse.)"""
    m = mounter.mount(volume)
    hot = m.mnt / "hot"
    hot.write_bytes(os.urandom(1 << 20))
    stop = threading.Event()
    done = [0] * 16

    def hammer(i: int) -> None:
        fd = os.open(hot, os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
        try:
            while not stop.is_set():
                os.preadv(fd, [buf], (done[i] % 256) * 4096)
                done[i] += 1
        finally:
            os.close(fd)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(len(done))]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        (m.mnt / "dirty").write_bytes(os.urandom(256 << 10))  # not fsynced: dirty in the cache
        deadline = time.monotonic() + 30  # the cache's max_age is 5 s
        while True:
            t0 = time.monotonic()
            r = run_fusenas("status", str(m.mnt), "--json")
            assert r.returncode == 0, r.stderr
            assert time.monotonic() - t0 < 10, "the control socket starved"
            if json.loads(r.stdout)["cache"]["dirty_bytes"] == 0:
                break
            assert time.monotonic() < deadline, r.stdout
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert sum(done) > 1000, done
    assert mounter.unmount(m) == 0, m.log()
