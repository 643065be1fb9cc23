"""The metadata checkpoint image: the whole ``MetadataStore`` as one byte string.

Whoever writes the image to a checkpoint region adds its own crc32c; this module only
encodes and decodes. The allocator and runtime state (open counts, pending allocations) are
not stored: ``decode_image`` rebuilds the allocator from the extent maps.

Layout, version 1, little-endian, no padding::

    header (64 bytes)
      magic        8s   b"FNSMETA\\0"
      version      u32  1
      header_len   u32  64
      total_len    u64  bytes of the whole image, header included (the region may be longer)
      data_blocks  u64
      stripe_blocks u64
      max_inodes   u64
      next_ino     u64
      inode_count  u64
    inode_count inode records, in ascending ino order:
      ino u64, generation u64, mode u32, uid u32, gid u32, nlink u32, size u64,
      atime_ns i64, mtime_ns i64, ctime_ns i64, rdev u64, xattr_count u32       (84 bytes)
      xattr_count * (name_len u8, value_len u32, name, value)
      then by mode & S_IFMT:
        S_IFDIR  parent u64, next_cookie u64, entry_count u32,
                 entry_count * (cookie u64, ino u64, name_len u8, name)   cookies ascending
        S_IFLNK  target_len u32, target
        S_IFREG  run_count u32,
                 run_count * (file_block u64, vol_block u64, count u32, count * crc i64)
        others   nothing

Decoding checks the magic, the version, the lengths, and that the records end exactly at
``total_len``; any mismatch is ``ImageError``.
"""

from __future__ import annotations

import stat
import struct
import sys
from array import array

from fusenas.errors import FusenasError
from fusenas.meta.extents import ExtentMap
from fusenas.meta.model import Directory, Inode
from fusenas.meta.store import Journal, MetadataStore

MAGIC = b"FNSMETA\0"
VERSION = 1

_HEADER = struct.Struct("<8sIIQQQQQQ")
_INODE = struct.Struct("<QQIIIIQqqqQI")
_XATTR = struct.Struct("<BI")
_DIR = struct.Struct("<QQI")
_ENTRY = struct.Struct("<QQB")
_U32 = struct.Struct("<I")
_RUN = struct.Struct("<QQI")
_BIG = sys.byteorder == "big"


class ImageError(FusenasError):
    """The bytes are not a valid metadata image of a version this code reads."""


def _crcs_bytes(crcs: array[int]) -> bytes:
    if _BIG:  # pragma: no cover - little-endian hosts only in CI
        crcs = array("q", crcs)
        crcs.byteswap()
    return crcs.tobytes()


def encode_image(store: MetadataStore) -> bytes:
    """The image of ``store`` (see the module docstring)."""
    parts: list[bytes] = [b""]  # header placeholder
    inode_pack = _INODE.pack
    entry_pack = _ENTRY.pack
    for ino in sorted(store.inodes):
        n = store.inodes[ino]
        parts.append(inode_pack(n.ino, *n.attributes(), len(n.xattrs)))
        for k, v in n.xattrs.items():
            parts.append(_XATTR.pack(len(k), len(v)))
            parts.append(k)
            parts.append(v)
        if n.dir is not None:
            d = n.dir
            parts.append(_DIR.pack(n.parent, d.next_cookie, len(d)))
            for name, child, cookie in d.items():
                parts.append(entry_pack(cookie, child, len(name)))
                parts.append(name)
        elif n.target is not None:
            parts.append(_U32.pack(len(n.target)))
            parts.append(n.target)
        elif n.extents is not None:
            parts.append(_U32.pack(len(n.extents)))
            for r in n.extents:
                parts.append(_RUN.pack(r.file_block, r.vol_block, r.count))
                parts.append(_crcs_bytes(r.crcs))
    body_len = sum(len(p) for p in parts)
    parts[0] = _HEADER.pack(
        MAGIC,
        VERSION,
        _HEADER.size,
        _HEADER.size + body_len,
        store.data_blocks,
        store.stripe_blocks,
        store.max_inodes,
        store.next_ino,
        len(store.inodes),
    )
    return b"".join(parts)


