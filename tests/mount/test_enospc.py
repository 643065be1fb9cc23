"""A full volume: ENOSPC (never EIO, never a hang), nothing lost, space comes back, fsck clean.

A small RAID5 volume (4 members of 40 MiB, 16 MiB journal: about 85 MiB of data blocks and
33k inodes) is filled through the mount: data blocks, then inodes, then the metadata image.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mount.conftest import Mounter, run_fusenas

pytestmark = [pytest.mark.mount, pytest.mark.timeout(240)]

MiB = 1 << 20


def small_volume(voldir: Path) -> Path:
    r = run_fusenas(
        "mkfs",
        str(voldir),
        "--level",
        "raid5",
        "--members",
        "4",
        "--size",
        "40M",
        "--journal-size",
        "16M",
    )
    assert r.returncode == 0, r.stderr
    return voldir


def fsck(voldir: Path) -> None:
    r = run_fusenas("fsck", str(voldir), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def errno_of(fn, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    return info.value.errno  # type: ignore[no-any-return]


def write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def free_blocks(mnt: Path) -> int:
    return os.statvfs(mnt).f_bavail


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """An unlinked inode is reclaimed when the kernel sends FORGET for it, which FUSE does
    asynchronously after unlink(2) returns (ext4 frees at once): poll briefly."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} after {timeout} s"
        time.sleep(0.05)


