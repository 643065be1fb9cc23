"""POSIX behaviour through a real mount: os.* calls, errno as ext4 gives them."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import xattr

from tests.mount.conftest import requires_root

pytestmark = pytest.mark.mount

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def errno_of(fn, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    return info.value.errno  # type: ignore[no-any-return]


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


# -- namespace ---------------------------------------------------------------------------


#: Every test here runs on both metadata backends: the in-memory image and the pages.
pytestmark = pytest.mark.parametrize("metadata", ["image", "tree"], indirect=True)


def test_create_lookup_getattr_unlink(mnt: Path) -> None:
    p = mnt / "f"
    old_umask = os.umask(0o022)
    try:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o666)
    finally:
        os.umask(old_umask)
    os.write(fd, b"abc")
    os.close(fd)
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_size == 3 and st.st_nlink == 1 and st.st_blksize == 4096
    assert st.st_uid == os.getuid() and st.st_gid == os.getgid()
    assert errno_of(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert errno_of(os.stat, mnt / "missing") == errno.ENOENT
    assert errno_of(os.stat, p / "x") == errno.ENOTDIR
    assert errno_of(os.open, mnt / ("n" * 256), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    (mnt / ("n" * 255)).write_bytes(b"")
    os.unlink(p)
    assert errno_of(os.unlink, p) == errno.ENOENT
    assert os.listdir(mnt) == ["n" * 255]


def test_mkdir_rmdir_errors(mnt: Path) -> None:
    d = mnt / "d"
    os.mkdir(d, 0o750)
    assert stat.S_ISDIR(os.stat(d).st_mode) and os.stat(d).st_nlink == 2
    assert os.stat(mnt).st_nlink == 3
    assert errno_of(os.mkdir, d) == errno.EEXIST
    (d / "f").write_bytes(b"x")
    assert errno_of(os.rmdir, d) == errno.ENOTEMPTY
    assert errno_of(os.unlink, d) == errno.EISDIR
    assert errno_of(os.rmdir, d / "f") == errno.ENOTDIR
    assert errno_of(os.open, d, os.O_WRONLY) == errno.EISDIR
    os.unlink(d / "f")
    os.rmdir(d)
    assert errno_of(os.rmdir, d) == errno.ENOENT
    assert os.stat(mnt).st_nlink == 2
    # "." and ".." lookups
    os.makedirs(mnt / "a" / "b")
    assert os.stat(mnt / "a" / "b" / "..").st_ino == os.stat(mnt / "a").st_ino
    assert os.stat(mnt / "a" / ".").st_ino == os.stat(mnt / "a").st_ino


def test_symlink_readlink_link(mnt: Path) -> None:
    (mnt / "t").write_bytes(b"target")
    os.symlink("t", mnt / "s")
    assert os.readlink(mnt / "s") == "t"
    assert (mnt / "s").read_bytes() == b"target"
    assert stat.S_ISLNK(os.lstat(mnt / "s").st_mode) and os.lstat(mnt / "s").st_size == 1
    assert errno_of(os.symlink, "t", mnt / "s") == errno.EEXIST
    assert errno_of(os.readlink, mnt / "t") == errno.EINVAL
    os.link(mnt / "t", mnt / "h")
    assert os.stat(mnt / "t").st_nlink == 2
    assert os.stat(mnt / "h").st_ino == os.stat(mnt / "t").st_ino
    assert errno_of(os.link, mnt / "t", mnt / "h") == errno.EEXIST
    os.mkdir(mnt / "d")
    assert errno_of(os.link, mnt / "d", mnt / "d2") == errno.EPERM
    os.unlink(mnt / "t")
    assert (mnt / "h").read_bytes() == b"target" and os.stat(mnt / "h").st_nlink == 1


def test_rename_replace_noreplace_exchange(mnt: Path) -> None:
    (mnt / "a").write_bytes(b"A")
    (mnt / "b").write_bytes(b"B")
    os.rename(mnt / "a", mnt / "c")
    assert (mnt / "c").read_bytes() == b"A" and not (mnt / "a").exists()
    os.replace(mnt / "c", mnt / "b")
    assert (mnt / "b").read_bytes() == b"A" and not (mnt / "c").exists()
    (mnt / "x").write_bytes(b"X")
    with pytest.raises(OSError) as info:
        renameat2(mnt / "x", mnt / "b", RENAME_NOREPLACE)
    assert info.value.errno == errno.EEXIST
    renameat2(mnt / "x", mnt / "y", RENAME_NOREPLACE)
    renameat2(mnt / "y", mnt / "b", RENAME_EXCHANGE)
    assert (mnt / "b").read_bytes() == b"X" and (mnt / "y").read_bytes() == b"A"
    with pytest.raises(OSError) as info:
        renameat2(mnt / "y", mnt / "nope", RENAME_EXCHANGE)
    assert info.value.errno == errno.ENOENT
    os.makedirs(mnt / "d1" / "sub")
    os.mkdir(mnt / "d2")
    (mnt / "d2" / "f").write_bytes(b"")
    assert errno_of(os.rename, mnt / "d1", mnt / "d2") == errno.ENOTEMPTY
    assert errno_of(os.rename, mnt / "d1", mnt / "d1" / "sub" / "in") == errno.EINVAL
    assert errno_of(os.rename, mnt / "b", mnt / "d1") == errno.EISDIR
    assert errno_of(os.rename, mnt / "d1", mnt / "b") == errno.ENOTDIR
    os.rename(mnt / "d1", mnt / "d2" / "moved")  # across directories: never EXDEV
    assert os.stat(mnt / "d2").st_nlink == 3
    assert (
        os.stat(mnt / "d2" / "moved" / "sub" / "..").st_ino == os.stat(mnt / "d2" / "moved").st_ino
    )


def test_unlink_while_open(mnt: Path) -> None:
    p = mnt / "f"
    p.write_bytes(b"hello")
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not p.exists()
        assert os.pread(fd, 5, 0) == b"hello"
        os.pwrite(fd, b" world", 5)
        assert os.pread(fd, 100, 0) == b"hello world"
        assert os.fstat(fd).st_nlink == 0
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.listdir(mnt) == []


# -- data ------------------------------------------------------------------------------


def test_read_write_sparse_and_past_4gib(mnt: Path) -> None:
    p = mnt / "sparse"
    with open(p, "wb") as f:
        f.seek(5 << 30)
        f.write(b"end of a 5 GiB file")
    st = os.stat(p)
    assert st.st_size == (5 << 30) + 19
    assert st.st_blocks <= 16  # one 4 KiB block
    with open(p, "rb") as f:
        assert f.read(4096) == bytes(4096)
        f.seek((4 << 30) - 100)
        assert f.read(200) == bytes(200)
        f.seek(5 << 30)
        assert f.read() == b"end of a 5 GiB file"
    # unaligned overwrite across block boundaries, then read back
    data = os.urandom(3 * 4096 + 123)
    with open(p, "r+b") as f:
        f.seek(4000)
        f.write(data)
    with open(p, "rb") as f:
        f.seek(3990)
        got = f.read(len(data) + 20)
    assert got == bytes(10) + data + bytes(10)


def test_large_write_roundtrip_and_statfs(mnt: Path) -> None:
    before = os.statvfs(mnt)
    assert before.f_bsize == 4096 and before.f_blocks > 0 and before.f_bfree > 0
    assert before.f_files > 0 and before.f_ffree > 0 and before.f_namemax == 255
    data = os.urandom(8 << 20)
    (mnt / "big").write_bytes(data)
    assert (mnt / "big").read_bytes() == data
    after = os.statvfs(mnt)
    assert before.f_bfree - after.f_bfree >= (8 << 20) // 4096
    assert after.f_ffree < before.f_ffree
    assert os.stat(mnt / "big").st_blocks == (8 << 20) // 512


def test_truncate_up_and_down(mnt: Path) -> None:
    p = mnt / "t"
    p.write_bytes(b"x" * 10000)
    os.truncate(p, 5000)
    assert p.read_bytes() == b"x" * 5000
    os.truncate(p, 12000)  # the tail of the cut block must read as zeros
    assert p.read_bytes() == b"x" * 5000 + bytes(7000)
    with open(p, "r+b") as f:
        f.truncate(0)
    assert p.read_bytes() == b"" and os.stat(p).st_blocks == 0
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    p.write_bytes(b"abc")
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(p).st_size == 0


def test_o_append(mnt: Path) -> None:
    p = mnt / "log"
    p.write_bytes(b"one\n")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"two\n")
    os.close(fd)
    with open(p, "ab") as f:
        f.write(b"three\n")
    assert p.read_bytes() == b"one\ntwo\nthree\n"


def test_fsync_fdatasync_fsyncdir(mnt: Path) -> None:
    fd = os.open(mnt / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"durable")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)


# -- attributes --------------------------------------------------------------------------


def test_chmod_chown_utimens(mnt: Path) -> None:
    p = mnt / "f"
    p.write_bytes(b"")
    os.chmod(p, 0o4750)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o4750
    os.chown(p, 1234, 5678)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(p, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    ctime = st.st_ctime_ns
    # UTIME_OMIT for atime, explicit mtime (through ctypes utimensat)
    omit = (1 << 30) - 2
    times = (ctypes.c_long * 4)(0, omit, 3, 789)
    assert _libc.utimensat(AT_FDCWD, bytes(p), times, 0) == 0
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 3_000_000_789)
    assert st.st_ctime_ns >= ctime
    # UTIME_NOW via os.utime(None)
    now = time.time_ns()
    os.utime(p)
    assert abs(os.stat(p).st_mtime_ns - now) < 5_000_000_000


def test_xattrs(mnt: Path) -> None:
    p = mnt / "f"
    p.write_bytes(b"")
    os.setxattr(p, "user.a", b"1")
    os.setxattr(p, "user.b", b"22")
    assert sorted(os.listxattr(p)) == ["user.a", "user.b"]
    assert os.getxattr(p, "user.b") == b"22"
    assert errno_of(os.setxattr, p, "user.a", b"x", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, p, "user.c", b"x", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(p, "user.a", b"replaced", os.XATTR_REPLACE)
    assert xattr.getxattr(str(p), "user.a") == b"replaced"
    assert errno_of(os.getxattr, p, "user.none") == errno.ENODATA
    assert errno_of(os.removexattr, p, "user.none") == errno.ENODATA
    os.removexattr(p, "user.a")
    assert os.listxattr(p) == ["user.b"]
    # a buffer too small: ERANGE
    buf = ctypes.create_string_buffer(1)
    assert _libc.getxattr(bytes(p), b"user.b", buf, 1) == -1
    assert ctypes.get_errno() == errno.ERANGE
    assert _libc.getxattr(bytes(p), b"user.b", None, 0) == 2  # size probe
    os.mkdir(mnt / "d")
    os.setxattr(mnt / "d", "user.dir", b"v")
    assert os.getxattr(mnt / "d", "user.dir") == b"v"


@requires_root
def test_mknod_fifo_socket_chardev(mnt: Path) -> None:
    os.mkfifo(mnt / "fifo", 0o600)
    assert stat.S_ISFIFO(os.stat(mnt / "fifo").st_mode)
    os.mknod(mnt / "chr", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.stat(mnt / "chr")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(mnt / "sock"))
    finally:
        s.close()
    assert stat.S_ISSOCK(os.stat(mnt / "sock").st_mode)
    os.mknod(mnt / "reg", 0o640)
    assert stat.S_ISREG(os.stat(mnt / "reg").st_mode)


@requires_root
def test_setgid_directory_inheritance(mnt: Path) -> None:
    d = mnt / "shared"
    os.mkdir(d)
    os.chown(d, 0, 4321)
    os.chmod(d, 0o2775)
    (d / "f").write_bytes(b"")
    os.mkdir(d / "sub")
    assert os.stat(d / "f").st_gid == 4321
    assert os.stat(d / "sub").st_gid == 4321
    assert os.stat(d / "sub").st_mode & stat.S_ISGID


@requires_root
def test_sticky_and_permissions_as_other_user(mnt: Path) -> None:
    tmp = mnt / "tmp"
    os.mkdir(tmp)
    os.chmod(tmp, 0o1777)
    (tmp / "roots").write_bytes(b"mine")
    os.chmod(tmp / "roots", 0o666)
    r = as_nobody("rm", "-f", str(tmp / "roots"))
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    assert (tmp / "roots").exists()
    r = as_nobody("touch", str(tmp / "nobodys"))
    assert r.returncode == 0, r.stderr
    assert os.stat(tmp / "nobodys").st_uid == 65534
    assert as_nobody("rm", str(tmp / "nobodys")).returncode == 0
    secret = mnt / "secret"
    secret.write_bytes(b"s")
    os.chmod(secret, 0o600)
    r = as_nobody("cat", str(secret))
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert as_nobody("test", "-r", str(secret)).returncode == 1  # access(2)
    assert as_nobody("test", "-r", str(mnt / "tmp")).returncode == 0


# -- directories -------------------------------------------------------------------------


def test_readdir_stable_while_changing(mnt: Path) -> None:
    d = mnt / "d"
    os.mkdir(d)
    names = {f"f{i:04d}" for i in range(600)}
    for n in names:
        (d / n).write_bytes(b"")
    seen: list[str] = []
    removed: set[str] = set()
    with os.scandir(d) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i % 10 == 0:
                (d / f"new{i}").write_bytes(b"")  # may or may not be listed
                victim = f"f{(i * 7) % 600:04d}"
                if victim not in seen and victim not in removed:
                    os.unlink(d / victim)
                    removed.add(victim)
    listed = [n for n in seen if n.startswith("f")]
    assert len(listed) == len(set(listed)), "an entry was listed twice"
    assert names - removed <= set(listed), "an entry present throughout was missed"
    assert sorted(os.listdir(d)) == sorted(
        (names - removed) | {n for n in os.listdir(d) if n.startswith("new")}
    )
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(os.listdir(dfd)) == len(os.listdir(d))
    finally:
        os.close(dfd)


@requires_root
def test_write_and_chown_clear_set_id_bits(mnt: Path) -> None:
    p = mnt / "prog"
    p.write_bytes(b"#!/bin/sh\n")
    os.chown(p, 65534, 65534)
    os.chmod(p, 0o6755)
    r = as_nobody("sh", "-c", f"echo more >> {p}")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o755
    os.chmod(p, 0o4755)
    os.chown(p, 0, 0)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o755
