"""Real-mount fixtures: mkfs a small volume, run the daemon in a subprocess, always unmount.

The model is pyfuse3's test/util.py: the filesystem runs in a separate process (``fusenas
VOLDIR MNT -f``), the test waits for ``os.path.ismount``, and teardown unmounts with
``fusermount3 -u`` then waits; a daemon that does not exit is killed and the mount detached
(``fusermount3 -uz``) so no test leaves a mount behind.

Mount points live in a world-traversable directory under /tmp (pytest's tmp_path is 0700),
so tests can act as an unprivileged user through ``setpriv``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FUSENAS = str(Path(sys.executable).with_name("fusenas"))
MOUNT_TIMEOUT = 20.0
UNMOUNT_TIMEOUT = 30.0


def run_fusenas(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FUSENAS, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def mkfs(voldir: Path, level: str = "raid5", members: int = 4, metadata: str | None = None) -> Path:
    """``fusenas mkfs``; ``metadata``: "image" or "tree" (default: $FUSENAS_TEST_METADATA, or
    "image"), where the volume keeps its metadata."""
    r = run_fusenas(
        "mkfs",
        str(voldir),
        "--level",
        level,
        "--members",
        str(members),
        "--size",
        "256M",
        "--journal-size",
        "64M",
        "--metadata",
        metadata or os.environ.get("FUSENAS_TEST_METADATA", "image"),
    )
    assert r.returncode == 0, r.stderr
    return voldir


@dataclass
class Mount:
    voldir: Path
    mnt: Path
    proc: subprocess.Popen[bytes]
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


class Mounter:
    """Starts daemons and guarantees they are gone (and unmounted) at teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounts: list[Mount] = []
        self._n = 0

    def mountpoint(self) -> Path:
        self._n += 1
        mnt = self.base / f"mnt{self._n}"
        mnt.mkdir(mode=0o755)
        return mnt

    def mount(self, voldir: Path, mnt: Path | None = None, *opts: str) -> Mount:
        mnt = mnt or self.mountpoint()
        return self.spawn([FUSENAS, str(voldir), str(mnt), "-f", *opts], voldir, mnt)

    def spawn(self, argv: list[str], voldir: Path, mnt: Path) -> Mount:
        """Run ``argv``, a FUSE daemon in the foreground that mounts on ``mnt``, and wait for
        the mount (``mount`` runs fusenas; tests of pyfuse3 itself run their own)."""
        self._n += 1
        err = self.base / f"daemon{self._n}.stderr"
        with open(err, "wb") as f:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
        m = Mount(voldir, mnt, proc, err)
        self.mounts.append(m)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                pytest.fail(f"fusenas exited with {proc.returncode} while mounting:\n{m.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{mnt} not mounted after {MOUNT_TIMEOUT} s:\n{m.log()}")
            time.sleep(0.02)
        return m

    def unmount(self, m: Mount) -> int:
        """Clean unmount; returns the daemon's exit status."""
        if os.path.ismount(m.mnt):
            subprocess.run(["fusermount3", "-u", str(m.mnt)], capture_output=True, check=False)
        try:
            return m.proc.wait(UNMOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill(m)
            pytest.fail(f"fusenas did not exit after unmount:\n{m.log()}")

    def kill(self, m: Mount) -> None:
        """Crash the daemon (SIGKILL) and detach its dead mount."""
        if m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait(10)
        subprocess.run(["fusermount3", "-uz", str(m.mnt)], capture_output=True, check=False)

    def cleanup(self) -> None:
        for m in reversed(self.mounts):
            if m.proc.poll() is None:
                subprocess.run(["fusermount3", "-u", str(m.mnt)], capture_output=True, check=False)
                try:
                    m.proc.wait(UNMOUNT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.kill(m)
            if os.path.ismount(m.mnt) or _stale(m.mnt):
                subprocess.run(["fusermount3", "-uz", str(m.mnt)], capture_output=True, check=False)


def _stale(p: Path) -> bool:
    try:
        os.stat(p)
    except OSError:
        return True
    return False


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    base = Path(tempfile.mkdtemp(prefix="fusenas-test-"))
    os.chmod(base, 0o755)
    m = Mounter(base)
    try:
        yield m
    finally:
        m.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def metadata(request: pytest.FixtureRequest) -> str | None:
    """Where ``volume`` keeps its metadata: a module parametrizes it (indirect) to run on
    both, else the mkfs default."""
    return getattr(request, "param", None)


@pytest.fixture
def volume(tmp_path: Path, metadata: str | None) -> Path:
    """A fresh RAID5 volume (4 x 256M sparse members, 64M journal)."""
    return mkfs(tmp_path / "vol", metadata=metadata)


@pytest.fixture
def mounted(volume: Path, mounter: Mounter) -> Iterator[Mount]:
    m = mounter.mount(volume)
    yield m
    if m.proc.poll() is None:
        assert mounter.unmount(m) == 0, m.log()


@pytest.fixture
def mnt(mounted: Mount) -> Path:
    return mounted.mnt


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def wait_released(voldir: Path, timeout: float = 30.0) -> None:
    """Wait until the daemon has closed the volume (it holds the lock until it exits)."""
    fd = os.open(voldir / "fusenas.lock", os.O_RDWR)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, "the daemon still holds the volume"
                time.sleep(0.05)
    finally:
        os.close(fd)
