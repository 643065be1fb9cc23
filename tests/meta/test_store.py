"""MetadataStore: errno for each failure, setgid, rename rules, orphans, xattrs, statfs."""

from __future__ import annotations

import errno
import stat

import pytest

from fusenas.errors import FsError
from fusenas.meta.fsck import check
from fusenas.meta.ops import RENAME_EXCHANGE, RENAME_NOREPLACE, Reclaim, decode_op
from fusenas.meta.store import MetadataStore

REG = stat.S_IFREG | 0o644


@pytest.fixture
def log() -> list[bytes]:
    return []


@pytest.fixture
def s(log: list[bytes]) -> MetadataStore:
    return MetadataStore.create(
        data_blocks=64, stripe_blocks=4, max_inodes=50, journal=log.append, now_ns=1
    )


def _err(code: int, fn, *args, **kw) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FsError) as e:
        fn(*args, **kw)
    assert e.value.errno == code, (e.value.errno, code)


def test_create_kinds_and_parent_times(s: MetadataStore) -> None:
    f = s.mknod(1, b"f", REG, 0, 5, 6, 10)
    d = s.mkdir(1, b"d", 0o750, 5, 6, 11)
    ln = s.symlink(1, b"l", b"/x/y", 5, 6, 12)
    fifo = s.mknod(1, b"p", stat.S_IFIFO | 0o600, 7, 0, 0, 13)
    assert f.is_reg and f.nlink == 1 and f.uid == 5 and f.gid == 6
    assert d.is_dir and d.nlink == 2 and d.parent == 1
    assert ln.target == b"/x/y" and ln.size == 4
    assert fifo.rdev == 0
    root = s.get(1)
    assert root.nlink == 3 and root.mtime_ns == root.ctime_ns == 13
    assert s.lookup(1, b"d") is d
    assert s.lookup(d.ino, b"..") is root
    assert s.lookup(1, b".") is root
    assert len({f.ino, d.ino, ln.ino, fifo.ino}) == 4
    assert check(s) == []


def test_name_errors(s: MetadataStore) -> None:
    s.mknod(1, b"f", REG, 0, 0, 0, 2)
    _err(errno.EEXIST, s.mknod, 1, b"f", REG, 0, 0, 0, 3)
    _err(errno.ENAMETOOLONG, s.mkdir, 1, b"x" * 256, 0o755, 0, 0, 3)
    s.mkdir(1, b"x" * 255, 0o755, 0, 0, 3)
    _err(errno.EINVAL, s.mkdir, 1, b"a/b", 0o755, 0, 0, 3)
    _err(errno.EINVAL, s.mkdir, 1, b"a\0b", 0o755, 0, 0, 3)
    _err(errno.EEXIST, s.mkdir, 1, b".", 0o755, 0, 0, 3)
    _err(errno.ENOTDIR, s.mkdir, s.lookup(1, b"f").ino, b"z", 0o755, 0, 0, 3)
    _err(errno.ENOENT, s.lookup, 1, b"nope")
    _err(errno.ENOENT, s.get, 999)
    _err(errno.EINVAL, s.mknod, 1, b"dir", stat.S_IFDIR | 0o755, 0, 0, 0, 3)
    _err(errno.ENOENT, s.symlink, 1, b"l", b"", 0, 0, 3)
    _err(errno.ENAMETOOLONG, s.symlink, 1, b"l", b"x" * 4096, 0, 0, 3)


def test_setgid_directory_inheritance(s: MetadataStore) -> None:
    d = s.mkdir(1, b"d", 0o2775, 0, 100, 2)
    assert d.mode & stat.S_ISGID
    f = s.mknod(d.ino, b"f", REG, 0, 5, 6, 3)
    sub = s.mkdir(d.ino, b"sub", 0o755, 5, 6, 4)
    assert f.gid == 100 and not f.mode & stat.S_ISGID
    assert sub.gid == 100 and sub.mode & stat.S_ISGID
    plain = s.mkdir(1, b"p", 0o755, 0, 7, 5)
    assert s.mknod(plain.ino, b"g", REG, 0, 5, 6, 6).gid == 6


