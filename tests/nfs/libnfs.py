"""A small synchronous NFS client: ctypes over libnfs (Debian ``libnfs13``, pulled in by
``libnfs-utils``), the userspace client the NFS tests drive.

The ``libnfs`` package on PyPI (SWIG bindings from 2016) does not build against libnfs 4, and
``nfs-cp``/``nfs-ls``/``nfs-cat`` cover only copy and list, so the tests call the library's
synchronous API directly. Signatures are those of libnfs 4.0 (Debian 12): ``nfs_pread(nfs,
fh, offset, count, buf)``. Errors are raised as ``OSError`` with the errno libnfs returns
(negative return values) and its message.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass

LIBNFS = "libnfs.so.13"

_c_p = ctypes.c_void_p
_u64 = ctypes.c_uint64


class NfsStat64(ctypes.Structure):
    _fields_ = [
        (name, _u64)
        for name in (
            "dev",
            "ino",
            "mode",
            "nlink",
            "uid",
            "gid",
            "rdev",
            "size",
            "blksize",
            "blocks",
            "atime",
            "mtime",
            "ctime",
            "atime_nsec",
            "mtime_nsec",
            "ctime_nsec",
            "used",
        )
    ] + [("_pad", _u64 * 8)]


class NfsStatvfs64(ctypes.Structure):
    _fields_ = [
        (name, _u64)
        for name in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
            "f_fsid",
            "f_flag",
            "f_namemax",
        )
    ] + [("_pad", _u64 * 8)]


class _Dirent(ctypes.Structure):
    pass


_Dirent._fields_ = [
    ("next", ctypes.POINTER(_Dirent)),
    ("name", ctypes.c_char_p),
    ("inode", _u64),
    ("type", ctypes.c_uint32),
    ("mode", ctypes.c_uint32),
    ("size", _u64),
]


class _Fh(ctypes.Structure):
    _fields_ = [("len", ctypes.c_int), ("val", ctypes.POINTER(ctypes.c_ubyte))]


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(LIBNFS, use_errno=True)
    sig: dict[str, tuple[object, list[object]]] = {
        "nfs_init_context": (_c_p, []),
        "nfs_destroy_context": (None, [_c_p]),
        "nfs_get_error": (ctypes.c_char_p, [_c_p]),
        "nfs_set_version": (ctypes.c_int, [_c_p, ctypes.c_int]),
        "nfs_set_timeout": (None, [_c_p, ctypes.c_int]),
        "nfs_set_autoreconnect": (None, [_c_p, ctypes.c_int]),
        "nfs_set_dircache": (None, [_c_p, ctypes.c_int]),
        "nfs_mount": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.c_char_p]),
        "nfs_umount": (ctypes.c_int, [_c_p]),
        "nfs_open": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(_c_p)]),
        "nfs_create": (
            ctypes.c_int,
            [_c_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_c_p)],
        ),
        "nfs_close": (ctypes.c_int, [_c_p, _c_p]),
        "nfs_pread": (ctypes.c_int, [_c_p, _c_p, _u64, _u64, _c_p]),
        "nfs_pwrite": (ctypes.c_int, [_c_p, _c_p, _u64, _u64, _c_p]),
        "nfs_fsync": (ctypes.c_int, [_c_p, _c_p]),
        "nfs_ftruncate": (ctypes.c_int, [_c_p, _c_p, _u64]),
        "nfs_fstat64": (ctypes.c_int, [_c_p, _c_p, ctypes.POINTER(NfsStat64)]),
        "nfs_get_fh": (ctypes.POINTER(_Fh), [_c_p]),
        "nfs_get_readmax": (_u64, [_c_p]),
        "nfs_get_writemax": (_u64, [_c_p]),
        "nfs_stat64": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.POINTER(NfsStat64)]),
        "nfs_lstat64": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.POINTER(NfsStat64)]),
        "nfs_statvfs64": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.POINTER(NfsStatvfs64)]),
        "nfs_truncate": (ctypes.c_int, [_c_p, ctypes.c_char_p, _u64]),
        "nfs_chmod": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.c_int]),
        "nfs_mkdir2": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.c_int]),
        "nfs_rmdir": (ctypes.c_int, [_c_p, ctypes.c_char_p]),
        "nfs_unlink": (ctypes.c_int, [_c_p, ctypes.c_char_p]),
        "nfs_rename": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.c_char_p]),
        "nfs_link": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.c_char_p]),
        "nfs_symlink": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.c_char_p]),
        "nfs_readlink": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]),
        "nfs_opendir": (ctypes.c_int, [_c_p, ctypes.c_char_p, ctypes.POINTER(_c_p)]),
        "nfs_readdir": (ctypes.POINTER(_Dirent), [_c_p, _c_p]),
        "nfs_closedir": (None, [_c_p, _c_p]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib


_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


@dataclass
class NfsFile:
    client: NfsClient
    ptr: int
    path: str

    def pread(self, offset: int, count: int) -> bytes:
        buf = ctypes.create_string_buffer(count)
        n = self.client._check(
            lib().nfs_pread(self.client.ctx, self.ptr, offset, count, buf), self.path
        )
        return buf.raw[:n]

    def pwrite(self, offset: int, data: bytes) -> int:
        return self.client._check(
            lib().nfs_pwrite(self.client.ctx, self.ptr, offset, len(data), data), self.path
        )

    def write_all(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` in chunks of the server's wmax."""
        step = self.client.writemax
        mv = memoryview(data)
        done = 0
        while done < len(mv):
            chunk = bytes(mv[done : done + step])
            n = self.pwrite(offset + done, chunk)
            if n <= 0:
                raise OSError(errno.EIO, f"short write at {offset + done}", self.path)
            done += n

    def read_all(self, offset: int = 0, size: int | None = None) -> bytes:
        if size is None:
            size = self.fstat().size - offset
        step = self.client.readmax
        parts: list[bytes] = []
        done = 0
        while done < size:
            chunk = self.pread(offset + done, min(step, size - done))
            if not chunk:
                break
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def fsync(self) -> None:
        self.client._check(lib().nfs_fsync(self.client.ctx, self.ptr), self.path)

    def ftruncate(self, length: int) -> None:
        self.client._check(lib().nfs_ftruncate(self.client.ctx, self.ptr, length), self.path)

    def fstat(self) -> NfsStat64:
        st = NfsStat64()
        rc = lib().nfs_fstat64(self.client.ctx, self.ptr, ctypes.byref(st))
        self.client._check(rc, self.path)
        return st

    def filehandle(self) -> bytes:
        """The NFS file handle the server gave for this file (opaque bytes)."""
        fh = lib().nfs_get_fh(self.ptr).contents
        return bytes(fh.val[: fh.len])

    def close(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self.client._check(lib().nfs_close(self.client.ctx, ptr), self.path)

    def __enter__(self) -> NfsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NfsClient:
    """One libnfs context mounted on ``server:export`` (NFS version 3 or 4). Paths are
    relative to the export's root, starting with "/"."""

    def __init__(self, server: str, export: str, *, version: int = 3, timeout_ms: int = 30_000):
        self.ctx = lib().nfs_init_context()
        if not self.ctx:
            raise OSError(errno.ENOMEM, "nfs_init_context failed")
        self.server = server
        self.export = export
        try:
            self._check(lib().nfs_set_version(self.ctx, version), "nfs_set_version")
            lib().nfs_set_timeout(self.ctx, timeout_ms)
            # No client-side directory cache: the tests look for names the server changed.
            lib().nfs_set_dircache(self.ctx, 0)
            lib().nfs_set_autoreconnect(self.ctx, -1)  # retry forever (server restarts)
            self._check(
                lib().nfs_mount(self.ctx, server.encode(), export.encode()),
                f"{server}:{export}",
            )
        except BaseException:
            lib().nfs_destroy_context(self.ctx)
            self.ctx = None
            raise
        self.readmax = int(lib().nfs_get_readmax(self.ctx)) or 1 << 20
        self.writemax = int(lib().nfs_get_writemax(self.ctx)) or 1 << 20

    def _check(self, rc: int, what: str) -> int:
        if rc < 0:
            msg = (lib().nfs_get_error(self.ctx) or b"").decode(errors="replace")
            raise OSError(-rc, f"{os.strerror(-rc)}: {msg}", what)
        return rc

    def close(self) -> None:
        if self.ctx:
            ctx, self.ctx = self.ctx, None
            lib().nfs_destroy_context(ctx)

    def __enter__(self) -> NfsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- files -----------------------------------------------------------------------------

    def open(self, path: str, flags: int = os.O_RDONLY) -> NfsFile:
        ptr = _c_p()
        self._check(lib().nfs_open(self.ctx, path.encode(), flags, ctypes.byref(ptr)), path)
        return NfsFile(self, ptr.value or 0, path)

    def create(self, path: str, mode: int = 0o644, flags: int = os.O_RDWR) -> NfsFile:
        ptr = _c_p()
        self._check(
            lib().nfs_create(self.ctx, path.encode(), flags | os.O_CREAT, mode, ctypes.byref(ptr)),
            path,
        )
        return NfsFile(self, ptr.value or 0, path)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        with self.create(path, mode, os.O_RDWR | os.O_TRUNC) as f:
            f.write_all(0, data)
            f.fsync()

    def read_file(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read_all()

    # -- names and attributes --------------------------------------------------------------

    def stat(self, path: str) -> NfsStat64:
        st = NfsStat64()
        self._check(lib().nfs_stat64(self.ctx, path.encode(), ctypes.byref(st)), path)
        return st

    def lstat(self, path: str) -> NfsStat64:
        st = NfsStat64()
        self._check(lib().nfs_lstat64(self.ctx, path.encode(), ctypes.byref(st)), path)
        return st

    def statvfs(self, path: str = "/") -> NfsStatvfs64:
        st = NfsStatvfs64()
        self._check(lib().nfs_statvfs64(self.ctx, path.encode(), ctypes.byref(st)), path)
        return st

    def exists(self, path: str) -> bool:
        try:
            self.lstat(path)
        except FileNotFoundError:
            return False
        return True

    def truncate(self, path: str, length: int) -> None:
        self._check(lib().nfs_truncate(self.ctx, path.encode(), length), path)

    def chmod(self, path: str, mode: int) -> None:
        self._check(lib().nfs_chmod(self.ctx, path.encode(), mode), path)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self._check(lib().nfs_mkdir2(self.ctx, path.encode(), mode), path)

    def rmdir(self, path: str) -> None:
        self._check(lib().nfs_rmdir(self.ctx, path.encode()), path)

    def unlink(self, path: str) -> None:
        self._check(lib().nfs_unlink(self.ctx, path.encode()), path)

    def rename(self, old: str, new: str) -> None:
        self._check(lib().nfs_rename(self.ctx, old.encode(), new.encode()), f"{old} -> {new}")

    def link(self, old: str, new: str) -> None:
        self._check(lib().nfs_link(self.ctx, old.encode(), new.encode()), f"{old} -> {new}")

    def symlink(self, target: str, path: str) -> None:
        self._check(lib().nfs_symlink(self.ctx, target.encode(), path.encode()), path)

    def readlink(self, path: str) -> str:
        buf = ctypes.create_string_buffer(4096)
        self._check(lib().nfs_readlink(self.ctx, path.encode(), buf, len(buf)), path)
        return buf.value.decode()

    def listdir(self, path: str) -> dict[str, int]:
        """name → inode number of every entry but "." and ".."."""
        return {name: ino for name, ino in self.scandir(path) if name not in (".", "..")}

    def scandir(self, path: str) -> Iterator[tuple[str, int]]:
        d = _c_p()
        self._check(lib().nfs_opendir(self.ctx, path.encode(), ctypes.byref(d)), path)
        try:
            while True:
                ent = lib().nfs_readdir(self.ctx, d)
                if not ent:
                    return
                yield ent.contents.name.decode(), int(ent.contents.inode)
        finally:
            lib().nfs_closedir(self.ctx, d)
