"""Values of the metadata tree's items: inode records, directory entries, extents. Pure.

Formats (docs/metadata_format.md, "Keys"), little-endian, each decoder checking the exact
length (a wrong length is ``RecordError``: the page checksum passed, so it is a bug or a
version mismatch, never to be guessed around).

Timestamps are kept as the kernel passes them, seconds (i64) and nanoseconds (u32), so every
time ``utimensat`` accepts is stored as given (no 1677-2262 limit of an i64 of nanoseconds).
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, replace

from fusenas.errors import FusenasError


class RecordError(FusenasError):
    """An item value that does not decode."""


#: generation, mode, uid, gid, nlink, size, blocks, rdev, parent, next_cookie, flags,
#: atime (s, ns), mtime (s, ns), ctime (s, ns)
_INODE = struct.Struct("<QIIIIQQQQQIqIqIqI")


@dataclass(frozen=True, slots=True)
class InodeRecord:
    """An inode's attributes. ``blocks``: mapped 4 KiB blocks (``st_blocks / 8``, kept
    here so that ``stat`` reads no extent); ``parent``: the directory ".." names
    (directories only); ``next_cookie``: the cookie the next entry of a directory gets."""

    generation: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    blocks: int
    rdev: int
    parent: int
    next_cookie: int
    flags: int
    atime: tuple[int, int]
    mtime: tuple[int, int]
    ctime: tuple[int, int]

    def encode(self) -> bytes:
        return _INODE.pack(
            self.generation,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.size,
            self.blocks,
            self.rdev,
            self.parent,
            self.next_cookie,
            self.flags,
            *self.atime,
            *self.mtime,
            *self.ctime,
        )

    @staticmethod
    def decode(raw: bytes) -> InodeRecord:
        if len(raw) != _INODE.size:
            raise RecordError(f"inode record of {len(raw)} bytes")
        gen, mode, uid, gid, nlink, size, blocks, rdev, parent, cookie, flags, *t = _INODE.unpack(
            raw
        )
        return InodeRecord(
            gen,
            mode,
            uid,
            gid,
            nlink,
            size,
            blocks,
            rdev,
            parent,
            cookie,
            flags,
            (t[0], t[1]),
            (t[2], t[3]),
            (t[4], t[5]),
        )

    def with_(self, **changes: object) -> InodeRecord:
        return replace(self, **changes)  # type: ignore[arg-type]


_DIRENT = struct.Struct("<QQB")
_DIRINDEX = struct.Struct("<QB")


@dataclass(frozen=True, slots=True)
class DirEntry:
    """What a name in a directory points to: the inode, the entry's readdir cookie and the
    file type (``mode >> 12``, as ``d_type`` wants it)."""

    ino: int
    cookie: int
    kind: int

    def encode(self) -> bytes:
        return _DIRENT.pack(self.ino, self.cookie, self.kind)

    @staticmethod
    def decode(raw: bytes) -> DirEntry:
        if len(raw) != _DIRENT.size:
            raise RecordError(f"directory entry of {len(raw)} bytes")
        return DirEntry(*_DIRENT.unpack(raw))


def encode_dirindex(ino: int, kind: int, name: bytes) -> bytes:
    """The value of a ``DIRINDEX`` item: the entry as readdir returns it."""
    return _DIRINDEX.pack(ino, kind) + name


def decode_dirindex(raw: bytes) -> tuple[int, int, bytes]:
    """(ino, kind, name) of a ``DIRINDEX`` value."""
    if len(raw) < _DIRINDEX.size + 1:
        raise RecordError(f"directory index entry of {len(raw)} bytes")
    ino, kind = _DIRINDEX.unpack_from(raw)
    return ino, kind, raw[_DIRINDEX.size :]


_EXTENT = struct.Struct("<QIB")
#: ``ExtentItem.flags``: allocated, never written, reads as zeros; no checksums stored.
UNWRITTEN = 1
#: Written blocks one extent item covers at most (1 KiB of checksums).
MAX_WRITTEN_BLOCKS = 256


@dataclass(frozen=True, slots=True)
class ExtentItem:
    """``count`` file blocks stored at volume blocks ``vol_block``…; one crc32c per block
    unless ``UNWRITTEN``."""

    vol_block: int
    count: int
    flags: int
    crcs: array[int]

    def encode(self) -> bytes:
        if self.flags & UNWRITTEN:
            if len(self.crcs):
                raise ValueError("an unwritten extent has no checksums")
        elif len(self.crcs) != self.count or self.count > MAX_WRITTEN_BLOCKS:
            raise ValueError("a written extent has one checksum per block, at most 256")
        return _EXTENT.pack(self.vol_block, self.count, self.flags) + self.crcs.tobytes()

    @staticmethod
    def decode(raw: bytes) -> ExtentItem:
        if len(raw) < _EXTENT.size:
            raise RecordError(f"extent item of {len(raw)} bytes")
        vol_block, count, flags = _EXTENT.unpack_from(raw)
        crcs = array("I")
        crcs.frombytes(raw[_EXTENT.size :])
        want = 0 if flags & UNWRITTEN else count
        if len(crcs) != want or len(raw) != _EXTENT.size + 4 * want:
            raise RecordError(f"extent item of {len(raw)} bytes for {count} blocks")
        return ExtentItem(vol_block, count, flags, crcs)