def test_link_unlink_rmdir(s: MetadataStore) -> None:
    f = s.mknod(1, b"f", REG, 0, 0, 0, 2)
    d = s.mkdir(1, b"d", 0o755, 0, 0, 3)
    s.link(f.ino, d.ino, b"g", 4)
    assert f.nlink == 2 and f.ctime_ns == 4
    _err(errno.EPERM, s.link, d.ino, 1, b"dd", 5)
    _err(errno.EEXIST, s.link, f.ino, 1, b"d", 5)
    _err(errno.EISDIR, s.unlink, 1, b"d", 5)
    _err(errno.ENOTDIR, s.rmdir, 1, b"f", 5)
    _err(errno.ENOTEMPTY, s.rmdir, 1, b"d", 5)
    _err(errno.ENOENT, s.unlink, 1, b"zz", 5)
    _err(errno.EINVAL, s.rmdir, 1, b".", 5)
    s.unlink(1, b"f", 6)
    assert f.nlink == 1 and f.ino in s.inodes
    s.unlink(d.ino, b"g", 7)
    assert f.ino not in s.inodes
    s.rmdir(1, b"d", 8)
    assert d.ino not in s.inodes and s.get(1).nlink == 2
    assert check(s) == []


def test_rename_rules(s: MetadataStore) -> None:
    a = s.mkdir(1, b"a", 0o755, 0, 0, 2)
    b = s.mkdir(a.ino, b"b", 0o755, 0, 0, 3)
    f = s.mknod(1, b"f", REG, 0, 0, 0, 4)
    g = s.mknod(1, b"g", REG, 0, 0, 0, 5)
    e = s.mkdir(1, b"e", 0o755, 0, 0, 6)
    _err(errno.EINVAL, s.rename, 1, b"a", b.ino, b"x", 0, 7)
    _err(errno.EINVAL, s.rename, 1, b"a", a.ino, b"x", 0, 7)
    _err(errno.EINVAL, s.rename, 1, b".", 1, b"x", 0, 7)
    _err(errno.EINVAL, s.rename, a.ino, b"..", 1, b"x", 0, 7)
    _err(errno.EISDIR, s.rename, 1, b"f", 1, b"e", 0, 7)
    _err(errno.ENOTDIR, s.rename, 1, b"e", 1, b"f", 0, 7)
    _err(errno.ENOTEMPTY, s.rename, 1, b"e", 1, b"a", 0, 7)
    _err(errno.EEXIST, s.rename, 1, b"f", 1, b"g", RENAME_NOREPLACE, 7)
    _err(errno.ENOENT, s.rename, 1, b"f", 1, b"zz", RENAME_EXCHANGE, 7)
    _err(errno.EINVAL, s.rename, 1, b"f", 1, b"g", 3, 7)
    _err(errno.ENOENT, s.rename, 1, b"zz", 1, b"g", 0, 7)
    # same inode: no-op, nothing journaled
    s.link(f.ino, 1, b"f2", 8)
    digest = s.state_digest()
    s.rename(1, b"f", 1, b"f2", 0, 9)
    assert s.state_digest() == digest
    # file replaces file; the replaced inode is reclaimed
    s.rename(1, b"f", 1, b"g", 0, 10)
    assert g.ino not in s.inodes and s.lookup(1, b"g") is f and f.nlink == 2
    # dir moves: nlink of both parents and ".."
    s.rename(a.ino, b"b", e.ino, b"b", 0, 11)
    assert b.parent == e.ino and a.nlink == 2 and e.nlink == 3
    # dir replaces empty dir
    s.rename(1, b"a", e.ino, b"b", 0, 12)
    assert b.ino not in s.inodes and a.parent == e.ino and e.nlink == 3
    assert s.get(1).nlink == 3  # root, e, and its own "."... 2 + one subdir (e)
    # exchange file and dir across directories
    s.rename(1, b"g", e.ino, b"b", RENAME_EXCHANGE, 13)
    assert s.lookup(1, b"g") is a and a.parent == 1 and s.lookup(e.ino, b"b") is f
    assert s.get(1).nlink == 4 and e.nlink == 2
    assert check(s) == []


