"""The metadata B+tree: lookups, ordered scans, and the copy-on-write merge of a batch of
changes into a new tree. No device I/O of its own: pages come from a ``PageSource``.

Design note (docs/metadata_format.md)
=====================================

Shape
    Leaves (level 0) hold the items (key → value), internal pages hold ``ChildRef``s keyed by
    the first key of each child's range; the first key of every internal page is ``b""`` so
    that a search never falls off the left edge. All leaves are at the same depth. Pages are
    at most ``PAGE_SIZE`` bytes encoded; nothing requires them to be full (a page may be
    under-full after deletions; ``merge`` repacks the pages it touches and folds a small page
    into its neighbour).

Copy-on-write merge
    ``merge(tree, changes)`` applies a sorted batch of changes (key → value, or ``None`` to
    delete) and returns a new ``Tree``. Every page on a path that changed is written anew (a
    fresh page number from ``allocate``, encoded with the new generation); the pages it
    replaces are listed in ``MergeResult.freed`` and are **not** touched: the old tree stays
    valid, which is what lets readers use it during the merge and a crash fall back to it.
    Children are written before their parent (a parent's pointer holds the crc of the
    encoded child), so ``MergeResult.written`` is in an order that needs no fix-up.

Cost
    Proportional to the number of pages the changes fall in (and their ancestors), never to
    the size of the tree. ``pause`` is awaited after every rebuilt leaf: the caller yields to
    its event loop there (and after every ``PAUSE_PAGES`` new pages), so that no single step
    holds it for long.

Cancellation: ``merge`` keeps no state outside its result; a cancelled merge leaves the old
tree as it was and the page numbers it allocated unused (the caller returns them).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fusenas.meta.page import (
    PAGE_CAPACITY,
    ChildRef,
    Page,
    encode_page,
    pack_items,
    page_crc,
)

#: A change: the new value, or None to delete the key.
Change = tuple[bytes, bytes | None]

#: Pages are packed to this many bytes of items when rebuilt, leaving room so that the next
#: insert into a page does not split it at once.
FILL = PAGE_CAPACITY * 7 // 8
#: ``pause`` is awaited after every rebuilt leaf and every this many new pages.
PAUSE_PAGES = 16
#: A rebuilt page less than half full is folded into a neighbour (the B-tree rule: every
#: page but the root at least half full, so a tree takes at most twice the pages its items
#: need).
UNDERFULL = PAGE_CAPACITY // 2


class PageSource(Protocol):
    """Where the tree's pages come from (a cache over the volume, or memory in tests)."""

    async def read(self, ref: ChildRef) -> Page: ...

    def read_nowait(self, ref: ChildRef) -> Page | None:
        """The page if it is at hand (no I/O, no await), else None."""
        ...


class PageMiss(Exception):
    """A synchronous read needs a page that is not at hand: await ``source.read(ref)``, then
    run the read again from the start (docs/metadata_format.md, "Operations stay atomic")."""

    def __init__(self, ref: ChildRef) -> None:
        super().__init__(ref.page)
        self.ref = ref


def _page(src: PageSource, ref: ChildRef) -> Page:
    page = src.read_nowait(ref)
    if page is None:
        raise PageMiss(ref)
    return page


@dataclass(frozen=True, slots=True)
class Tree:
    """A tree as a checkpoint publishes it: its root and height (0: the root is a leaf).
    ``root`` None is the empty tree."""

    root: ChildRef | None
    height: int = 0


@dataclass
class MergeResult:
    tree: Tree
    #: New pages as (page number, encoded bytes), children before parents.
    written: list[tuple[int, bytes]] = field(default_factory=list)
    #: Page numbers of the old tree that the new one no longer references.
    freed: list[int] = field(default_factory=list)
    #: Page numbers ``allocate`` gave that no written page uses (give them back).
    unused: list[int] = field(default_factory=list)


def get_nowait(src: PageSource, tree: Tree, key: bytes) -> bytes | None:
    """The value of ``key``, or None. ``PageMiss`` if a page on its path is not at hand."""
    if tree.root is None:
        return None
    page = _page(src, tree.root)
    while not page.is_leaf:
        page = _page(src, ChildRef.decode(page.values[page.child_index(key)]))
    i = bisect_left(page.keys, key)
    if i < len(page.keys) and page.keys[i] == key:
        return page.values[i]
    return None


