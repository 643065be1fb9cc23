"""Keys of the metadata tree: one byte string per item, ordered by ``memcmp``. Pure.

Layout (docs/metadata_format.md, "Keys"): a kind byte, then big-endian integers (which sort
numerically byte by byte) and, for names, the raw bytes. All items of one inode and kind are
contiguous, so "every extent of inode 7" or "every entry of directory 1 by cookie" is one
range scan: ``[prefix, prefix_end(prefix))``.
"""

from __future__ import annotations

import hashlib
import struct
from enum import IntEnum

_U64 = struct.Struct(">Q")
_U64U64 = struct.Struct(">QQ")


class Kind(IntEnum):
    INODE = 1
    XATTR = 2
    DIRENT = 3
    DIRINDEX = 4
    EXTENT = 5
    SPACE = 6
    SYMLINK = 7
    SPACESUM = 8


def name_hash(name: bytes) -> int:
    """A stable 64-bit hash of a directory entry or xattr name (blake2b: the order of
    entries in a directory must not change between runs or versions)."""
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big")


def inode_key(ino: int) -> bytes:
    return bytes((Kind.INODE,)) + _U64.pack(ino)


def symlink_key(ino: int) -> bytes:
    return bytes((Kind.SYMLINK,)) + _U64.pack(ino)


def xattr_key(ino: int, name: bytes) -> bytes:
    return bytes((Kind.XATTR,)) + _U64U64.pack(ino, name_hash(name)) + name


def dirent_key(parent: int, name: bytes) -> bytes:
    return bytes((Kind.DIRENT,)) + _U64U64.pack(parent, name_hash(name)) + name


def dirindex_key(parent: int, cookie: int) -> bytes:
    return bytes((Kind.DIRINDEX,)) + _U64U64.pack(parent, cookie)


def extent_key(ino: int, file_block: int) -> bytes:
    return bytes((Kind.EXTENT,)) + _U64U64.pack(ino, file_block)


def space_key(first_block: int) -> bytes:
    return bytes((Kind.SPACE,)) + _U64.pack(first_block)


def prefix(kind: Kind, ino: int) -> bytes:
    """The common start of every key of ``kind`` that belongs to inode ``ino``."""
    return bytes((kind,)) + _U64.pack(ino)


def prefix_end(p: bytes) -> bytes:
    """The smallest key greater than every key that starts with ``p`` (``p`` must not be
    all 0xff bytes)."""
    q = bytearray(p)
    while q[-1] == 0xFF:
        q.pop()
    q[-1] += 1
    return bytes(q)


def split_u64(key: bytes, at: int) -> int:
    """The big-endian u64 at byte ``at`` of ``key``."""
    return int(_U64.unpack_from(key, at)[0])