def test_unlinked_open_file_is_orphan_until_release(s: MetadataStore, log: list[bytes]) -> None:
    f = s.mknod(1, b"f", REG, 0, 0, 0, 2)
    runs = s.plan_allocation(f.ino, 0, 4)
    s.map_blocks(f.ino, 0, runs, [1, 2, 3, 4], 4 * 4096, 3)
    s.open(f.ino)
    s.open(f.ino)
    s.unlink(1, b"f", 4)
    assert s.get(f.ino).nlink == 0 and s.orphans() == [f.ino]
    assert s.statfs().free_blocks == 60
    assert check(s) == []
    s.release(f.ino)
    assert f.ino in s.inodes
    s.release(f.ino)
    assert f.ino not in s.inodes
    assert decode_op(log[-1]) == Reclaim(f.ino)
    assert s.statfs().free_blocks == 64


def test_reclaim_orphans_after_replay(s: MetadataStore, log: list[bytes]) -> None:
    f = s.mknod(1, b"f", REG, 0, 0, 0, 2)
    s.open(f.ino)
    s.unlink(1, b"f", 3)
    other = MetadataStore.create(
        data_blocks=64, stripe_blocks=4, max_inodes=50, journal=lambda b: None, now_ns=1
    )
    for p in log:
        other.apply(decode_op(p))
    assert other.orphans() == [f.ino]
    assert other.reclaim_orphans() == 1
    assert other.orphans() == [] and check(other) == []


def test_setattr(s: MetadataStore) -> None:
    f = s.mknod(1, b"f", stat.S_IFREG | 0o644, 0, 0, 0, 2)
    s.setattr(f.ino, mode=0o4755, now_ns=3)
    assert f.mode == stat.S_IFREG | 0o4755 and f.ctime_ns == 3 and f.mtime_ns == 2
    s.setattr(f.ino, uid=9, gid=8, atime_ns=-5, now_ns=4)
    assert (f.uid, f.gid, f.atime_ns, f.ctime_ns) == (9, 8, -5, 4)
    runs = s.plan_allocation(f.ino, 0, 10)
    s.map_blocks(f.ino, 0, runs, list(range(10)), 10 * 4096, 5)
    s.setattr(f.ino, size=3 * 4096 + 1, now_ns=6)
    assert f.size == 3 * 4096 + 1 and f.mtime_ns == 6 and f.blocks == 4
    assert s.statfs().free_blocks == 60
    s.setattr(f.ino, size=10**6, now_ns=7)
    assert f.blocks == 4
    d = s.mkdir(1, b"d", 0o755, 0, 0, 8)
    _err(errno.EISDIR, s.setattr, d.ino, size=0, now_ns=9)
    _err(errno.EINVAL, s.setattr, f.ino, size=-1, now_ns=9)
    _err(errno.EFBIG, s.setattr, f.ino, size=1 << 50, now_ns=9)
    assert check(s) == []


def test_xattrs(s: MetadataStore) -> None:
    f = s.mknod(1, b"f", REG, 0, 0, 0, 2)
    s.setxattr(f.ino, b"user.a", b"1", 0, 3)
    _err(errno.EEXIST, s.setxattr, f.ino, b"user.a", b"2", 1, 4)
    _err(errno.ENODATA, s.setxattr, f.ino, b"user.b", b"2", 2, 4)
    s.setxattr(f.ino, b"user.a", b"2", 2, 5)
    s.setxattr(f.ino, b"security.selinux", b"x" * 65536, 1, 6)
    _err(errno.E2BIG, s.setxattr, f.ino, b"user.big", b"x" * 65537, 0, 7)
    _err(errno.ERANGE, s.setxattr, f.ino, b"u" * 256, b"", 0, 7)
    assert s.getxattr(f.ino, b"user.a") == b"2"
    assert s.listxattr(f.ino) == [b"security.selinux", b"user.a"]
    assert f.ctime_ns == 6
    s.removexattr(f.ino, b"user.a", 8)
    _err(errno.ENODATA, s.removexattr, f.ino, b"user.a", 9)
    _err(errno.ENODATA, s.getxattr, f.ino, b"user.a")


