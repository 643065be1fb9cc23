"""getxattr answered synchronously (``Operations.getxattr_sync``, added to pyfuse3 by
patches/pyfuse3-3.5.0-fusenas.patch; built by scripts/install-pyfuse3.sh).

The kernel sends GETXATTR security.capability before every write(2); the patched pyfuse3
answers getxattr in its FUSE callback, without a coroutine. All but the ``--no-sync`` test
fail on a pyfuse3 without the patch: its getxattr requests go to the async ``getxattr``,
which answers differently in the toy file system (tests/mount/getxattr_sync_fs.py) and is not
counted as a request by fusenas.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import sys
from pathlib import Path

import pyfuse3
import pytest

from fusenas.fs.operations import FusenasOperations
from tests.mount.conftest import Mounter, run_fusenas

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]

TOY_FS = Path(__file__).with_name("getxattr_sync_fs.py")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.getxattr.restype = ctypes.c_ssize_t


def getxattr(path: Path, name: str, size: int) -> bytes | int:
    """getxattr(2) with an explicit buffer size: the value, the length (size 0), or -errno."""
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _libc.getxattr(bytes(path), name.encode(), buf if size else None, size)
    if n < 0:
        return -ctypes.get_errno()
    return n if size == 0 else buf.raw[:n]


def operations(mnt: Path) -> dict[str, int]:
    r = run_fusenas("status", str(mnt), "--json")
    assert r.returncode == 0, r.stderr
    ops: dict[str, int] = json.loads(r.stdout)["io"]["operations"]
    return ops


def test_pyfuse3_is_the_patched_build() -> None:
    assert pyfuse3.Operations.getxattr_sync is None, "pyfuse3 without the fusenas patch"
    assert callable(FusenasOperations.getxattr_sync)


def test_pyfuse3_calls_getxattr_sync(mounter: Mounter) -> None:
    mnt = mounter.mountpoint()
    m = mounter.spawn([sys.executable, str(TOY_FS), str(mnt)], mnt, mnt)
    assert getxattr(mnt, "user.value", 64) == b"sync"  # b"async" from the coroutine path
    assert getxattr(mnt, "user.value", 0) == 4  # size probe
    assert getxattr(mnt, "user.value", 4) == b"sync"  # exactly fits
    assert getxattr(mnt, "user.value", 3) == -errno.ERANGE
    assert getxattr(mnt, "user.empty", 0) == 0
    assert getxattr(mnt, "user.empty", 8) == b""
    assert getxattr(mnt, "user.missing", 8) == -errno.ENODATA
    # Other exceptions: EIO and a log line, and the file system keeps answering.
    assert getxattr(mnt, "user.raise", 8) == -errno.EIO
    assert getxattr(mnt, "user.notbytes", 8) == -errno.EIO
    assert getxattr(mnt, "user.value", 8) == b"sync"
    assert m.proc.poll() is None
    log = m.log()
    assert "getxattr_sync failed on purpose" in log
    assert log.count("getxattr_sync raised; returning EIO") == 2
    # A KeyboardInterrupt is answered too, then ends the main loop as from an async handler.
    assert getxattr(mnt, "user.interrupt", 8) == -errno.EIO
    assert m.proc.wait(20) == 3, m.log()
    assert "main loop ended by KeyboardInterrupt" in m.log()


def test_pyfuse3_without_getxattr_sync_awaits_getxattr(mounter: Mounter) -> None:
    mnt = mounter.mountpoint()
    m = mounter.spawn([sys.executable, str(TOY_FS), str(mnt), "--no-sync"], mnt, mnt)
    assert getxattr(mnt, "user.value", 64) == b"async"
    assert getxattr(mnt, "user.raise", 64) == b"async"
    assert mounter.unmount(m) == 0, m.log()


def test_fusenas_xattrs_and_write_probes(mounter: Mounter, volume: Path) -> None:
    m = mounter.mount(volume)
    p = m.mnt / "f"
    p.write_bytes(b"")
    before = operations(m.mnt)
    # Every write(2) is preceded by GETXATTR security.capability, answered ENODATA.
    fd = os.open(p, os.O_WRONLY)
    try:
        for i in range(200):
            os.pwrite(fd, b"x" * 512, i * 512)
    finally:
        os.close(fd)
    after = operations(m.mnt)
    writes = after["write"] - before.get("write", 0)
    probes = after.get("getxattr", 0) - before.get("getxattr", 0)
    assert writes == 200
    assert probes >= writes  # counted by getxattr_sync: 0 if the requests went elsewhere

    os.setxattr(p, "user.a", b"value")
    os.setxattr(p, "user.b", b"")
    assert getxattr(p, "user.a", 64) == b"value"
    assert getxattr(p, "user.a", 0) == 5
    assert getxattr(p, "user.a", 4) == -errno.ERANGE
    assert getxattr(p, "user.b", 8) == b""
    assert getxattr(p, "user.none", 8) == -errno.ENODATA
    assert sorted(os.listxattr(p)) == ["user.a", "user.b"]
    # XATTR_CREATE/REPLACE go through the async getxattr inside the setxattr request.
    with pytest.raises(FileExistsError):
        os.setxattr(p, "user.a", b"x", os.XATTR_CREATE)
    with pytest.raises(OSError) as info:
        os.setxattr(p, "user.c", b"x", os.XATTR_REPLACE)
    assert info.value.errno == errno.ENODATA
    os.setxattr(p, "user.a", b"replaced", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.a") == b"replaced"
    os.removexattr(p, "user.a")
    assert os.listxattr(p) == ["user.b"]
    assert getxattr(p, "user.a", 8) == -errno.ENODATA

    # The seven getxattr(2) calls above are counted; the three XATTR_CREATE/REPLACE checks
    # are part of their setxattr requests and are not.
    assert operations(m.mnt)["getxattr"] - after["getxattr"] == 7
    assert mounter.unmount(m) == 0, m.log()
