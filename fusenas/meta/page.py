"""Metadata tree pages: the on-volume format of one B+tree node, encoded and decoded. Pure.

Format (docs/metadata_format.md, "Pages"), little-endian, ``PAGE_SIZE`` bytes::

    header (32 bytes)
      magic       4s   b"FNP1"
      level       u8   0 = leaf, n = n levels above the leaves
      flags       u8   0 (reserved)
      count       u16  number of items
      reserved    u32  0
      generation  u64  sequence number of the checkpoint that wrote the page
      owner       u32  tree id (1: the metadata tree)
      crc         u32  crc32c of the whole page with this field zero
    slot array: count * (key_len u16, value_len u16), in key order
    then the keys and values, packed in slot order: key 0, value 0, key 1, value 1, ...
    zero padding to PAGE_SIZE

A leaf's values are the records of docs/metadata_format.md; an internal page's values are
child pointers (``ChildRef``: page number, crc32c and generation of the child), keyed by the
child's first key (the first key of an internal page's first child is ``b""``: it covers
everything below the next key).

Invariants (``decode_page`` checks them; anything else is ``PageError``): the magic, the crc,
the level, and that the items fit the page. Keys strictly ascending is checked too, so a page
that decodes is a page the tree can search with ``bisect``.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import crc32c

from fusenas.errors import FusenasError

PAGE_SIZE = 4096
MAGIC = b"FNP1"
META_TREE = 1

_HEADER = struct.Struct("<4sBBHIQII")
HEADER_SIZE = _HEADER.size  # 32
_SLOT = struct.Struct("<HH")
SLOT_SIZE = _SLOT.size
_CRC_AT = HEADER_SIZE - 4
#: Bytes of keys, values and slots one page holds.
PAGE_CAPACITY = PAGE_SIZE - HEADER_SIZE

_CHILD = struct.Struct("<QIQ")


class PageError(FusenasError):
    """A page that is not a valid metadata page (torn, misdirected or rotted)."""


@dataclass(frozen=True, slots=True)
class ChildRef:
    """Where an internal page's child lives: its page number, the crc32c of its bytes and the
    generation that wrote it (a pointer carries the checksum of what it points to, so a page
    that is intact but not the one expected is caught too)."""

    page: int
    crc: int
    generation: int

    def encode(self) -> bytes:
        return _CHILD.pack(self.page, self.crc, self.generation)

    @staticmethod
    def decode(raw: bytes) -> ChildRef:
        page, crc, generation = _CHILD.unpack(raw)
        return ChildRef(page, crc, generation)


def item_size(key: bytes, value: bytes) -> int:
    """Bytes an item takes in a page: its slot, key and value."""
    return SLOT_SIZE + len(key) + len(value)


@dataclass(slots=True)
class Page:
    """A decoded page: parallel lists of keys and values, sorted by key."""

    level: int
    keys: list[bytes]
    values: list[bytes]
    generation: int = 0

    @property
    def is_leaf(self) -> bool:
        return self.level == 0

    def used(self) -> int:
        """Bytes of the page's items (slots, keys, values), header excluded."""
        return sum(map(len, self.keys)) + sum(map(len, self.values)) + SLOT_SIZE * len(self.keys)

    def child_index(self, key: bytes) -> int:
        """Internal pages: the index of the child whose key range holds ``key``."""
        return max(0, bisect_right(self.keys, key) - 1)