def test_blocks_enospc_leaves_state_unchanged(s: MetadataStore, log: list[bytes]) -> None:
    f = s.mknod(1, b"f", REG, 0, 0, 0, 2)
    runs = s.plan_allocation(f.ino, 0, 60)
    s.map_blocks(f.ino, 0, runs, [0] * 60, 60 * 4096, 3)
    digest, n = s.state_digest(), len(log)
    _err(errno.ENOSPC, s.plan_allocation, f.ino, 60, 5)
    _err(errno.ENOSPC, s.fallocate, f.ino, 60, 5, None, 4)
    assert s.state_digest() == digest and len(log) == n


def test_inode_enospc(log: list[bytes]) -> None:
    s = MetadataStore.create(
        data_blocks=8, stripe_blocks=1, max_inodes=3, journal=log.append, now_ns=1
    )
    s.mknod(1, b"a", REG, 0, 0, 0, 2)
    s.mkdir(1, b"b", 0o755, 0, 0, 2)
    assert s.statfs().free_files == 0
    digest = s.state_digest()
    _err(errno.ENOSPC, s.mknod, 1, b"c", REG, 0, 0, 0, 3)
    assert s.state_digest() == digest


def test_map_blocks_rewrite_in_place_and_fallocate(s: MetadataStore) -> None:
    f = s.mknod(1, b"f", REG, 0, 0, 0, 2)
    runs = s.plan_allocation(f.ino, 0, 4)
    s.map_blocks(f.ino, 0, runs, [1, 1, 1, 1], 4 * 4096, 3)
    # rewriting blocks in place (same volume blocks) is allowed
    s.map_blocks(f.ino, 1, [(runs[0][0] + 1, 2)], [7, 7], None, 4)
    assert [m.crcs for m in s.map(f.ino, 0, 4)] == [(1, 7, 7, 1)]
    # someone else's blocks are not
    g = s.mknod(1, b"g", REG, 0, 0, 0, 5)
    _err(errno.EINVAL, s.map_blocks, g.ino, 0, [(runs[0][0], 1)], [0], None, 6)
    # KEEP_SIZE fallocate maps unwritten blocks past EOF: fsck accepts them
    s.fallocate(f.ino, 2, 6, None, 7)
    assert f.size == 4 * 4096 and f.blocks == 8
    assert [c for m in s.map(f.ino, 4, 4) for c in m.crcs] == [-1] * 4
    s.fallocate(g.ino, 0, 3, 3 * 4096, 8)
    assert g.size == 3 * 4096
    assert check(s) == []
    s.punch(f.ino, 1, 2, 9)
    assert f.blocks == 6 and f.size == 4 * 4096
    assert s.statfs().free_blocks == 64 - 9
    assert check(s) == []


def test_plan_allocation_goal_and_release(s: MetadataStore) -> None:
    f = s.mknod(1, b"f", REG, 0, 0, 0, 2)
    r1 = s.plan_allocation(f.ino, 0, 3)
    s.map_blocks(f.ino, 0, r1, [0] * 3, 3 * 4096, 3)
    r2 = s.plan_allocation(f.ino, 3, 2)
    assert r2 == [(r1[0][0] + 3, 2)]
    assert check(s) == []  # pending blocks are neither free nor leaked
    s.release_allocation(r2)
    assert s.statfs().free_blocks == 61
    assert check(s) == []
