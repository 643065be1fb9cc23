"""Export support without NFS: what an NFS server needs from the mount.

A FUSE file handle is (nodeid, generation). Once the kernel has dropped an inode, decoding a
handle sends LOOKUP(nodeid, ".") to the daemon (for files too, not only directories), and
reconnecting a directory to the tree walks ".." upwards. Inode numbers and generations must
survive a remount and never be reused, and statfs must give the volume's real figures.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from tests.mount.conftest import Mount, Mounter, requires_root
from tests.nfs.handles import drop_caches, name_to_handle, open_by_handle

pytestmark = [pytest.mark.mount, requires_root]


def _mount_fd(mnt: Path) -> int:
    return os.open(mnt, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _tree(mnt: Path) -> None:
    (mnt / "a" / "b" / "c").mkdir(parents=True)
    (mnt / "a" / "b" / "c" / "f").write_bytes(b"deep file\n")
    (mnt / "top").write_bytes(os.urandom(3 * 4096 + 17))
    os.symlink("a/b/c/f", mnt / "link")


def test_handles_decode_after_drop_caches(mounted: Mount) -> None:
    mnt = mounted.mnt
    _tree(mnt)
    names = ["a", "a/b", "a/b/c", "a/b/c/f", "top"]
    handles = {n: name_to_handle(mnt / n) for n in names}
    inos = {n: os.stat(mnt / n).st_ino for n in names}
    link_handle = name_to_handle(mnt / "link", follow=False)
    link_ino = os.lstat(mnt / "link").st_ino
    top = (mnt / "top").read_bytes()
    mfd = _mount_fd(mnt)
    try:
        for _ in range(2):  # the second round decodes what the first round brought back
            drop_caches()
            for n in names:
                fd = open_by_handle(mfd, handles[n])
                try:
                    assert os.fstat(fd).st_ino == inos[n], n
                    assert _fd_path(fd) == str(mnt / n)  # reconnected through ".."
                    if n == "a/b/c/f":
                        assert os.read(fd, 100) == b"deep file\n"
                    elif n == "top":
                        assert os.pread(fd, len(top) + 1, 0) == top
                    else:
                        assert stat.S_ISDIR(os.fstat(fd).st_mode)
                        assert sorted(os.listdir(fd)) == sorted(os.listdir(mnt / n))
                finally:
                    os.close(fd)
            fd = open_by_handle(mfd, link_handle, os.O_PATH | os.O_NOFOLLOW)
            try:
                assert os.fstat(fd).st_ino == link_ino
                assert os.readlink("", dir_fd=fd) == "a/b/c/f"
            finally:
                os.close(fd)
        # A directory opened by handle knows its real parent: openat("..") from it.
        drop_caches()
        fd = open_by_handle(mfd, handles["a/b/c"])
        try:
            assert os.stat("..", dir_fd=fd).st_ino == inos["a/b"]
            assert os.stat("../..", dir_fd=fd).st_ino == inos["a"]
            assert os.stat("../../..", dir_fd=fd).st_ino == os.stat(mnt).st_ino
        finally:
            os.close(fd)
    finally:
        os.close(mfd)


def test_dotdot_nested_and_after_rename(mounted: Mount) -> None:
    mnt = mounted.mnt
    deep = mnt.joinpath(*[f"d{i}" for i in range(8)])
    deep.mkdir(parents=True)
    (mnt / "other").mkdir()
    p = deep
    while p != mnt:
        assert os.stat(p / "..").st_ino == os.stat(p.parent).st_ino, p
        p = p.parent
    assert os.stat(mnt / "..").st_ino == os.stat(mnt.parent).st_ino  # the mount's own ".."
    h = name_to_handle(deep)
    # Move a middle directory elsewhere: ".." of the moved one is its new parent, and a
    # handle decoded after the caches are gone reconnects through the new path.
    os.rename(mnt / "d0" / "d1" / "d2", mnt / "other" / "moved")
    moved = mnt / "other" / "moved"
    assert os.stat(moved / "..").st_ino == os.stat(mnt / "other").st_ino
    mfd = _mount_fd(mnt)
    try:
        drop_caches()
        fd = open_by_handle(mfd, h)
        try:
            assert _fd_path(fd) == str(moved.joinpath(*[f"d{i}" for i in range(3, 8)]))
            up = moved.joinpath(*[f"d{i}" for i in range(3, 7)])
            assert os.stat("..", dir_fd=fd).st_ino == os.stat(up).st_ino
        finally:
            os.close(fd)
    finally:
        os.close(mfd)


def test_deleted_file_handle_is_stale_and_never_reused(mounted: Mount) -> None:
    mnt = mounted.mnt
    (mnt / "gone").write_bytes(b"x")
    (mnt / "gonedir").mkdir()
    h = name_to_handle(mnt / "gone")
    hd = name_to_handle(mnt / "gonedir")
    old = os.stat(mnt / "gone").st_ino
    os.unlink(mnt / "gone")
    os.rmdir(mnt / "gonedir")
    for i in range(20):  # new inodes never take the old numbers
        (mnt / f"new{i}").write_bytes(b"y")
        assert os.stat(mnt / f"new{i}").st_ino > old
    mfd = _mount_fd(mnt)
    try:
        drop_caches()
        for handle in (h, hd):
            with pytest.raises(OSError) as exc:
                os.close(open_by_handle(mfd, handle))
            assert exc.value.errno == errno.ESTALE
    finally:
        os.close(mfd)


def test_inodes_generations_and_handles_stable_across_remount(
    volume: Path, mounter: Mounter
) -> None:
    m = mounter.mount(volume)
    mnt = m.mnt
    _tree(mnt)
    (mnt / "dead").write_bytes(b"z")
    names = ["a", "a/b", "a/b/c", "a/b/c/f", "top", "link"]
    inos = {n: os.lstat(mnt / n).st_ino for n in names}
    handles = {n: name_to_handle(mnt / n, follow=False) for n in names}
    dead = os.stat(mnt / "dead").st_ino
    os.unlink(mnt / "dead")
    top = (mnt / "top").read_bytes()
    assert mounter.unmount(m) == 0, m.log()

    m = mounter.mount(volume, mnt)
    assert {n: os.lstat(mnt / n).st_ino for n in names} == inos
    # The handle bytes hold (nodeid, generation): identical handles mean both are stable.
    assert {n: name_to_handle(mnt / n, follow=False).data for n in names} == {
        n: h.data for n, h in handles.items()
    }
    mfd = _mount_fd(mnt)
    try:
        fd = open_by_handle(mfd, handles["top"])  # an old handle, on the new mount
        try:
            assert os.pread(fd, len(top) + 1, 0) == top
        finally:
            os.close(fd)
        fd = open_by_handle(mfd, handles["a/b/c"])
        try:
            assert os.listdir(fd) == ["f"]
            assert _fd_path(fd) == str(mnt / "a/b/c")
        finally:
            os.close(fd)
    finally:
        os.close(mfd)
    # The number of the file deleted before the remount is not given out again.
    (mnt / "fresh").write_bytes(b"w")
    assert os.stat(mnt / "fresh").st_ino > max(*inos.values(), dead)
    assert mounter.unmount(m) == 0, m.log()


def test_statfs_real_figures(mounted: Mount) -> None:
    mnt = mounted.mnt
    s0 = os.statvfs(mnt)
    assert s0.f_bsize == 4096 and s0.f_frsize == 4096
    assert s0.f_namemax == 255
    # RAID5 over 4 x 256 MiB members: 3 x 256 MiB of data less superblocks and checkpoints.
    total = s0.f_blocks * s0.f_frsize
    assert 600 << 20 < total <= 768 << 20
    assert 0 < s0.f_bfree <= s0.f_blocks and s0.f_bavail == s0.f_bfree
    assert s0.f_files > 1000 and 0 < s0.f_ffree < s0.f_files
    with open(mnt / "fill", "wb") as f:
        f.write(os.urandom(8 << 20))
        f.flush()
        os.fsync(f.fileno())
    for i in range(10):
        (mnt / f"e{i}").touch()
    s1 = os.statvfs(mnt)
    assert s1.f_blocks == s0.f_blocks
    assert s0.f_bfree - s1.f_bfree >= (8 << 20) // 4096
    assert s0.f_bfree - s1.f_bfree < (9 << 20) // 4096
    assert s0.f_ffree - s1.f_ffree == 11
    os.unlink(mnt / "fill")
    # The space comes back once the kernel's last reference (release/forget, sent
    # asynchronously after close and unlink) lets the orphan go.
    deadline = time.monotonic() + 10
    while os.statvfs(mnt).f_bfree - s1.f_bfree < (8 << 20) // 4096:
        assert time.monotonic() < deadline, os.statvfs(mnt)
        time.sleep(0.05)
    assert os.statvfs(mnt).f_ffree == s1.f_ffree + 1
