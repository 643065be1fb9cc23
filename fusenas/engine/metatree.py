"""MetadataTree: the engine's side of metadata on pages (docs/metadata_format.md).

It owns the page cache, the metadata chunks and the live/frozen memtables (``PagedState``),
and does the part of a checkpoint that is specific to pages: freeze the memtable at the
checkpoint's instant, merge it into the tree copy-on-write (``fusenas.meta.btree.merge``,
pausing for the event loop), write the new pages, and produce the root descriptor that the
checkpoint slot then holds. ``Checkpointer`` calls it in its usual order, so the pages are
written before the member flush and the slot after it.

Where pages go: data-area blocks of the metadata chunks (``fusenas.meta.chunks``). The page
writes go through a ``StripeWriter`` with the stripe cache's journal hook, so a whole stripe
of new pages is written without a record and a partial one (sharing a row with live pages)
takes a ``STRIPE`` record first: the write hole stays closed for metadata as for data.

Crash: nothing the previous slot references is written (pages are copy-on-write and freed
pages wait a checkpoint, ``ChunkPages``); a cut leaves that slot and its tree intact, and the
journal's ``META`` records since it are replayed into a fresh memtable.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from fusenas.errors import NoSpaceError
from fusenas.meta.allocator import RunSet
from fusenas.meta.btree import PageMiss, merge, scan
from fusenas.meta.chunks import CHUNK_BLOCKS, ChunkPages
from fusenas.meta.keys import Kind
from fusenas.meta.memtable import Memtable
from fusenas.meta.pagecache import PageCache, PageDevice
from fusenas.meta.paged import PagedState
from fusenas.meta.root import RootDescriptor
from fusenas.meta.space import SpaceMap

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Default bound of the page cache (``-o meta_cache``), bytes.
DEFAULT_META_CACHE = 128 << 20
#: Pause the merge for the event loop at least this often, seconds.
SLICE = 0.02

WritePages = Callable[[int, bytes], Awaitable[None]]
#: Called with (first block, block count) of a new chunk before any page is written there:
#: the engine drops cached dirty data of those rows (blocks freed before the chunk took them).
NewChunk = Callable[[int, int], Awaitable[None]]


class MetadataTree:
    """See the module docstring. Build with ``load``."""

    def __init__(
        self,
        root: RootDescriptor,
        pages: PageCache,
        space: SpaceMap,
        write_pages: WritePages,
        new_chunk: NewChunk | None = None,
    ) -> None:
        self.pages = pages
        self.state = PagedState(pages, root.tree)
        self.space = space
        self.chunks = ChunkPages(root.chunks)
        self.chunks.free_later(root.generation, root.freed)
        self.generation = root.generation
        self.data_blocks = root.data_blocks
        self.stripe_blocks = root.stripe_blocks
        self._write_pages = write_pages
        self._new_chunk = new_chunk
        #: Blocks allocated to files and not yet mapped (the store's ``pending``): a new
        #: chunk never takes them.
        self.busy: RunSet | None = None

    @classmethod
    async def load(
        cls,
        root: RootDescriptor,
        device: PageDevice,
        write_pages: WritePages,
        capacity: int,
        new_chunk: NewChunk | None = None,
    ) -> MetadataTree:
        """The tree of ``root``: reads the free-space summaries (4 bytes per 32 MiB of data
        area), nothing else."""
        pages = PageCache(device, capacity)
        fresh = SpaceMap.empty(root.data_blocks, root.stripe_blocks)
        counts = fresh.counts
        start = bytes((Kind.SPACESUM,))
        async for key, value in scan(pages, root.tree, start, bytes((Kind.SPACESUM + 1,))):
            first = int.from_bytes(key[1:9], "big")
            got = array("I")
            got.frombytes(value)
            counts[first : first + len(got)] = got
        space = SpaceMap(root.data_blocks, root.stripe_blocks, counts)
        tree = cls(root, pages, space, write_pages, new_chunk)
        await tree._claim_chunks()
        return tree

    async def _claim_chunks(self) -> None:
        """Mark the chunks of the root descriptor used in the free space where the tree does
        not yet (a chunk added by the last checkpoint reaches the tree at the next one)."""
        for run in self.chunk_runs():
            await self.run(self.space.ensure_used, self.state.view, self.state.live, [run])

    def chunk_runs(self) -> list[tuple[int, int]]:
        """The data-area blocks the metadata chunks hold (whole stripes each)."""
        take = -(-CHUNK_BLOCKS // self.stripe_blocks) * self.stripe_blocks
        return [(c.first, take) for c in self.chunks.chunks]

    async def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a synchronous call that reads pages; when it misses one, load it and run the
        call again from the start (docs/metadata_format.md, "Operations stay atomic")."""
        while True:
            try:
                return fn(*args, **kw)
            except PageMiss as miss:
                await self.pages.read(miss.ref)

    # -- a checkpoint -------------------------------------------------------------------------

    def freeze(self) -> Memtable:
        """At the checkpoint's instant: the changes so far become the frozen memtable (with
        those of a failed earlier checkpoint still under them), a new one takes the writes."""
        state = self.state
        frozen = state.live
        if state.frozen is not None:
            older = state.frozen
            for key, value in frozen.changes():
                if value is None:
                    older.delete(key)
                else:
                    older.put(key, value)
            frozen = older
        state.frozen, state.live = frozen, Memtable()
        return frozen

    async def write(self, frozen: Memtable, *, next_ino: int, inode_count: int) -> bytes:
        """Merge ``frozen`` into the tree, write the new pages, and return the root
        descriptor to publish. The pages are written, not yet flushed. On an exception the
        frozen changes stay layered under the live ones (``freeze`` folds them into the
        next checkpoint) and the page numbers taken are given back."""
        changes = frozen.changes()
        await self._ensure_pages(len(changes) // 8 + 64)
        generation = self.generation + 1
        taken: list[int] = []

        def allocate() -> int:
            number = self.chunks.allocate()
            taken.append(number)
            return number

        while True:
            taken.clear()
            try:
                result = await merge(
                    self.pages,
                    self.state.tree,
                    changes,
                    allocate=allocate,
                    generation=generation,
                    pause=_pauser(),
                )
            except LookupError:  # the chunks ran out: one more, then merge again
                self.chunks.give_back(taken)
                await self._ensure_pages(self.chunks.free_pages + CHUNK_BLOCKS // 2)
                continue
            break
        try:
            await self._write(result.written)
        except BaseException:
            self.chunks.give_back([n for n, _ in result.written] + result.unused)
            raise
        self.chunks.give_back(result.unused)
        self.chunks.free_later(generation, result.freed)
        self.generation = generation
        self.state.tree = result.tree
        self.state.frozen = None
        return RootDescriptor(
            generation,
            result.tree,
            self.data_blocks,
            self.stripe_blocks,
            next_ino,
            inode_count,
            self.chunks.chunks,
            result.freed,
        ).encode()

    def published(self) -> None:
        """The checkpoint of the last ``write`` is durable: pages the one before stopped
        referencing are free now."""
        for number in self.chunks.published(self.generation):
            self.pages.forget(number)

    async def _write(self, written: list[tuple[int, bytes]]) -> None:
        """The new pages, contiguous runs in one write each."""
        run: list[bytes] = []
        first = prev = -2
        for number, raw in sorted(written):
            if number != prev + 1 and run:
                await self._write_pages(first, b"".join(run))
                run = []
            if not run:
                first = number
            run.append(raw)
            prev = number
        if run:
            await self._write_pages(first, b"".join(run))

    async def _ensure_pages(self, need: int) -> None:
        """Add chunks until ``need`` pages are free. A chunk takes whole stripes (its last
        row is rounded up: no data block shares a row with metadata pages). Its blocks are
        marked used in the live memtable (the tree gets them at the next checkpoint; until
        then the chunk table in the root descriptor is what protects them)."""
        stripe = self.stripe_blocks
        take = -(-CHUNK_BLOCKS // stripe) * stripe

        def take_chunk() -> list[tuple[int, int]]:
            runs = self.space.allocate(self.state.view, take, busy=self.busy)
            if len(runs) != 1 or runs[0][0] % stripe:
                raise NoSpaceError("no 16 MiB of contiguous free space for metadata")
            self.space.mark_used(self.state.view, self.state.live, runs)
            return runs

        while self.chunks.free_pages < need:
            first = (await self.run(take_chunk))[0][0]
            if self._new_chunk is not None:
                await self._new_chunk(first, take)
            self.chunks.add_chunk(first)
            log.info("metadata chunk added at data-area block %d", first)


def _pauser() -> Callable[[], Awaitable[None]]:
    """A ``pause`` for ``merge`` that yields to the event loop once ``SLICE`` seconds of
    work went by since the last yield."""
    last = [trio.current_time()]

    async def pause() -> None:
        now = trio.current_time()
        if now - last[0] >= SLICE:
            await trio.sleep(0)
            last[0] = trio.current_time()

    return pause