def test_write_until_enospc(tmp_path: Path, mounter: Mounter) -> None:
    vol = small_volume(tmp_path / "vol")
    m = mounter.mount(vol)
    mnt = m.mnt
    st = os.statvfs(mnt)
    assert st.f_frsize == 4096 and 60 * MiB < st.f_blocks * 4096 < 120 * MiB

    keep = {f"keep{i}": os.urandom(2 * MiB + 1234 * i) for i in range(3)}
    for name, data in keep.items():
        write_file(mnt / name, data)

    # Fill with 1 MiB writes, then 4 KiB writes, until ENOSPC: an error, never EIO or a hang.
    pattern = os.urandom(MiB)
    fd = os.open(mnt / "fill", os.O_CREAT | os.O_WRONLY, 0o644)
    written = 0
    try:
        for size in (MiB, 4096):
            while True:
                off = written % MiB
                try:
                    n = os.write(fd, pattern[off : off + size])
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
                assert n > 0
                written += n
                assert written < 200 * MiB, "no ENOSPC after writing more than the volume holds"
        os.fsync(fd)  # a full volume still makes what it accepted durable
    finally:
        os.close(fd)
    assert free_blocks(mnt) == 0
    assert written > 70 * MiB
    assert os.stat(mnt / "fill").st_size == written

    # A new file can be created (inodes are left) but not given a byte.
    fd = os.open(mnt / "one", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert errno_of(os.write, fd, b"x") == errno.ENOSPC
        assert errno_of(os.pwrite, fd, b"y" * 8192, 1 << 30) == errno.ENOSPC  # sparse, too
    finally:
        os.close(fd)
    assert os.stat(mnt / "one").st_size == 0
    # Namespace and attribute changes need no data blocks.
    os.rename(mnt / "one", mnt / "one-renamed")
    os.chmod(mnt / "one-renamed", 0o600)
    os.setxattr(mnt / "one-renamed", "user.k", b"v" * 100)
    os.truncate(mnt / "keep0", 2 * MiB)  # block-aligned: frees, needs nothing

    # Everything written before (and everything accepted) is intact.
    for name, data in keep.items():
        want = data[: 2 * MiB] if name == "keep0" else data
        assert (mnt / name).read_bytes() == want, name
    with open(mnt / "fill", "rb") as f:
        pos = 0
        while chunk := f.read(MiB):
            assert chunk == pattern[: len(chunk)], f"fill differs at {pos}"
            pos += len(chunk)
    assert pos == written

    # Deleting a file frees its blocks at once; a new write then succeeds.
    before = free_blocks(mnt)
    os.unlink(mnt / "keep2")
    freed = (2 * MiB + 2468) // 4096
    wait_for("keep2's blocks are not free", lambda: free_blocks(mnt) >= before + freed)
    fresh = os.urandom(MiB + 17)
    write_file(mnt / "fresh", fresh)
    assert (mnt / "fresh").read_bytes() == fresh

    assert mounter.unmount(m) == 0, m.log()
    fsck(vol)
    m = mounter.mount(vol, m.mnt)
    assert (m.mnt / "fresh").read_bytes() == fresh
    assert (m.mnt / "keep1").read_bytes() == keep["keep1"]
    assert os.stat(m.mnt / "fill").st_size == written
    assert sorted(os.listdir(m.mnt)) == ["fill", "fresh", "keep0", "keep1", "one-renamed"]
    assert mounter.unmount(m) == 0, m.log()
    fsck(vol)


def test_enospc_when_inodes_run_out(tmp_path: Path, mounter: Mounter) -> None:
    vol = small_volume(tmp_path / "vol")
    m = mounter.mount(vol)
    mnt = m.mnt
    d = mnt / "d"
    os.mkdir(d)
    ffree = os.statvfs(mnt).f_ffree
    assert 1000 < ffree < 100_000
    made = 0
    while True:
        try:
            os.mknod(d / str(made), stat.S_IFREG | 0o644)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            break
        made += 1
        assert made <= ffree, "more files than free inodes"
    assert made == ffree
    assert os.statvfs(mnt).f_ffree == 0
    assert errno_of(os.mkdir, mnt / "x") == errno.ENOSPC
    assert errno_of(os.symlink, "target", mnt / "x") == errno.ENOSPC
    assert errno_of(os.open, mnt / "x", os.O_CREAT | os.O_WRONLY) == errno.ENOSPC
    assert errno_of(os.mkfifo, mnt / "x") == errno.ENOSPC
    os.link(d / "0", mnt / "hard")  # a name, not an inode
    (mnt / "hard").write_bytes(b"data")  # data blocks are still free
    assert not os.path.exists(mnt / "x")

    # Unlinked inodes come back (once the kernel forgets them).
    for i in range(1, 11):
        os.unlink(d / str(i))
    wait_for("10 inodes not free", lambda: os.statvfs(mnt).f_ffree >= 10)
    for i in range(10):
        os.mkdir(mnt / f"new{i}")

    assert mounter.unmount(m) == 0, m.log()
    fsck(vol)
    m = mounter.mount(vol, m.mnt)
    assert len(os.listdir(m.mnt / "d")) == made - 10
    assert (m.mnt / "d" / "0").read_bytes() == b"data"
    assert os.stat(m.mnt / "hard").st_nlink == 2
    assert os.statvfs(m.mnt).f_ffree == 0
    assert mounter.unmount(m) == 0, m.log()


def test_enospc_when_the_metadata_image_is_full(tmp_path: Path, mounter: Mounter) -> None:
    """The metadata image must fit its checkpoint region (about 16 MiB here): xattrs that
    would overflow it fail with ENOSPC, and the volume still unmounts, checks and mounts."""
    vol = small_volume(tmp_path / "vol")
    m = mounter.mount(vol)
    value = os.urandom(60_000)
    stored = 0
    for i in range(1000):  # 60 MB of xattrs: several times the region
        p = m.mnt / f"f{i}"
        p.write_bytes(b"")
        try:
            os.setxattr(p, "user.big", value)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            break
        stored += 1
    assert 0 < stored < 1000, "60 MB of xattrs were accepted"
    assert mounter.unmount(m) == 0, m.log()
    fsck(vol)
    m = mounter.mount(vol, m.mnt)
    assert os.getxattr(m.mnt / "f0", "user.big") == value
    assert mounter.unmount(m) == 0, m.log()
