"""``name_to_handle_at``/``open_by_handle_at`` through ctypes (Python has no binding).

``open_by_handle_at`` needs CAP_DAC_READ_SEARCH (root). These are the calls an NFS server
(kernel nfsd's exportfs layer, nfs-ganesha's FSAL VFS) makes to turn a file handle back into
an open file, so they check export support without any NFS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400
MAX_HANDLE_SZ = 128

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ),
    ]


_libc.name_to_handle_at.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.POINTER(_FileHandle),
    ctypes.POINTER(ctypes.c_int),
    ctypes.c_int,
]
_libc.name_to_handle_at.restype = ctypes.c_int
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.POINTER(_FileHandle), ctypes.c_int]
_libc.open_by_handle_at.restype = ctypes.c_int


@dataclass(frozen=True)
class Handle:
    handle_type: int
    data: bytes
    mount_id: int


def name_to_handle(path: str | os.PathLike[str], *, follow: bool = True) -> Handle:
    fh = _FileHandle()
    fh.handle_bytes = MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    flags = AT_SYMLINK_FOLLOW if follow else 0
    if _libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), ctypes.byref(fh), mount_id, flags):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    return Handle(fh.handle_type, bytes(fh.f_handle[: fh.handle_bytes]), mount_id.value)


def open_by_handle(mount_fd: int, handle: Handle, flags: int = os.O_RDONLY) -> int:
    fh = _FileHandle()
    fh.handle_bytes = len(handle.data)
    fh.handle_type = handle.handle_type
    ctypes.memmove(fh.f_handle, handle.data, len(handle.data))
    fd: int = _libc.open_by_handle_at(mount_fd, ctypes.byref(fh), flags | os.O_CLOEXEC)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def drop_caches() -> None:
    """Write back, then evict clean pages, dentries and inodes (the FUSE kernel module then
    sends FORGET for every inode it dropped)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
