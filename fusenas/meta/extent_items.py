"""A file's extent map as items of the metadata tree. Pure and synchronous.

The paged counterpart of ``fusenas.meta.extents.ExtentMap`` (same answers: ``lookup`` covers
a range with ``Mapping``s, holes included; ``set``/``punch``/``truncate`` return the volume
runs they displaced), over a ``LayeredView`` for reads and a ``Memtable`` for changes.

Items (docs/metadata_format.md, "Keys"): key ``EXTENT | ino | last file block`` — keyed by
the **last** block an item covers, so the item that holds block ``b`` is the first item at or
after key ``(ino, b)``, found by one forward scan (no predecessor search) — and value
``ExtentItem``: first volume block, block count, flags, one crc32c per block unless
``UNWRITTEN`` (then the blocks read as zeros and no checksum is stored, whatever the count:
fallocate of any size is a few items).

Invariants: the items of an inode never overlap; a written item covers at most
``MAX_WRITTEN_BLOCKS`` blocks (its checksums fit a page comfortably); an unwritten item at
most ``MAX_UNWRITTEN_BLOCKS``. Neighbouring items are not merged (two lookups answer the same
blocks either way).

Reads raise ``PageMiss`` before anything is changed: ``set``, ``punch`` and ``truncate`` read
every item they will touch first, then write (the caller reruns them after loading the page).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Sequence

from fusenas.meta.extents import UNWRITTEN as UNWRITTEN_CRC
from fusenas.meta.extents import Mapping, VolRun
from fusenas.meta.keys import Kind, extent_key, prefix, prefix_end
from fusenas.meta.memtable import LayeredView, Memtable
from fusenas.meta.records import MAX_WRITTEN_BLOCKS, UNWRITTEN, ExtentItem

#: The most blocks one unwritten item covers (16 TiB of 4 KiB blocks fits in 2^32).
MAX_UNWRITTEN_BLOCKS = (1 << 32) - 1
_BATCH = 64


def _last_block(key: bytes) -> int:
    return int(struct.unpack_from(">Q", key, 9)[0])


def _items(view: LayeredView, ino: int, first: int) -> Iterator[tuple[int, ExtentItem]]:
    """(first file block, item) of the items ending at or after ``first``, in order."""
    at: bytes | None = extent_key(ino, first)
    end = prefix_end(prefix(Kind.EXTENT, ino))
    while at is not None:
        batch, at = view.items_nowait(at, end, _BATCH)
        for key, raw in batch:
            item = ExtentItem.decode(raw)
            yield _last_block(key) - item.count + 1, item


def lookup(view: LayeredView, ino: int, first: int, count: int) -> list[Mapping]:
    """Cover file blocks ``[first, first+count)`` exactly, holes included, in order. A
    ``Mapping``'s crcs are ``-1`` for unwritten blocks (``fusenas.meta.extents``)."""
    out: list[Mapping] = []
    end = first + count
    pos = first
    for start, item in _items(view, ino, first):
        if pos >= end or start >= end:
            break
        if start > pos:
            out.append(Mapping(pos, start - pos, None, ()))
            pos = start
        stop = min(end, start + item.count)
        off = pos - start
        crcs = (
            (UNWRITTEN_CRC,) * (stop - pos)
            if item.flags & UNWRITTEN
            else tuple(item.crcs[off : off + stop - pos])
        )
        out.append(Mapping(pos, stop - pos, item.vol_block + off, crcs))
        pos = stop
    if pos < end:
        out.append(Mapping(pos, end - pos, None, ()))
    return out


def check(view: LayeredView, ino: int) -> list[str]:
    """The invariants of an inode's extent items (fsck), one sentence per violation."""
    problems: list[str] = []
    prev_end = 0
    for start, item in _items(view, ino, 0):
        if start < prev_end:
            problems.append(f"items overlap at file block {start}")
        limit = MAX_UNWRITTEN_BLOCKS if item.flags & UNWRITTEN else MAX_WRITTEN_BLOCKS
        if not 0 < item.count <= limit:
            problems.append(f"item at file block {start} covers {item.count} blocks")
        prev_end = start + item.count
    return problems


def end_block(view: LayeredView, ino: int) -> int:
    """One past the last mapped file block; 0 if none."""
    last = None
    for start, item in _items(view, ino, 0):
        last = start + item.count
    return last or 0


def _put(mem: Memtable, ino: int, start: int, item: ExtentItem) -> None:
    mem.put(extent_key(ino, start + item.count - 1), item.encode())


def _piece(item: ExtentItem, off: int, n: int) -> ExtentItem:
    """Blocks ``[off, off+n)`` of ``item`` as an item of their own."""
    crcs = array("I") if item.flags & UNWRITTEN else item.crcs[off : off + n]
    return ExtentItem(item.vol_block + off, n, item.flags, crcs)


def punch(view: LayeredView, mem: Memtable, ino: int, first: int, count: int) -> list[VolRun]:
    """Unmap file blocks ``[first, first+count)``; return the displaced volume runs."""
    if count <= 0:
        return []
    end = first + count
    touched = []
    for start, item in _items(view, ino, first):  # every read before any change
        if start >= end:
            break
        touched.append((start, item))
    freed: list[VolRun] = []
    for start, item in touched:
        mem.delete(extent_key(ino, start + item.count - 1))
        stop = start + item.count
        if start < first:
            _put(mem, ino, start, _piece(item, 0, first - start))
        lo, hi = max(first, start), min(end, stop)
        freed.append((item.vol_block + lo - start, hi - lo))
        if stop > end:
            _put(mem, ino, end, _piece(item, end - start, stop - end))
    return freed


def truncate(view: LayeredView, mem: Memtable, ino: int, keep_below: int) -> list[VolRun]:
    """Unmap every file block ``>= keep_below``; return the displaced volume runs."""
    end = end_block(view, ino)
    return punch(view, mem, ino, keep_below, end - keep_below) if end > keep_below else []


def set_blocks(
    view: LayeredView,
    mem: Memtable,
    ino: int,
    first: int,
    vol_runs: Sequence[VolRun],
    crcs: Sequence[int] | None,
) -> list[VolRun]:
    """Map file blocks from ``first`` on to ``vol_runs`` (consecutive), replacing whatever
    was mapped there: written blocks with one crc32c each (``crcs``), or, with ``crcs``
    None, unwritten blocks (allocated, reading as zeros; no per-block state at all, so the
    cost does not grow with the length). Returns the displaced volume runs."""
    total = sum(n for _, n in vol_runs)
    if crcs is not None and total != len(crcs):
        raise ValueError(f"{len(crcs)} checksums for {total} blocks")
    freed = punch(view, mem, ino, first, total)
    pos = first
    for vol, n in vol_runs:
        at = pos - first
        put_blocks(mem, ino, pos, vol, n, None if crcs is None else crcs[at : at + n])
        pos += n
    return freed


def put_blocks(
    mem: Memtable, ino: int, first: int, vol: int, n: int, crcs: Sequence[int] | None
) -> None:
    """Write the items that map file blocks ``[first, first+n)`` to volume blocks from
    ``vol``: written with ``crcs`` (one per block), or unwritten with None. No read: the
    range must hold no item (``set_blocks`` punches it first)."""
    limit = MAX_UNWRITTEN_BLOCKS if crcs is None else MAX_WRITTEN_BLOCKS
    for done in range(0, n, limit):
        k = min(n - done, limit)
        if crcs is None:
            item = ExtentItem(vol + done, k, UNWRITTEN, array("I"))
        else:
            item = ExtentItem(vol + done, k, 0, array("I", crcs[done : done + k]))
        _put(mem, ino, first + done, item)
