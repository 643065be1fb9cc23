"""End to end: a fusenas mount re-exported by nfs-ganesha (FSAL VFS) on 127.0.0.1, driven by
libnfs over NFSv3 (and a read-only NFSv4 check: libnfs 4.0's NFSv4 WRITE fails to encode,
see docs/nfs.md). The fixtures in conftest.py start and stop rpcbind and ganesha.

Run with ``-s`` to see the copy timings of ``test_copy_timing``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time

import pytest

from tests.mount.conftest import requires_root
from tests.nfs.conftest import NfsServer
from tests.nfs.handles import drop_caches

pytestmark = [pytest.mark.mount, requires_root]

MiB = 1 << 20


def _random(n: int, seed: int) -> bytes:
    """Reproducible incompressible bytes (faster than os.urandom for large sizes)."""
    out = bytearray()
    block = hashlib.sha512(seed.to_bytes(8, "little")).digest() * 2048  # 128 KiB
    i = 0
    while len(out) < n:
        out += hashlib.sha512(block[:64] + i.to_bytes(8, "little")).digest() + block[64:]
        i += 1
    return bytes(out[:n])


def test_small_and_large_files_byte_for_byte(nfs: NfsServer) -> None:
    c = nfs.client()
    sizes = [0, 1, 100, 4095, 4096, 4097, 65536 + 3, 1 * MiB + 7]
    for i, n in enumerate(sizes):
        data = os.urandom(n)
        c.write_file(f"/small{i}", data)
        assert c.read_file(f"/small{i}") == data
        assert nfs.local(f"small{i}").read_bytes() == data
        assert c.stat(f"/small{i}").size == n
    # 64 MiB written over NFS, read back over NFS and on the mount.
    big = _random(64 * MiB, 1)
    c.write_file("/big", big)
    assert c.read_file("/big") == big
    assert hashlib.sha256(nfs.local("big").read_bytes()).digest() == hashlib.sha256(big).digest()
    # 64 MiB written on the mount, read over NFS.
    big2 = _random(64 * MiB + 12345, 2)
    with open(nfs.local("big2"), "wb") as f:
        f.write(big2)
        f.flush()
        os.fsync(f.fileno())
    assert c.read_file("/big2") == big2
    # Writes in the middle of a file, unaligned.
    with c.open("/big", os.O_RDWR) as f:
        f.pwrite(10 * MiB + 5, b"patched over nfs")
        f.fsync()
    with open(nfs.local("big"), "rb") as lf:
        lf.seek(10 * MiB)
        assert (
            lf.read(32)
            == big[10 * MiB : 10 * MiB + 5]
            + b"patched over nfs"
            + big[10 * MiB + 21 : 10 * MiB + 32]
        )


def test_namespace_and_attributes(nfs: NfsServer) -> None:
    c = nfs.client()
    # mkdir / readdir
    c.mkdir("/dir", 0o750)
    assert stat.S_ISDIR(c.stat("/dir").mode) and c.stat("/dir").mode & 0o777 == 0o750
    names = {f"entry-{i:04d}" for i in range(600)}
    for n in sorted(names):
        c.write_file(f"/dir/{n}", n.encode())
    listing = c.listdir("/dir")
    assert set(listing) == names == set(os.listdir(nfs.local("dir")))
    for n in ("entry-0000", "entry-0599"):
        assert listing[n] == os.stat(nfs.local(f"dir/{n}")).st_ino  # fileid = st_ino
    # rename within a directory, across directories, over an existing file, of a directory
    c.mkdir("/dir2")
    c.rename("/dir/entry-0000", "/dir/renamed")
    c.rename("/dir/entry-0001", "/dir2/moved")
    c.rename("/dir/entry-0002", "/dir2/moved")  # replaces
    assert c.read_file("/dir2/moved") == b"entry-0002"
    assert not c.exists("/dir/entry-0000") and c.read_file("/dir/renamed") == b"entry-0000"
    c.rename("/dir2", "/dir/sub")
    assert c.read_file("/dir/sub/moved") == b"entry-0002"
    assert nfs.local("dir/sub/moved").read_bytes() == b"entry-0002"
    # unlink
    c.unlink("/dir/renamed")
    assert not c.exists("/dir/renamed") and not nfs.local("dir/renamed").exists()
    # rmdir: refused while not empty, then done
    with pytest.raises(OSError):
        c.rmdir("/dir/sub")
    c.unlink("/dir/sub/moved")
    c.rmdir("/dir/sub")
    assert not nfs.local("dir/sub").exists()
    # setattr: chmod, truncate by path and by handle
    c.write_file("/attrs", b"0123456789" * 1000)
    c.chmod("/attrs", 0o604)
    assert c.stat("/attrs").mode & 0o7777 == 0o604
    assert os.stat(nfs.local("attrs")).st_mode & 0o7777 == 0o604
    c.truncate("/attrs", 15)
    assert c.read_file("/attrs") == b"012345678901234"
    with c.open("/attrs", os.O_RDWR) as f:
        f.ftruncate(3 * MiB)  # extends with a hole
        assert f.fstat().size == 3 * MiB
    assert nfs.local("attrs").read_bytes() == b"012345678901234" + bytes(3 * MiB - 15)
    # hard links
    c.link("/attrs", "/dir/hard")
    st1, st2 = c.stat("/attrs"), c.stat("/dir/hard")
    assert st1.ino == st2.ino and st2.nlink == 2
    assert os.stat(nfs.local("dir/hard")).st_nlink == 2
    c.unlink("/attrs")
    assert c.stat("/dir/hard").nlink == 1 and c.read_file("/dir/hard")[:15] == b"012345678901234"
    # symlinks
    c.symlink("hard", "/dir/sym")
    assert stat.S_ISLNK(c.lstat("/dir/sym").mode)
    assert c.readlink("/dir/sym") == "hard"
    assert os.readlink(nfs.local("dir/sym")) == "hard"
    assert c.stat("/dir/sym").ino == c.stat("/dir/hard").ino  # followed by the client
    # attributes over NFS are the mount's
    for p in ("/dir", "/dir/hard", "/dir/entry-0005"):
        r, loc = c.stat(p), os.stat(nfs.local(p))
        assert (r.ino, r.size, r.mode, r.nlink, r.uid, r.gid) == (
            loc.st_ino,
            loc.st_size,
            loc.st_mode,
            loc.st_nlink,
            loc.st_uid,
            loc.st_gid,
        ), p
        assert r.mtime == int(loc.st_mtime)
    # statfs over NFS: the volume's own figures
    sv, lv = c.statvfs("/"), os.statvfs(nfs.mnt)
    assert sv.f_blocks * sv.f_frsize == lv.f_blocks * lv.f_frsize
    assert sv.f_files == lv.f_files
    assert abs(sv.f_bfree * sv.f_frsize - lv.f_bfree * lv.f_frsize) < 16 * MiB


def test_changes_cross_between_mount_and_nfs(nfs: NfsServer) -> None:
    c = nfs.client()
    c.listdir("/")  # prime ganesha's caches before the local changes
    nfs.local("local-dir").mkdir()
    nfs.local("local-dir/f").write_bytes(b"written on the mount")
    assert "local-dir" in c.listdir("/")
    assert c.read_file("/local-dir/f") == b"written on the mount"
    # An existing file changed on the mount: new size and contents over NFS.
    nfs.local("local-dir/f").write_bytes(b"changed on the mount, longer")
    assert c.read_file("/local-dir/f") == b"changed on the mount, longer"
    # Renamed and deleted on the mount.
    os.rename(nfs.local("local-dir/f"), nfs.local("local-dir/g"))
    assert set(c.listdir("/local-dir")) == {"g"}
    os.unlink(nfs.local("local-dir/g"))
    assert c.listdir("/local-dir") == {}
    # And the other way round.
    c.write_file("/local-dir/from-nfs", b"written over NFS")
    assert nfs.local("local-dir/from-nfs").read_bytes() == b"written over NFS"
    c.mkdir("/nfs-dir")
    assert nfs.local("nfs-dir").is_dir()


def test_handles_survive_drop_caches(nfs: NfsServer) -> None:
    c = nfs.client()
    c.mkdir("/x")
    c.mkdir("/x/y")
    data = os.urandom(300_000)
    c.write_file("/x/y/file", data)
    f = c.open("/x/y/file", os.O_RDWR)  # holds the NFS file handle from here on
    fh = f.filehandle()
    try:
        for _ in range(3):
            drop_caches()  # the kernel forgets the FUSE inodes ganesha's handles name
            assert f.pread(0, len(data)) == data
            assert c.listdir("/x/y") == {"file": os.stat(nfs.local("x/y/file")).st_ino}
        f.pwrite(0, b"after drop")
        f.fsync()
        drop_caches()
        assert nfs.local("x/y/file").read_bytes()[:10] == b"after drop"
        assert f.filehandle() == fh
    finally:
        f.close()


def test_handles_survive_remount_and_server_restart(nfs: NfsServer) -> None:
    c = nfs.client()
    c.mkdir("/keep")
    files = {f"/keep/f{i}": os.urandom(100_000 + i) for i in range(5)}
    for p, d in files.items():
        c.write_file(p, d)
    opened = {p: c.open(p, os.O_RDWR) for p in files}
    handles = {p: f.filehandle() for p, f in opened.items()}
    inos = {p: c.stat(p).ino for p in files}
    dev = os.stat(nfs.mnt).st_dev
    try:
        nfs.remount()  # ganesha stopped, fusenas unmounted and mounted again, ganesha started
        if os.stat(nfs.mnt).st_dev != dev:
            # ganesha's VFS handles carry the filesystem's id, which for FUSE (statfs has no
            # f_fsid, no block device UUID) is the anonymous device number; see docs/nfs.md.
            pytest.xfail(
                f"the remounted FUSE filesystem got another device number ({dev} -> "
                f"{os.stat(nfs.mnt).st_dev}): ganesha FSAL VFS handles name it, so they are stale"
            )
        for p, f in opened.items():  # handles from before the remount, on the same connection
            assert f.pread(0, len(files[p]) + 1) == files[p], p
            assert f.filehandle() == handles[p]
        opened["/keep/f0"].pwrite(0, b"after remount")
        opened["/keep/f0"].fsync()
        assert nfs.local("keep/f0").read_bytes()[:13] == b"after remount"
        assert {p: c.stat(p).ino for p in files} == inos  # the root handle resolves too
        # A new client (new mount of the export) sees the same.
        c2 = nfs.client()
        assert c2.read_file("/keep/f1") == files["/keep/f1"]
        # Once more: drop caches after the restart.
        drop_caches()
        assert opened["/keep/f2"].pread(0, 10) == files["/keep/f2"][:10]
    finally:
        for f in opened.values():
            with contextlib.suppress(OSError):
                f.close()


def test_nfs_and_local_writers_at_once(nfs: NfsServer) -> None:
    size = 24 * MiB
    remote_data = _random(size, 3)
    local_data = _random(size, 4)
    errors: list[BaseException] = []
    c = nfs.client()  # one libnfs context per thread: contexts are not thread-safe

    def remote() -> None:
        try:
            with c.create("/remote.bin") as f:
                for off in range(0, size, MiB):
                    f.write_all(off, remote_data[off : off + MiB])
                f.fsync()
        except BaseException as e:
            errors.append(e)

    def local() -> None:
        try:
            with open(nfs.local("local.bin"), "wb") as f:
                for off in range(0, size, MiB):
                    f.write(local_data[off : off + MiB])
                f.flush()
                os.fsync(f.fileno())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=remote), threading.Thread(target=local)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    c2 = nfs.client()
    assert c2.read_file("/local.bin") == local_data
    assert c2.read_file("/remote.bin") == remote_data
    assert nfs.local("remote.bin").read_bytes() == remote_data


def test_nfsv4_read_path(nfs: NfsServer) -> None:
    """NFSv4 through the pseudo root /nas: lookup, readdir, getattr, read. (Writes are not
    checked: libnfs 4.0 cannot encode an NFSv4 WRITE; see docs/nfs.md.)"""
    nfs.local("v4").mkdir()
    data = os.urandom(2 * MiB + 3)
    nfs.local("v4/data").write_bytes(data)
    c = nfs.client(version=4)
    assert "data" in c.listdir("/v4")
    assert c.stat("/v4/data").size == len(data)
    assert c.read_file("/v4/data") == data
    drop_caches()
    assert c.read_file("/v4/data") == data


@pytest.mark.slow
def test_copy_timing(nfs: NfsServer, capsys: pytest.CaptureFixture[str]) -> None:
    """256 MiB copied in and out over NFS (libnfs, 1 MiB RPCs, NFSv3 through ganesha) next
    to the same copies on the mount directly; printed, not asserted (beyond correctness)."""
    size = 256 * MiB
    data = _random(size, 5)
    chunk = MiB
    c = nfs.client()

    def timed(fn: object) -> float:
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        return time.perf_counter() - t

    def nfs_in() -> None:
        with c.create("/nfs-copy") as f:
            f.write_all(0, data)
            f.fsync()

    def nfs_out() -> None:
        got = c.read_file("/nfs-copy")
        assert len(got) == size and got == data

    def local_in() -> None:
        with open(nfs.local("local-copy"), "wb") as f:
            for off in range(0, size, chunk):
                f.write(data[off : off + chunk])
            os.fsync(f.fileno())

    def local_out() -> None:
        got = bytearray()
        with open(nfs.local("local-copy"), "rb") as f:
            while b := f.read(chunk):
                got += b
        assert got == data

    t_nfs_in = timed(nfs_in)
    drop_caches()
    t_nfs_out = timed(nfs_out)
    c.unlink("/nfs-copy")
    t_local_in = timed(local_in)
    drop_caches()
    t_local_out = timed(local_out)

    def rate(t: float) -> str:
        return f"{t:6.2f} s  {size / MiB / t:7.1f} MiB/s"

    with capsys.disabled():
        print()
        print("256 MiB copy              time      throughput")
        print(f"  NFS in  (write+fsync)   {rate(t_nfs_in)}")
        print(f"  NFS out (read)          {rate(t_nfs_out)}")
        print(f"  mount in  (write+fsync) {rate(t_local_in)}")
        print(f"  mount out (read)        {rate(t_local_out)}")
