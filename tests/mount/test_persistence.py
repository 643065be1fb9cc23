"""What survives an unmount, a SIGTERM and a kill -9; what the mount command refuses."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.mount.conftest import FUSENAS, Mounter, mkfs, run_fusenas, wait_released

pytestmark = pytest.mark.mount


def populate(root: Path) -> None:
    os.makedirs(root / "dir" / "sub")
    (root / "dir" / "small").write_bytes(b"hello\n")
    (root / "dir" / "sub" / "big").write_bytes(hashlib.sha256(b"x").digest() * 40000)
    with open(root / "sparse", "wb") as f:
        f.seek(100 << 20)
        f.write(b"tail")
    os.symlink("dir/small", root / "link")
    os.link(root / "dir" / "small", root / "hard")
    os.setxattr(root / "dir" / "small", "user.k", b"v" * 300)
    os.setxattr(root / "dir", "user.d", b"")
    os.chmod(root / "dir" / "sub", 0o700)
    os.utime(root / "sparse", ns=(123_456_789, 987_654_321))
    os.mkfifo(root / "fifo")


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = os.lstat(p)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            xattrs = (
                {} if stat.S_ISLNK(st.st_mode) else {k: os.getxattr(p, k) for k in os.listxattr(p)}
            )
            out[str(p.relative_to(root))] = (
                st.st_mode,
                st.st_nlink,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
                content,
                sorted(xattrs.items()),
            )
    return out


@pytest.mark.parametrize("level", ["raid0", "raid1", "raid5", "raid6", "raid10"])
def test_unmount_and_mount_again_is_identical(level: str, tmp_path: Path, mounter: Mounter) -> None:
    vol = mkfs(tmp_path / "vol", level)
    m = mounter.mount(vol)
    populate(m.mnt)
    before = snapshot(m.mnt)
    assert mounter.unmount(m) == 0, m.log()
    m2 = mounter.mount(vol, m.mnt)
    assert snapshot(m2.mnt) == before
    assert "replayed" not in m2.log()
    assert mounter.unmount(m2) == 0, m2.log()


WRITER = textwrap.dedent(
    """
    import hashlib, os, sys
    mnt, record = sys.argv[1], sys.argv[2]
    with open(record, "a", buffering=1) as rec:
        i = 0
        while True:
            name = f"f{i:05d}"
            data = hashlib.sha256(name.encode()).digest() * (1 + i * 37 % 3000)
            fd = os.open(os.path.join(mnt, name), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            rec.write(name + "\\n")
            i += 1
    """
)


def expected(name: str) -> bytes:
    i = int(name[1:])
    return hashlib.sha256(name.encode()).digest() * (1 + i * 37 % 3000)


@pytest.mark.parametrize("metadata", ["image", "tree"])
def test_kill_9_keeps_every_fsynced_file(tmp_path: Path, mounter: Mounter, metadata: str) -> None:
    vol = mkfs(tmp_path / "vol", metadata=metadata)
    m = mounter.mount(vol)
    record = tmp_path / "fsynced"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(m.mnt), str(record)],
        stderr=subprocess.DEVNULL,
    )
    try:
        # Kill once the writer is well into its loop (progress, not time: a loaded machine is
        # slow, and a timing threshold does not belong in a test).
        deadline = time.monotonic() + 120
        while not record.exists() or len(record.read_text().split()) < 20:
            assert writer.poll() is None, "the writer died"
            assert time.monotonic() < deadline, "the writer made no progress in 120 s"
            time.sleep(0.05)
        mounter.kill(m)  # the daemon dies mid-loop: SIGKILL, then fusermount3 -uz
    finally:
        writer.kill()
        writer.wait(10)
    names = record.read_text().split()
    assert len(names) >= 20
    m2 = mounter.mount(vol, m.mnt)
    for name in names:
        assert (m2.mnt / name).read_bytes() == expected(name), name
    assert "replayed" in m2.log()
    assert mounter.unmount(m2) == 0, m2.log()


def test_kill_9_after_more_data_than_the_cache_holds_recovers(
    tmp_path: Path, mounter: Mounter
) -> None:
    """kill -9 with more data in the journal than the stripe cache holds (64M journal: an
    8 MiB cache): the next mount replays it all (it used to wait forever for cache room
    during replay) and every fsynced byte is there. Written 60 KiB at a time: each write's
    allocation is smaller than a stripe, so none of it is an ordered (unjournaled) write."""
    vol = mkfs(tmp_path / "vol")
    m = mounter.mount(vol, None, "-o", "max_dirty=1M")
    payload = os.urandom(12 << 20)
    fd = os.open(m.mnt / "big", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for off in range(0, len(payload), 60 << 10):
            os.write(fd, payload[off : off + (60 << 10)])
        os.fsync(fd)
    finally:
        os.close(fd)
    mounter.kill(m)
    m2 = mounter.mount(vol, m.mnt, "-o", "max_dirty=1M")
    assert "replayed" in m2.log(), m2.log()
    assert (m2.mnt / "big").read_bytes() == payload
    assert mounter.unmount(m2) == 0, m2.log()


def test_sigterm_unmounts_cleanly(volume: Path, mounter: Mounter) -> None:
    m = mounter.mount(volume)
    (m.mnt / "f").write_bytes(b"data" * 1000)
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(30) == 0, m.log()
    assert not os.path.ismount(m.mnt)
    m2 = mounter.mount(volume, m.mnt)
    assert "replayed" not in m2.log()
    assert (m2.mnt / "f").read_bytes() == b"data" * 1000
    assert mounter.unmount(m2) == 0


def test_background_mount_returns_when_ready(volume: Path, mounter: Mounter) -> None:
    mnt = mounter.mountpoint()
    r = run_fusenas(str(volume), str(mnt))
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mnt)
        (mnt / "f").write_bytes(b"x")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    wait_released(volume)  # the daemon releases the volume lock when it has closed it
    assert "closed cleanly" in (volume / "fusenas.log").read_text()


def test_refusals(volume: Path, mounter: Mounter, tmp_path: Path) -> None:
    m = mounter.mount(volume)
    other = mounter.mountpoint()
    r = run_fusenas(str(volume), str(other), "-f")
    assert r.returncode == 1 and "already mounted" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_fusenas(str(volume), str(m.mnt), "-f")
    assert r.returncode == 1 and "already a mount point" in r.stderr
    r = run_fusenas(str(volume), str(tmp_path / "missing"), "-f")
    assert r.returncode == 1 and "does not exist" in r.stderr
    (tmp_path / "file").write_bytes(b"")
    r = run_fusenas(str(volume), str(tmp_path / "file"), "-f")
    assert r.returncode == 1 and "not a directory" in r.stderr
    r = run_fusenas(str(tmp_path), str(other), "-f")
    assert r.returncode == 1 and "not a fusenas volume" in r.stderr
    r = run_fusenas(str(volume), str(other), "-f", "-o", "rw,bogus_option")
    assert r.returncode == 2 and "unknown mount option 'bogus_option'" in r.stderr
    assert not os.path.ismount(other)
    assert mounter.unmount(m) == 0


def test_fstab_style_options_are_accepted(volume: Path, mounter: Mounter) -> None:
    m = mounter.mount(
        volume, None, "-o", "rw,nodev,nosuid,noauto,nofail,_netdev,defaults", "-o", "max_dirty=64M"
    )
    line = next(x for x in Path("/proc/mounts").read_text().splitlines() if str(m.mnt) in x)
    assert f"fusenas:{volume}" in line and "fuse.fusenas" in line
    assert "nosuid" in line and "nodev" in line
    assert mounter.unmount(m) == 0


def test_help() -> None:
    r = subprocess.run([FUSENAS, "/x", "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "allow_other" in r.stdout and "default_permissions" in r.stdout