def leaf_nowait(
    src: PageSource, tree: Tree, start: bytes, end: bytes | None = None
) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """The items with ``start <= key < end`` of the one leaf whose range holds ``start``,
    and where the next leaf's range begins (None: nothing more below ``end``). ``PageMiss``
    if a page on the path is not at hand. Scans call it leaf after leaf."""
    if tree.root is None:
        return [], None
    upper: bytes | None = None  # where the leaf's key range ends
    page = _page(src, tree.root)
    while not page.is_leaf:
        i = page.child_index(start)
        if i + 1 < len(page.keys):
            upper = page.keys[i + 1]
        page = _page(src, ChildRef.decode(page.values[i]))
    items: list[tuple[bytes, bytes]] = []
    for i in range(bisect_left(page.keys, start), len(page.keys)):
        k = page.keys[i]
        if end is not None and k >= end:
            return items, None
        items.append((k, page.values[i]))
    if upper is None or (end is not None and upper >= end):
        return items, None
    return items, upper


async def get(src: PageSource, tree: Tree, key: bytes) -> bytes | None:
    """``get_nowait``, loading the pages it misses."""
    while True:
        try:
            return get_nowait(src, tree, key)
        except PageMiss as miss:
            await src.read(miss.ref)


async def scan(
    src: PageSource, tree: Tree, start: bytes, end: bytes | None = None
) -> AsyncIterator[tuple[bytes, bytes]]:
    """The items with ``start <= key < end`` (``end`` None: to the last), in key order, one
    leaf at a time; the tree must not be freed while the scan runs."""
    at: bytes | None = start
    while at is not None:
        try:
            items, after = leaf_nowait(src, tree, at, end)
        except PageMiss as miss:
            await src.read(miss.ref)
            continue
        for kv in items:
            yield kv
        at = after