def encode_page(page: Page, generation: int) -> bytes:
    """The ``PAGE_SIZE`` bytes of ``page`` as written by checkpoint ``generation``.
    ``ValueError`` if its items do not fit."""
    n = len(page.keys)
    if n != len(page.values):
        raise ValueError("one value per key")
    if n > 0xFFFF:
        raise ValueError("too many items")
    body_len = SLOT_SIZE * n + sum(map(len, page.keys)) + sum(map(len, page.values))
    if body_len > PAGE_CAPACITY:
        raise ValueError(f"{body_len} bytes of items do not fit a page")
    parts: list[bytes] = [b""]  # the header, once the crc is known
    slots = bytearray(SLOT_SIZE * n)
    for i, (k, v) in enumerate(zip(page.keys, page.values, strict=True)):
        _SLOT.pack_into(slots, i * SLOT_SIZE, len(k), len(v))
    parts.append(bytes(slots))
    for k, v in zip(page.keys, page.values, strict=True):
        parts.append(k)
        parts.append(v)
    parts.append(bytes(PAGE_CAPACITY - body_len))
    parts[0] = _HEADER.pack(MAGIC, page.level, 0, n, 0, generation, META_TREE, 0)
    raw = bytearray(b"".join(parts))
    struct.pack_into("<I", raw, _CRC_AT, crc32c.crc32c(raw))
    return bytes(raw)


def page_crc(raw: bytes) -> int:
    """The crc32c a ``ChildRef`` keeps for an encoded page (the one in its header)."""
    return int(struct.unpack_from("<I", raw, _CRC_AT)[0])


def decode_page(raw: bytes, *, expect: ChildRef | None = None) -> Page:
    """Decode and verify one page; ``expect``: the pointer that led here (crc and
    generation must match). ``PageError`` on any mismatch."""
    if len(raw) != PAGE_SIZE:
        raise PageError(f"page of {len(raw)} bytes")
    magic, level, _flags, n, _res, generation, owner, crc = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise PageError("not a metadata page (bad magic)")
    check = bytearray(raw)
    struct.pack_into("<I", check, _CRC_AT, 0)
    if crc32c.crc32c(check) != crc:
        raise PageError("metadata page checksum mismatch")
    if expect is not None and (crc != expect.crc or generation != expect.generation):
        raise PageError(
            f"page {expect.page} is not the one its parent points to (crc {crc:08x} "
            f"generation {generation}, expected {expect.crc:08x} {expect.generation})"
        )
    if owner != META_TREE:
        raise PageError(f"page of tree {owner}")
    pos = HEADER_SIZE + SLOT_SIZE * n
    if pos > PAGE_SIZE:
        raise PageError("slot array past the page")
    keys: list[bytes] = []
    values: list[bytes] = []
    for i in range(n):
        klen, vlen = _SLOT.unpack_from(raw, HEADER_SIZE + i * SLOT_SIZE)
        end = pos + klen + vlen
        if end > PAGE_SIZE:
            raise PageError("item past the page")
        key = raw[pos : pos + klen]
        if keys and key <= keys[-1]:
            raise PageError("keys out of order")
        keys.append(key)
        values.append(raw[pos + klen : end])
        pos = end
    return Page(level, keys, values, generation)


def pack_items(
    keys: Sequence[bytes], values: Sequence[bytes], *, fill: int = PAGE_CAPACITY
) -> list[tuple[int, int]]:
    """Cut the sorted items into consecutive page-sized groups, as ``[lo, hi)`` index
    ranges: each group's items take at most ``fill`` bytes (always at least one item), and
    the last two groups are balanced so that no page is left nearly empty."""
    groups: list[tuple[int, int]] = []
    lo, used = 0, 0
    for i, (k, v) in enumerate(zip(keys, values, strict=True)):
        size = item_size(k, v)
        if i > lo and used + size > fill:
            groups.append((lo, i))
            lo, used = i, 0
        used += size
    if lo < len(keys) or not groups:
        groups.append((lo, len(keys)))
    if len(groups) >= 2:
        # Balance the last two: move items from the full one into a small tail.
        (a, b), (_, c) = groups[-2], groups[-1]
        tail = sum(item_size(keys[j], values[j]) for j in range(b, c))
        while b - a > 1 and tail < fill // 2:
            moved = item_size(keys[b - 1], values[b - 1])
            if tail + moved > fill:
                break
            b -= 1
            tail += moved
        groups[-2:] = [(a, b), (b, c)]
    return groups
