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

from collections.abc import AsyncIterator, Iterator
from typing import Protocol

from sortedcontainers import SortedDict

from fusenas.meta.btree import Change

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


class TreeReader(Protocol):
    """The bottom layer: the published tree (``fusenas.meta.btree`` over a page cache)."""

    async def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, end: bytes | None) -> AsyncIterator[tuple[bytes, bytes]]: ...


class LayeredView:
    """Reads through ``layers`` (newest first) down to ``tree``."""

    def __init__(self, layers: list[Memtable], tree: TreeReader) -> None:
        self.layers = layers
        self.tree = tree

    async def get(self, key: bytes) -> bytes | None:
        for layer in self.layers:
            v = layer.lookup(key)
            if v is not _ABSENT:
                return v  # type: ignore[return-value]
        return await self.tree.get(key)

    async def scan(self, start: bytes, end: bytes | None) -> AsyncIterator[tuple[bytes, bytes]]:
        """Items with ``start <= key < end`` in key order, as the layers together say.

        The memtables are read as they are when each of their items is reached; a change
        made during the scan may or may not be seen (as with readdir on any filesystem)."""
        mem: dict[bytes, bytes | None] = {}
        for layer in reversed(self.layers):  # newest last, so newest wins
            mem.update(layer.range(start, end))
        pending = sorted(mem)
        i = 0
        async for k, v in self.tree.scan(start, end):
            while i < len(pending) and pending[i] < k:
                mv = mem[pending[i]]
                if mv is not None:
                    yield pending[i], mv
                i += 1
            if i < len(pending) and pending[i] == k:
                mv = mem[pending[i]]
                i += 1
                if mv is not None:
                    yield k, mv
                continue
            yield k, v
        for k in pending[i:]:
            mv = mem[k]
            if mv is not None:
                yield k, mv