class _Merge:
    def __init__(
        self,
        src: PageSource,
        allocate: Callable[[], int],
        generation: int,
        pause: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self.src = src
        self.allocate = allocate
        self.generation = generation
        self.pause = pause
        self.out = MergeResult(Tree(None))
        self.fresh: dict[int, Page] = {}  # pages this merge wrote, by page number
        self.emitted = 0

    def emit(self, page: Page) -> ChildRef:
        raw = encode_page(page, self.generation)
        number = self.allocate()
        self.out.written.append((number, raw))
        self.fresh[number] = page
        return ChildRef(number, page_crc(raw), self.generation)

    async def read(self, ref: ChildRef) -> Page:
        """A page by pointer, whether this merge wrote it or the old tree holds it."""
        page = self.fresh.get(ref.page)
        return page if page is not None else await self.src.read(ref)

    def discard(self, ref: ChildRef) -> None:
        """A page replaced before anyone referenced it: a fresh one leaves the output (its
        number goes to ``unused``), an old one is freed."""
        if self.fresh.pop(ref.page, None) is None:
            self.out.freed.append(ref.page)
            return
        self.out.written = [(n, raw) for n, raw in self.out.written if n != ref.page]
        self.out.unused.append(ref.page)

    async def pages(
        self, level: int, low: bytes, keys: list[bytes], values: list[bytes]
    ) -> list[tuple[bytes, ChildRef]]:
        """Pack the items of one level (``keys`` of internal levels are separators, the
        first one ignored) into new pages; each page is returned with its first key (``low``
        for the first page). Pauses every ``PAUSE_PAGES`` pages."""
        out = []
        for lo, hi in pack_items(keys, values, fill=FILL):
            page_keys = keys[lo:hi] if level == 0 else [b"", *keys[lo + 1 : hi]]
            first = low if lo == 0 else keys[lo]
            out.append((first, self.emit(Page(level, page_keys, values[lo:hi]))))
            self.emitted += 1
            if self.pause is not None and self.emitted % PAUSE_PAGES == 0:
                await self.pause()
        return out

    async def leaf_items(
        self, ref: ChildRef | None, changes: Sequence[Change]
    ) -> tuple[list[bytes], list[bytes]]:
        """The items of the leaf ``ref`` (None: no leaf) with ``changes`` applied: one
        linear merge of the two sorted sequences (a batch may hold far more items than the
        leaf)."""
        old_k: list[bytes] = []
        old_v: list[bytes] = []
        if ref is not None:
            leaf = await self.src.read(ref)
            old_k, old_v = leaf.keys, leaf.values
        keys: list[bytes] = []
        values: list[bytes] = []
        i, n = 0, len(old_k)
        for key, value in changes:
            while i < n and old_k[i] < key:
                keys.append(old_k[i])
                values.append(old_v[i])
                i += 1
            if i < n and old_k[i] == key:
                i += 1  # replaced or deleted
            if value is not None:
                keys.append(key)
                values.append(value)
        keys += old_k[i:]
        values += old_v[i:]
        return keys, values

    async def node(
        self, ref: ChildRef | None, level: int, low: bytes, changes: Sequence[Change]
    ) -> list[tuple[bytes, ChildRef]]:
        """Rebuild the subtree ``ref`` (at ``level``; None: empty) whose key range starts at
        ``low``, with ``changes`` (sorted, all inside that range). Returns its replacement as
        (first key, pointer) pairs — none if it became empty, several if it split — where the
        first key of the first pair is ``low``: a separator stays what the parent had."""
        if ref is not None:
            self.out.freed.append(ref.page)
        if level == 0:
            keys, values = await self.leaf_items(ref, changes)
            out = await self.pages(0, low, keys, values) if keys else []
            if self.pause is not None:
                await self.pause()
            return out
        assert ref is not None, "an internal level exists only under a root"
        page = await self.src.read(ref)
        entries: list[tuple[bytes, bytes]] = []  # (separator, encoded ChildRef)
        n = len(page.keys)
        pos = 0
        for i in range(n):
            sep = page.keys[i] if i else low
            hi = bisect_left(changes, page.keys[i + 1], key=_key) if i + 1 < n else len(changes)
            part = changes[pos:hi]
            pos = hi
            if not part:
                entries.append((sep, page.values[i]))
                continue
            child = ChildRef.decode(page.values[i])
            for first, new in await self.node(child, level - 1, sep, part):
                entries.append((first, new.encode()))
        entries = await self.fold_underfull(entries, level - 1)
        if not entries:
            return []
        return await self.pages(level, low, [k for k, _ in entries], [v for _, v in entries])

    async def fold_underfull(
        self, entries: list[tuple[bytes, bytes]], level: int
    ) -> list[tuple[bytes, bytes]]:
        """Fold each page this merge wrote that is under-full into its right (or left)
        neighbour, repacking the two: keeps pages from emptying out under deletions."""
        i = 0
        while i < len(entries) and len(entries) > 1:
            ref = ChildRef.decode(entries[i][1])
            page = self.fresh.get(ref.page)
            if page is None or page.used() >= UNDERFULL:
                i += 1
                continue
            a = i if i + 1 < len(entries) else i - 1
            b = a + 1
            ra, rb = ChildRef.decode(entries[a][1]), ChildRef.decode(entries[b][1])
            left, right = await self.read(ra), await self.read(rb)
            self.discard(ra)
            self.discard(rb)
            if level == 0:
                keys, values = left.keys + right.keys, left.values + right.values
            else:  # the right page's first child gets its separator from the parent
                keys = [*left.keys, entries[b][0], *right.keys[1:]]
                values = left.values + right.values
            packed = await self.pages(level, entries[a][0], keys, values)
            merged = [(k, r.encode()) for k, r in packed]
            entries[a : b + 1] = merged
            # One page that is still small takes in the next neighbour too; a repack into
            # two pages left both at least half full.
            i = a if len(merged) == 1 else a + len(merged)
        return entries


def _key(change: Change) -> bytes:
    return change[0]


async def merge(
    src: PageSource,
    tree: Tree,
    changes: Sequence[Change],
    *,
    allocate: Callable[[], int],
    generation: int,
    pause: Callable[[], Awaitable[None]] | None = None,
) -> MergeResult:
    """Apply ``changes`` (sorted by key, each key once) to ``tree`` copy-on-write; see the
    module docstring."""
    m = _Merge(src, allocate, generation, pause)
    if not changes:
        m.out.tree = tree
        return m.out
    level = tree.height
    entries = await m.node(tree.root, level, b"", changes)
    # Grow while the top level split; then shrink while the root is an internal page with
    # one child.
    while len(entries) > 1:
        level += 1
        keys = [k for k, _ in entries]
        entries = await m.pages(level, b"", keys, [r.encode() for _, r in entries])
    if not entries:
        m.out.tree = Tree(None)
        return m.out
    root = entries[0][1]
    while level > 0:
        page = await m.read(root)
        if len(page.keys) > 1:
            break
        m.discard(root)
        root = ChildRef.decode(page.values[0])
        level -= 1
    m.out.tree = Tree(root, level)
    return m.out


__all__ = [
    "FILL",
    "Change",
    "MergeResult",
    "PageMiss",
    "PageSource",
    "Tree",
    "get",
    "get_nowait",
    "leaf_nowait",
    "merge",
    "scan",
]
