"""The memtable: metadata changes since the last checkpoint, sorted, in front of the tree. Pure.

Every metadata change is a ``put`` or ``delete`` of a key here (docs/metadata_format.md); only
the checkpointer changes the tree, by merging a *frozen* memtable into it. Reads go through a
``LayeredView``: the live memtable, then the frozen one (while a checkpoint merges it), then
the tree — the first layer that knows a key decides, and a deletion is a tombstone that hides
the key in the layers below.

Units: ``size`` is bytes of keys and values held (plus a fixed overhead per key, for the
bound), what ``-o meta_dirty`` limits.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Iterator

from sortedcontainers import SortedDict

from fusenas.meta.btree import Change, PageMiss, PageSource, Tree, get_nowait, leaf_nowait

#: Bytes counted per key beyond its key and value (the SortedDict's own cost, roughly).
KEY_OVERHEAD = 100


class Memtable:
    """Sorted key → value, or None for a deletion (a tombstone)."""

    __slots__ = ("_items", "size")

    def __init__(self) -> None:
        self._items: SortedDict[bytes, bytes | None] = SortedDict()
        self.size = 0

    def __len__(self) -> int:
        return len(self._items)

    def _set(self, key: bytes, value: bytes | None) -> None:
        if key not in self._items:
            self.size += len(key) + KEY_OVERHEAD
        else:
            old = self._items[key]
            if old is not None:
                self.size -= len(old)
        if value is not None:
            self.size += len(value)
        self._items[key] = value

    def put(self, key: bytes, value: bytes) -> None:
        self._set(key, value)

    def delete(self, key: bytes) -> None:
        """A tombstone: the key is gone whatever the layers below hold."""
        self._set(key, None)

    def lookup(self, key: bytes) -> bytes | object | None:
        """The value, None for a tombstone, or ``ABSENT`` if this layer does not know it."""
        return self._items.get(key, _ABSENT)

    def range(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes | None]]:
        """Items with ``start <= key < end`` in key order, tombstones included."""
        for k in self._items.irange(start, end, inclusive=(True, False)):
            yield k, self._items[k]

    def changes(self) -> list[Change]:
        """Everything, sorted: what a checkpoint merges into the tree."""
        return list(self._items.items())


_ABSENT = object()
#: ``Memtable.lookup`` of a key the layer does not know.
ABSENT = _ABSENT


class LayeredView:
    """Reads through ``layers`` (memtables, newest first) down to ``tree``.

    The ``_nowait`` reads are synchronous and raise ``PageMiss`` when a tree page is not at
    hand (the caller loads it and runs again); ``get`` and ``scan`` do that themselves."""

    def __init__(self, layers: list[Memtable], src: PageSource, tree: Tree) -> None:
        self.layers = layers
        self.src = src
        self.tree = tree

    def get_nowait(self, key: bytes) -> bytes | None:
        for layer in self.layers:
            v = layer.lookup(key)
            if v is not _ABSENT:
                return v  # type: ignore[return-value]
        return get_nowait(self.src, self.tree, key)

    def _memtable_items(
        self, start: bytes, end: bytes | None
    ) -> Iterator[tuple[bytes, bytes | None]]:
        """The memtables' items in ``[start, end)``, merged lazily, the newest layer's
        version of a key only."""
        streams = [
            ((k, n, v) for k, v in layer.range(start, end)) for n, layer in enumerate(self.layers)
        ]
        last: bytes | None = None
        for k, _n, v in heapq.merge(*streams, key=lambda t: (t[0], t[1])):
            if k != last:
                last = k
                yield k, v

    def items_nowait(
        self, start: bytes, end: bytes | None, limit: int
    ) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """Up to ``limit`` items with ``start <= key < end``, in key order, and where to go on
        (None: no more). ``PageMiss`` if a tree page on the way is not at hand."""
        out: list[tuple[bytes, bytes]] = []
        mem = self._memtable_items(start, end)
        pending = next(mem, None)
        at: bytes | None = start
        while at is not None and len(out) < limit:
            leaf, after = leaf_nowait(self.src, self.tree, at, end)
            for k, v in leaf:
                while pending is not None and pending[0] < k:
                    if pending[1] is not None:
                        out.append((pending[0], pending[1]))
                    pending = next(mem, None)
                if pending is not None and pending[0] == k:
                    if pending[1] is not None:
                        out.append((k, pending[1]))
                    pending = next(mem, None)
                else:
                    out.append((k, v))
            at = after
        if len(out) > limit:
            return out[:limit], out[limit][0]
        if at is None:  # the tree is done below ``end``: the rest is the memtables'
            while pending is not None and len(out) < limit:
                if pending[1] is not None:
                    out.append((pending[0], pending[1]))
                pending = next(mem, None)
            return out, None if pending is None else pending[0]
        return out, at if pending is None else min(at, pending[0])

    async def get(self, key: bytes) -> bytes | None:
        while True:
            try:
                return self.get_nowait(key)
            except PageMiss as miss:
                await self.src.read(miss.ref)

    async def scan(
        self, start: bytes, end: bytes | None, *, batch: int = 256
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """Items with ``start <= key < end`` in key order, as the layers together say, in
        batches of ``batch`` (changes made between batches may or may not be seen, as with
        readdir on any filesystem)."""
        at: bytes | None = start
        while at is not None:
            try:
                items, after = self.items_nowait(at, end, batch)
            except PageMiss as miss:
                await self.src.read(miss.ref)
                continue
            for kv in items:
                yield kv
            at = after
