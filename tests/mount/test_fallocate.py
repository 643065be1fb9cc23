"""fallocate(2) through the mount (needs the patched pyfuse3: scripts/install-pyfuse3.sh).

Default mode and FALLOC_FL_KEEP_SIZE allocate unwritten blocks that read as zeros;
FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE unmaps whole blocks and zeroes partial edges (ext4
semantics). Other modes: EOPNOTSUPP, and fallocate keeps working afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.mount.conftest import Mounter, run_fusenas

pytestmark = [pytest.mark.mount, pytest.mark.timeout(240)]

KiB = 1 << 10
MiB = 1 << 20
BLOCK = 4096

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) itself (os.posix_fallocate would fall back to writing zeros)."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def errno_of(fn: Callable[..., object], *args: object) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno is not None
    return info.value.errno


@contextmanager
def opened(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> Iterator[int]:
    fd = os.open(path, flags, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def pread_all(fd: int, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, size - len(out), len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def free_blocks(mnt: Path) -> int:
    return os.statvfs(mnt).f_bavail


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} after {timeout} s"
        time.sleep(0.05)


def fsck(voldir: Path) -> None:
    r = run_fusenas("fsck", str(voldir), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def small_volume(voldir: Path) -> Path:
    """4 x 40 MiB RAID5 members, 16 MiB journal: about 85 MiB of data blocks."""
    r = run_fusenas(
        "mkfs", str(voldir), "--level", "raid5", "--members", "4",
        "--size", "40M", "--journal-size", "16M",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return voldir


def test_default_mode_extends_and_reads_zeros(mnt: Path) -> None:
    head = os.urandom(5000)
    with opened(mnt / "f") as fd:
        os.write(fd, head)
        before = os.fstat(fd).st_blocks
        free_before = free_blocks(mnt)
        os.posix_fallocate(fd, 0, MiB)
        st = os.fstat(fd)
        assert st.st_size == MiB
        assert st.st_blocks >= MiB // 512 > before
        assert free_blocks(mnt) <= free_before - (MiB // BLOCK - 2)
        assert pread_all(fd, MiB) == head + bytes(MiB - len(head))
        # Mode 0 via fallocate(2), unaligned, past EOF: size is offset + length exactly.
        fallocate(fd, 0, MiB + 100, 10_000)
        st = os.fstat(fd)
        assert st.st_size == MiB + 10_100
        assert st.st_blocks >= (MiB + 10_100 + BLOCK - 1) // BLOCK * 8
        assert pread_all(fd, st.st_size)[len(head) :] == bytes(st.st_size - len(head))
        # Inside the size: nothing changes.
        fallocate(fd, 0, 0, 4096)
        assert os.fstat(fd).st_size == MiB + 10_100
    assert (mnt / "f").read_bytes()[:5000] == head


def test_keep_size_allocates_without_growing(mnt: Path) -> None:
    head = os.urandom(3000)
    with opened(mnt / "f") as fd:
        os.write(fd, head)
        before = os.fstat(fd).st_blocks
        free_before = free_blocks(mnt)
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 2 * MiB)
        st = os.fstat(fd)
        assert st.st_size == 3000
        assert st.st_blocks >= 2 * MiB // 512 > before
        assert free_blocks(mnt) <= free_before - (2 * MiB // BLOCK - 2)
        assert pread_all(fd, 10_000) == head  # still clipped at EOF
        # A later write inside the preallocated range works and reads back.
        tail = os.urandom(70_000)
        assert os.pwrite(fd, tail, MiB + 123) == len(tail)
        os.fsync(fd)
        st = os.fstat(fd)
        assert st.st_size == MiB + 123 + len(tail)
        assert st.st_blocks >= 2 * MiB // 512
        assert pread_all(fd, st.st_size) == head + bytes(MiB + 123 - 3000) + tail


def test_punch_hole_zeroes_and_frees(mnt: Path) -> None:
    data = os.urandom(MiB)
    with opened(mnt / "f") as fd:
        os.write(fd, data)
        os.fsync(fd)
        blocks_before = os.fstat(fd).st_blocks
        free_before = free_blocks(mnt)
        # Partial edges on both sides: blocks 11..59 are whole (49 blocks).
        off, length = 10 * BLOCK + 100, 50 * BLOCK
        fallocate(fd, PUNCH, off, length)
        # Both edges inside one block.
        off2, length2 = 70 * BLOCK + 10, 100
        fallocate(fd, PUNCH, off2, length2)
        # A block-aligned hole, and one that runs past EOF (the size stays).
        off3, length3 = 100 * BLOCK, 3 * BLOCK
        fallocate(fd, PUNCH, off3, length3)
        off4 = MiB - 1000
        fallocate(fd, PUNCH, off4, 64 * KiB)
        os.fsync(fd)

        expect = bytearray(data)
        for o, n in ((off, length), (off2, length2), (off3, length3), (off4, 1000)):
            expect[o : o + n] = bytes(n)
        st = os.fstat(fd)
        assert st.st_size == MiB
        assert pread_all(fd, MiB) == bytes(expect)
        freed = 49 + 3
        assert st.st_blocks <= blocks_before - freed * 8
        wait_for(
            "punched blocks not free",
            lambda: free_blocks(mnt) >= free_before + freed - 4,
        )
    assert (mnt / "f").read_bytes() == bytes(expect)

    # Punching a preallocated (unwritten) range past EOF frees it too.
    with opened(mnt / "g") as fd:
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 256 * KiB)
        allocated = os.fstat(fd).st_blocks
        fallocate(fd, PUNCH, 0, 256 * KiB)
        st = os.fstat(fd)
        assert (st.st_size, st.st_blocks) == (0, 0)
        assert allocated >= 256 * KiB // 512


def test_unsupported_modes_eopnotsupp(mnt: Path) -> None:
    with opened(mnt / "f") as fd:
        os.write(fd, os.urandom(64 * KiB))
        # Refused by the kernel before FUSE:
        assert errno_of(fallocate, fd, FALLOC_FL_COLLAPSE_RANGE, 0, 4 * KiB) == errno.EOPNOTSUPP
        assert errno_of(fallocate, fd, FALLOC_FL_PUNCH_HOLE, 0, 4 * KiB) == errno.EOPNOTSUPP
        # Reaches the daemon, which refuses it with EOPNOTSUPP (not ENOSYS, which would
        # turn fallocate off for the whole mount):
        assert errno_of(fallocate, fd, FALLOC_FL_ZERO_RANGE, 0, 4 * KiB) == errno.EOPNOTSUPP
        fallocate(fd, 0, 0, 128 * KiB)
        assert os.fstat(fd).st_size == 128 * KiB
        # Bad arguments.
        assert errno_of(fallocate, fd, 0, 0, 0) == errno.EINVAL
        assert errno_of(fallocate, fd, 0, -1, 10) == errno.EINVAL
    with opened(mnt / "f", os.O_RDONLY) as fd:
        assert errno_of(fallocate, fd, 0, 0, 4 * KiB) == errno.EBADF


def test_enospc(tmp_path: Path, mounter: Mounter) -> None:
    vol = small_volume(tmp_path / "vol")
    m = mounter.mount(vol)
    mnt = m.mnt
    avail = free_blocks(mnt) * BLOCK
    assert 60 * MiB < avail < 120 * MiB
    keep = os.urandom(MiB + 77)
    (mnt / "keep").write_bytes(keep)
    with opened(mnt / "f") as fd:
        assert errno_of(fallocate, fd, 0, 0, 200 * MiB) == errno.ENOSPC
        assert errno_of(fallocate, fd, FALLOC_FL_KEEP_SIZE, 0, 200 * MiB) == errno.ENOSPC
        assert errno_of(os.posix_fallocate, fd, 0, 200 * MiB) == errno.ENOSPC
        st = os.fstat(fd)
        assert (st.st_size, st.st_blocks) == (0, 0)  # nothing allocated by a failed call
        # What fits is still allocated; then the volume is full.
        fallocate(fd, 0, 0, 32 * MiB)
        assert os.fstat(fd).st_size == 32 * MiB
        left = free_blocks(mnt) * BLOCK
        assert errno_of(fallocate, fd, 0, 32 * MiB, left + 8 * MiB) == errno.ENOSPC
        assert os.fstat(fd).st_size == 32 * MiB
        # Punching gives the space back.
        fallocate(fd, PUNCH, 0, 32 * MiB)
        wait_for("punched space not free", lambda: free_blocks(mnt) * BLOCK >= left + 30 * MiB)
    assert (mnt / "keep").read_bytes() == keep
    assert mounter.unmount(m) == 0, m.log()
    fsck(vol)


def test_persists_across_remount(volume: Path, mounter: Mounter) -> None:
    m = mounter.mount(volume)
    mnt = m.mnt
    a_head, b_head, c_data = os.urandom(5000), os.urandom(3000), os.urandom(512 * KiB)
    with opened(mnt / "a") as fd:
        os.write(fd, a_head)
        fallocate(fd, 0, 0, 300 * KiB + 5)
    with opened(mnt / "b") as fd:
        os.write(fd, b_head)
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 400 * KiB)
    with opened(mnt / "c") as fd:
        os.write(fd, c_data)
        fallocate(fd, PUNCH, 3 * BLOCK + 7, 20 * BLOCK)
    c_expect = bytearray(c_data)
    c_expect[3 * BLOCK + 7 : 23 * BLOCK + 7] = bytes(20 * BLOCK)
    expect = {
        "a": a_head + bytes(300 * KiB + 5 - 5000),
        "b": b_head,
        "c": bytes(c_expect),
    }
    blocks = {name: os.stat(mnt / name).st_blocks for name in expect}
    assert blocks["b"] >= 400 * KiB // 512
    assert blocks["c"] <= (512 * KiB - 19 * BLOCK) // 512
    assert mounter.unmount(m) == 0, m.log()
    fsck(volume)

    m = mounter.mount(volume)
    for name, data in expect.items():
        p = m.mnt / name
        assert p.read_bytes() == data, name
        st = os.stat(p)
        assert (st.st_size, st.st_blocks) == (len(data), blocks[name]), name
    # The preallocated blocks past b's EOF are still usable.
    with opened(m.mnt / "b") as fd:
        os.pwrite(fd, b"z" * 100, 200 * KiB)
        assert os.fstat(fd).st_blocks == blocks["b"]
    assert mounter.unmount(m) == 0, m.log()
    fsck(volume)
