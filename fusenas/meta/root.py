"""The root descriptor: what a checkpoint slot holds once metadata lives in the tree. Pure.

It replaces the whole-namespace image of ``fusenas.meta.image`` inside the existing two
checkpoint slots (``fusenas.wal.checkpoint``: the slot header carries its length and
crc32c), and is small: a few dozen bytes, plus 520 bytes per metadata chunk, plus 8 bytes per
page the checkpoint stopped referencing. Mount reads it and the tree's root, nothing else.

Layout (little-endian)::

    magic          8s   b"FNSROOT\\0"
    version        u32  2 (the image format was version 1)
    generation     u64  sequence number of the checkpoint
    height         u32  tree height (0: the root is a leaf)
    root page      u64  0 with root crc and generation 0: the empty tree
    root crc       u32
    root gen       u64
    data_blocks    u64
    stripe_blocks  u64
    next_ino       u64
    inode_count    u64
    chunk_count    u32
    freed_count    u32
    chunk_count * (first block u64, used-page bitmap 512 bytes)
    freed_count * page u64    pages this checkpoint's tree no longer references; they are
                              free once the next checkpoint is published (``ChunkPages``)

``RootError`` for a wrong magic, version or length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from fusenas.errors import FusenasError
from fusenas.meta.btree import Tree
from fusenas.meta.chunks import CHUNK_BLOCKS, Chunk
from fusenas.meta.page import ChildRef

MAGIC = b"FNSROOT\0"
VERSION = 2
_HEAD = struct.Struct("<8sIQIQIQQQQQII")
_CHUNK = struct.Struct(f"<Q{CHUNK_BLOCKS // 8}s")
_U64 = struct.Struct("<Q")


class RootError(FusenasError):
    """A checkpoint slot that holds no valid root descriptor."""


@dataclass
class RootDescriptor:
    generation: int
    tree: Tree
    data_blocks: int
    stripe_blocks: int
    next_ino: int
    inode_count: int
    chunks: list[Chunk] = field(default_factory=list)
    freed: list[int] = field(default_factory=list)

    def encode(self) -> bytes:
        ref = self.tree.root or ChildRef(0, 0, 0)
        parts = [
            _HEAD.pack(
                MAGIC,
                VERSION,
                self.generation,
                self.tree.height,
                ref.page,
                ref.crc,
                ref.generation,
                self.data_blocks,
                self.stripe_blocks,
                self.next_ino,
                self.inode_count,
                len(self.chunks),
                len(self.freed),
            )
        ]
        parts += [_CHUNK.pack(c.first, bytes(c.used)) for c in self.chunks]
        parts += [_U64.pack(p) for p in self.freed]
        return b"".join(parts)

    @staticmethod
    def decode(raw: bytes) -> RootDescriptor:
        if len(raw) < _HEAD.size:
            raise RootError("root descriptor too short")
        (magic, version, gen, height, page, crc, rgen, data_blocks, stripe_blocks, next_ino,
         inodes, nchunks, nfreed) = _HEAD.unpack_from(raw)  # fmt: skip
        if magic != MAGIC:
            raise RootError("not a root descriptor (bad magic)")
        if version != VERSION:
            raise RootError(f"root descriptor version {version}, expected {VERSION}")
        want = _HEAD.size + nchunks * _CHUNK.size + nfreed * _U64.size
        if len(raw) != want:
            raise RootError(f"root descriptor of {len(raw)} bytes, expected {want}")
        pos = _HEAD.size
        chunks = []
        for _ in range(nchunks):
            first, used = _CHUNK.unpack_from(raw, pos)
            chunks.append(Chunk(first, bytearray(used)))
            pos += _CHUNK.size
        freed = [_U64.unpack_from(raw, pos + 8 * i)[0] for i in range(nfreed)]
        root = None if page == 0 and crc == 0 and rgen == 0 else ChildRef(page, crc, rgen)
        return RootDescriptor(
            gen, Tree(root, height), data_blocks, stripe_blocks, next_ino, inodes, chunks, freed
        )


def is_root_descriptor(raw: bytes) -> bool:
    """Whether a slot's payload is a root descriptor (else: a version 1 image to convert)."""
    return raw[: len(MAGIC)] == MAGIC
