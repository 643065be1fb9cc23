"""Metadata op records: frozen dataclasses and their binary encoding.

Every change to the metadata store is one of these ops. The store validates a request, builds
the op with every decision already made (inode number, timestamps, gid, volume blocks), passes
``encode_op(op)`` to its journal and then applies the op; replay decodes the same bytes and
applies them with the same function, so logging and replay cannot disagree.

Encoding (little-endian, no padding)::

    tag: u8                       one value per op class (TAG below); unknown tag -> ValueError
    fields, in dataclass order, each by its kind:
      u    u64
      i    i64                     timestamps (may be negative)
      ou   u8 present + u64        present = 0 means None (the u64 is then absent)
      oi   u8 present + i64
      b    u32 length + bytes      names, targets, xattr values
      runs u32 count + count * (u64 vol_block, u64 n)
      crcs u32 count + count * i64 (-1 = UNWRITTEN)

Trailing bytes after the last field are an error (the WAL record carries the exact length).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import ClassVar

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


@dataclass(frozen=True, slots=True)
class CreateInode:
    """A new inode ``ino`` named ``name`` in ``parent`` (mknod, mkdir, symlink, create).
    ``mode`` and ``gid`` are final (setgid inheritance already decided); ``target`` is the
    symlink target, empty otherwise."""

    TAG: ClassVar[int] = 1
    LAYOUT: ClassVar[tuple[str, ...]] = ("u", "b", "u", "u", "u", "u", "u", "b", "i")
    parent: int
    name: bytes
    ino: int
    mode: int
    uid: int
    gid: int
    rdev: int
    target: bytes
    now_ns: int


@dataclass(frozen=True, slots=True)
class Link:
    """A new name ``parent/name`` for the existing non-directory ``ino``."""

    TAG: ClassVar[int] = 2
    LAYOUT: ClassVar[tuple[str, ...]] = ("u", "u", "b", "i")
    ino: int
    parent: int
    name: bytes
    now_ns: int


@dataclass(frozen=True, slots=True)
class Unlink:
    """Remove the entry ``parent/name`` (unlink and rmdir). The inode is dropped by a later
    ``Reclaim`` once it has no links and is not open."""

    TAG: ClassVar[int] = 3
    LAYOUT: ClassVar[tuple[str, ...]] = ("u", "b", "i")
    parent: int
    name: bytes
    now_ns: int


@dataclass(frozen=True, slots=True)
class Rename:
    """rename(2)/renameat2(2); ``flags`` is 0, RENAME_NOREPLACE or RENAME_EXCHANGE."""

    TAG: ClassVar[int] = 4
    LAYOUT: ClassVar[tuple[str, ...]] = ("u", "b", "u", "b", "u", "i")
    old_parent: int
    old_name: bytes
    new_parent: int
    new_name: bytes
    flags: int
    now_ns: int


@dataclass(frozen=True, slots=True)
class SetAttr:
    """chmod/chown/truncate/utimens. ``mode`` is the complete new mode (type bits kept); a
    smaller ``size`` unmaps whole blocks past the new end of file (the file layer rewrites the
    partial last block itself so its tail reads as zeros after a later extension)."""

    TAG: ClassVar[int] = 5
    LAYOUT: ClassVar[tuple[str, ...]] = ("u", "ou", "ou", "ou", "ou", "oi", "oi", "i")
    ino: int
    mode: int | None
    uid: int | None
    gid: int | None
    size: int | None
    atime_ns: int | None
    mtime_ns: int | None
    ctime_ns: int


@dataclass(frozen=True, slots=True)
class SetXattr:
    TAG: ClassVar[int] = 6
    LAYOUT: ClassVar[tuple[str, ...]] = ("u", "b", "b", "i")
    ino: int
    name: bytes
    value: bytes
    now_ns: int


@dataclass(frozen=True, slots=True)
class RemoveXattr:
    TAG: ClassVar[int] = 7
    LAYOUT: ClassVar[tuple[str, ...]] = ("u", "b", "i")
    ino: int
    name: bytes
    now_ns: int


@dataclass(frozen=True, slots=True)
class MapBlocks:
    """Map file blocks ``first_block...`` to ``runs`` (consecutive in the file) with one crc per
    block (-1 = allocated but unwritten, for fallocate), after the data reached the volume
    cache. Displaced blocks are freed; the runs are marked used if they are not already."""

    TAG: ClassVar[int] = 8
    LAYOUT: ClassVar[tuple[str, ...]] = ("u", "u", "runs", "crcs", "ou", "i", "i")
    ino: int
    first_block: int
    runs: tuple[tuple[int, int], ...]
    crcs: tuple[int, ...]
    new_size: int | None
    mtime_ns: int
    ctime_ns: int


@dataclass(frozen=True, slots=True)
class Punch:
    """Unmap (and free) ``count`` file blocks from ``first_block``; the size is unchanged."""

    TAG: ClassVar[int] = 9
    LAYOUT: ClassVar[tuple[str, ...]] = ("u", "u", "u", "i")
    ino: int
    first_block: int
    count: int
    now_ns: int


@dataclass(frozen=True, slots=True)
class Reclaim:
    """Drop inode ``ino`` (nlink 0, not open) and free its blocks."""

    TAG: ClassVar[int] = 10
    LAYOUT: ClassVar[tuple[str, ...]] = ("u",)
    ino: int


Op = (
    CreateInode
    | Link
    | Unlink
    | Rename
    | SetAttr
    | SetXattr
    | RemoveXattr
    | MapBlocks
    | Punch
    | Reclaim
)

_CLASSES: dict[int, type[Op]] = {
    c.TAG: c
    for c in (
        CreateInode,
        Link,
        Unlink,
        Rename,
        SetAttr,
        SetXattr,
        RemoveXattr,
        MapBlocks,
        Punch,
        Reclaim,
    )
}

_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")
_U8 = struct.Struct("<B")
_RUN = struct.Struct("<QQ")


#: Field names per op class, in LAYOUT order (``dataclasses.fields`` per call cost more than
#: the whole encoding of a small op).
_NAMES: dict[type, tuple[str, ...]] = {
    c: tuple(f.name for f in fields(c)) for c in _CLASSES.values()
}


def encode_op(op: Op) -> bytes:
    """The record bytes of ``op`` (see the module docstring)."""
    out = bytearray(_U8.pack(op.TAG))
    for name, kind in zip(_NAMES[type(op)], op.LAYOUT, strict=True):
        v = getattr(op, name)
        if kind == "u":
            out += _U64.pack(v)
        elif kind == "i":
            out += _I64.pack(v)
        elif kind in ("ou", "oi"):
            if v is None:
                out += b"\0"
            else:
                out += b"\1" + (_U64 if kind == "ou" else _I64).pack(v)
        elif kind == "b":
            out += _U32.pack(len(v)) + v
        elif kind == "runs":
            out += _U32.pack(len(v))
            for s, n in v:
                out += _RUN.pack(s, n)
        elif kind == "crcs":
            out += _U32.pack(len(v)) + struct.pack(f"<{len(v)}q", *v)
        else:  # pragma: no cover - a LAYOUT typo
            raise AssertionError(kind)
    return bytes(out)


def decode_op(raw: bytes | bytearray | memoryview) -> Op:
    """The op encoded in ``raw``; ``ValueError`` if it is not exactly one valid op."""
    buf = bytes(raw)
    if not buf:
        raise ValueError("empty op record")
    cls = _CLASSES.get(buf[0])
    if cls is None:
        raise ValueError(f"unknown op tag {buf[0]}")
    pos = 1
    args: list[object] = []
    try:
        for kind in cls.LAYOUT:
            if kind == "u":
                args.append(_U64.unpack_from(buf, pos)[0])
                pos += 8
            elif kind == "i":
                args.append(_I64.unpack_from(buf, pos)[0])
                pos += 8
            elif kind in ("ou", "oi"):
                present = buf[pos]
                pos += 1
                if present == 0:
                    args.append(None)
                elif present == 1:
                    args.append((_U64 if kind == "ou" else _I64).unpack_from(buf, pos)[0])
                    pos += 8
                else:
                    raise ValueError(f"bad presence byte {present}")
            elif kind == "b":
                (n,) = _U32.unpack_from(buf, pos)
                pos += 4
                if pos + n > len(buf):
                    raise ValueError("byte field runs past the end")
                args.append(buf[pos : pos + n])
                pos += n
            elif kind == "runs":
                (n,) = _U32.unpack_from(buf, pos)
                pos += 4
                flat = struct.unpack_from(f"<{2 * n}Q", buf, pos)
                pos += 16 * n
                args.append(tuple(zip(flat[::2], flat[1::2], strict=True)))
            elif kind == "crcs":
                (n,) = _U32.unpack_from(buf, pos)
                pos += 4
                args.append(struct.unpack_from(f"<{n}q", buf, pos))
                pos += 8 * n
    except (struct.error, IndexError) as e:
        raise ValueError(f"truncated {cls.__name__} record") from e
    if pos != len(buf):
        raise ValueError(f"{len(buf) - pos} trailing bytes after {cls.__name__}")
    return cls(*args)  # type: ignore[arg-type]