def decode_image(raw: bytes | bytearray | memoryview, *, journal: Journal) -> MetadataStore:
    """The store an image encodes, with ``journal`` for its future ops. ``ImageError`` on
    anything malformed."""
    buf = bytes(raw)
    if len(buf) < _HEADER.size:
        raise ImageError("image shorter than its header")
    (
        magic,
        version,
        header_len,
        total_len,
        data_blocks,
        stripe_blocks,
        max_inodes,
        next_ino,
        count,
    ) = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ImageError(f"bad image magic {magic!r}")
    if version != VERSION:
        raise ImageError(f"image version {version}, this code reads {VERSION}")
    if header_len != _HEADER.size or total_len > len(buf) or total_len < header_len:
        raise ImageError(f"bad image lengths (header {header_len}, total {total_len})")
    inodes: dict[int, Inode] = {}
    pos = header_len
    inode_unpack = _INODE.unpack_from
    entry_unpack = _ENTRY.unpack_from
    try:
        for _ in range(count):
            (ino, gen, mode, uid, gid, nlink, size, atime, mtime, ctime, rdev, nx) = inode_unpack(
                buf, pos
            )
            pos += _INODE.size
            node = Inode.__new__(Inode)
            node.ino, node.generation, node.mode, node.uid, node.gid = ino, gen, mode, uid, gid
            node.nlink, node.size, node.rdev = nlink, size, rdev
            node.atime_ns, node.mtime_ns, node.ctime_ns = atime, mtime, ctime
            node.dir = None
            node.target = None
            node.extents = None
            node.parent = 0
            xattrs: dict[bytes, bytes] = {}
            for _x in range(nx):
                kl, vl = _XATTR.unpack_from(buf, pos)
                pos += _XATTR.size
                xattrs[buf[pos : pos + kl]] = buf[pos + kl : pos + kl + vl]
                pos += kl + vl
            node.xattrs = xattrs
            fmt = stat.S_IFMT(mode)
            if fmt == stat.S_IFDIR:
                node.parent, next_cookie, ne = _DIR.unpack_from(buf, pos)
                pos += _DIR.size
                d = Directory()
                add = d.add_with_cookie
                for _e in range(ne):
                    cookie, child, nl = entry_unpack(buf, pos)
                    pos += 17
                    add(buf[pos : pos + nl], child, cookie)
                    pos += nl
                d.next_cookie = next_cookie
                node.dir = d
            elif fmt == stat.S_IFLNK:
                (tl,) = _U32.unpack_from(buf, pos)
                pos += 4
                node.target = buf[pos : pos + tl]
                pos += tl
            elif fmt == stat.S_IFREG:
                (nr,) = _U32.unpack_from(buf, pos)
                pos += 4
                ext = ExtentMap()
                for _r in range(nr):
                    fb, vb, n = _RUN.unpack_from(buf, pos)
                    pos += _RUN.size
                    crcs = array("q")
                    crcs.frombytes(buf[pos : pos + 8 * n])
                    if len(crcs) != n or n == 0:
                        raise ImageError(f"bad extent run of {n} blocks in inode {ino}")
                    if _BIG:  # pragma: no cover
                        crcs.byteswap()
                    pos += 8 * n
                    ext.append_run(fb, vb, crcs)
                node.extents = ext
            if pos > total_len:
                raise ImageError("inode records run past the image length")
            inodes[ino] = node
    except (struct.error, AssertionError) as e:
        raise ImageError(f"malformed image at byte {pos}: {e}") from e
    if pos != total_len:
        raise ImageError(f"image records end at {pos}, header says {total_len}")
    if len(inodes) != count:
        raise ImageError("duplicate inode numbers in image")
    return MetadataStore(
        data_blocks=data_blocks,
        stripe_blocks=stripe_blocks,
        max_inodes=max_inodes,
        journal=journal,
        next_ino=next_ino,
        inodes=inodes,
    )
