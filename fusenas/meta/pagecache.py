"""PageCache: decoded metadata pages, bounded, least recently used first out.

The tree's ``PageSource`` over a ``PageDevice`` (the engine gives one that reads data-area
blocks through the stripe cache). Page numbers are data-area block numbers: a metadata page
is a 4 KiB block of a metadata chunk (docs/metadata_format.md).

Invariants
* Pages are immutable once written (copy-on-write), so a cached page never goes stale: the
  cache is keyed by page number and checked against the pointer's crc and generation, and a
  page number is reused only two checkpoints after its page was freed, when nothing can
  reach the old page any more (``forget`` drops it then, so the cache never serves it).
* ``size`` (bytes) stays at most ``capacity``; one page larger than that is still returned
  (never cached).
* A page that fails its checksum is asked of redundancy (``PageDevice.heal``: the other
  copies, or the row without the bad member; the bad copy is rewritten). Only when no copy
  passes is it ``PageError``: the metadata is damaged (the caller turns the volume read-only).

Cancellation: a cancelled ``read`` caches nothing and leaves nothing behind.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fusenas.meta.page import ChildRef, Page, PageError, decode_page

#: Bytes a decoded page is counted for beyond its items (the Page, two lists, an object
#: header per key and value).
PAGE_OVERHEAD = 200
ITEM_OVERHEAD = 2 * 40


class PageDevice(Protocol):
    """Reads 4 KiB metadata pages by page number."""

    async def read(self, block: int, count: int) -> bytes: ...

    def read_nowait(self, block: int, count: int) -> bytes | None: ...

    async def heal_block(self, block: int, check: Callable[[bytes], bool]) -> bytes | None: ...


@dataclass(frozen=True)
class PageCacheStatistics:
    hits: int
    misses: int
    healed: int
    pages: int
    bytes: int
    capacity: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 1.0


def _cost(page: Page) -> int:
    return PAGE_OVERHEAD + page.used() + ITEM_OVERHEAD * len(page.keys)


class PageCache:
    """See the module docstring."""

    def __init__(self, device: PageDevice, capacity: int) -> None:
        self._dev = device
        self.capacity = capacity
        self._pages: OrderedDict[int, tuple[Page, ChildRef, int]] = OrderedDict()
        self.size = 0
        self._hits = 0
        self._misses = 0
        self._healed = 0

    def _hit(self, ref: ChildRef) -> Page | None:
        entry = self._pages.get(ref.page)
        if entry is None or entry[1] != ref:
            return None
        self._pages.move_to_end(ref.page)
        self._hits += 1
        return entry[0]

    def _keep(self, ref: ChildRef, page: Page) -> None:
        cost = _cost(page)
        if cost > self.capacity:
            return
        self.forget(ref.page)
        self._pages[ref.page] = (page, ref, cost)
        self.size += cost
        while self.size > self.capacity:
            _, (_, _, c) = self._pages.popitem(last=False)
            self.size -= c

    async def read(self, ref: ChildRef) -> Page:
        """The page ``ref`` points to, verified against it."""
        page = self._hit(ref)
        if page is not None:
            return page
        self._misses += 1
        raw = await self._dev.read(ref.page, 1)
        try:
            page = decode_page(raw, expect=ref)
        except PageError:
            page = await self._heal(ref)
        self._keep(ref, page)
        return page

    def read_nowait(self, ref: ChildRef) -> Page | None:
        """The page if memory or the members' page cache hold it and it verifies; None
        otherwise (the async ``read`` then does the rest). Never blocks."""
        page = self._hit(ref)
        if page is not None:
            return page
        raw = self._dev.read_nowait(ref.page, 1)
        if raw is None:
            return None
        try:
            page = decode_page(raw, expect=ref)
        except PageError:
            return None
        self._misses += 1
        self._keep(ref, page)
        return page

    async def _heal(self, ref: ChildRef) -> Page:
        def good(raw: bytes) -> bool:
            try:
                decode_page(raw, expect=ref)
            except PageError:
                return False
            return True

        raw = await self._dev.heal_block(ref.page, good)
        if raw is None:
            raise PageError(f"metadata page {ref.page} is damaged and no copy is intact")
        self._healed += 1
        return decode_page(raw, expect=ref)

    def forget(self, number: int) -> None:
        """Drop page ``number`` (its number is about to be reused)."""
        entry = self._pages.pop(number, None)
        if entry is not None:
            self.size -= entry[2]

    def statistics(self) -> PageCacheStatistics:
        return PageCacheStatistics(
            hits=self._hits,
            misses=self._misses,
            healed=self._healed,
            pages=len(self._pages),
            bytes=self.size,
            capacity=self.capacity,
        )
