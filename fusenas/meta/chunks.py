"""Metadata chunks: where the tree's pages live, and which pages are free. Pure.

A chunk is ``CHUNK_BLOCKS`` consecutive data-area blocks (16 MiB, stripe-aligned) taken from
free space for metadata pages; a page number is the data-area block it occupies
(docs/metadata_format.md, "Pages"). Which pages of a chunk are used is a bitmap kept in the
root descriptor (``fusenas.meta.root``), not in the tree: allocating a page for a checkpoint
therefore changes nothing the same checkpoint must write, so a merge never chases its own
allocations.

The reuse rule (LMDB's two roots): a page the tree of checkpoint N no longer references
becomes free only when checkpoint N+1 is published: until then the slot recovery falls back
to (N-1) may still reach it. ``free_later`` queues pages by generation; ``published(N)``
releases those queued by checkpoint N-1 and before. The pages a checkpoint stopped
referencing are also kept in its root descriptor (``fusenas.meta.root``), so that a mount
from it queues them again instead of leaking them.

Units: blocks of 4 KiB; ``first`` of a chunk is a data-area block number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: Blocks per chunk (16 MiB of 4 KiB pages).
CHUNK_BLOCKS = 4096


@dataclass
class Chunk:
    first: int
    used: bytearray = field(default_factory=lambda: bytearray(CHUNK_BLOCKS // 8))

    def is_used(self, i: int) -> bool:
        return bool(self.used[i >> 3] >> (i & 7) & 1)

    def set(self, i: int, used: bool) -> None:
        if used:
            self.used[i >> 3] |= 1 << (i & 7)
        else:
            self.used[i >> 3] &= ~(1 << (i & 7)) & 0xFF

    def used_count(self) -> int:
        return sum(bin(b).count("1") for b in self.used)


class ChunkPages:
    """The page allocator over the metadata chunks (see the module docstring)."""

    def __init__(self, chunks: Iterable[Chunk] = ()) -> None:
        self.chunks: list[Chunk] = sorted(chunks, key=lambda c: c.first)
        self._free = sum(CHUNK_BLOCKS - c.used_count() for c in self.chunks)
        self._queued: dict[int, list[int]] = {}  # generation -> pages freed by it
        self._hint = (0, 0)  # (chunk index, page index) where the last search ended

    @property
    def free_pages(self) -> int:
        return self._free

    @property
    def pages(self) -> int:
        return CHUNK_BLOCKS * len(self.chunks)

    def add_chunk(self, first: int) -> None:
        """A new chunk at data-area block ``first`` (the caller took it from free space)."""
        self.chunks.append(Chunk(first))
        self.chunks.sort(key=lambda c: c.first)
        self._free += CHUNK_BLOCKS

    def allocate(self) -> int:
        """A free page number, taken in ascending order from where the last one was, so a
        checkpoint's pages are contiguous where the chunk allows (whole-stripe writes).
        ``LookupError`` when every chunk is full (the caller adds one first)."""
        if not self._free:
            raise LookupError("no free metadata page")
        ci, pi = self._hint
        for k in range(len(self.chunks) + 1):
            c = self.chunks[(ci + k) % len(self.chunks)]
            start = pi if k == 0 else 0
            for i in range(start, CHUNK_BLOCKS):
                if c.used[i >> 3] != 0xFF and not c.is_used(i):
                    c.set(i, True)
                    self._free -= 1
                    self._hint = ((ci + k) % len(self.chunks), i + 1)
                    return c.first + i
        raise AssertionError("the free count said there was a page")

    def _locate(self, page: int) -> tuple[Chunk, int]:
        for c in self.chunks:
            if c.first <= page < c.first + CHUNK_BLOCKS:
                return c, page - c.first
        raise ValueError(f"page {page} is in no metadata chunk")

    def give_back(self, pages: Iterable[int]) -> None:
        """Pages allocated and never referenced (a merge's ``unused``): free at once."""
        for p in pages:
            c, i = self._locate(p)
            assert c.is_used(i), f"page {p} is not in use"
            c.set(i, False)
            self._free += 1

    def free_later(self, generation: int, pages: Iterable[int]) -> None:
        """Pages the tree of checkpoint ``generation`` no longer references."""
        self._queued.setdefault(generation, []).extend(pages)

    def published(self, generation: int) -> list[int]:
        """Checkpoint ``generation`` is durable: the pages checkpoint ``generation - 1``
        stopped referencing are free now (neither live root reaches them). Returns them
        (the page cache forgets them)."""
        released: list[int] = []
        for g in [g for g in self._queued if g <= generation - 1]:
            released += self._queued.pop(g)
        self.give_back(released)
        return released
