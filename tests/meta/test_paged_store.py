"""The metadata store on pages runs the model-based sequences of test_model_based.py.

Pages start cold and every checkpoint's new pages are cold again, so most reads miss and
every operation is run, missed, loaded and run again (docs/metadata_format.md, "Operations
stay atomic"). A miss must come before the op changes anything: nothing journaled, nothing
in the memtable, no free-space count moved — a miss after that fails the test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from fusenas.meta.btree import PageMiss, Tree
from fusenas.meta.memtable import Memtable
from fusenas.meta.paged import PagedState, SpaceAllocator
from fusenas.meta.space import SpaceMap
from fusenas.meta.store import MetadataStore
from tests.meta.test_btree import MemoryPages
from tests.meta.test_model_based import DATA_BLOCKS, MAX_INODES, run_sequence


class Paged:
    fsck = False  # fsck walks the in-memory structures; the paged fsck streams (to come)
    image = False

    def __init__(self) -> None:
        self.rigs: dict[int, tuple[PagedState, MemoryPages, list[int], SpaceAllocator]] = {}
        self.generation = 0
        self.misses = 0

    def new(self, journal: Callable[[bytes], object]) -> MetadataStore:
        src = MemoryPages()
        src.cold = True
        state = PagedState(src, Tree(None))
        space = SpaceAllocator(state, SpaceMap.empty(DATA_BLOCKS, 8))
        appended = [0]

        def counting(payload: bytes) -> None:
            appended[0] += 1
            journal(payload)

        store = MetadataStore.create_on_pages(
            state, space=space, stripe_blocks=8, max_inodes=MAX_INODES, journal=counting, now_ns=1
        )
        self.rigs[id(store)] = (state, src, appended, space)
        return store

    def call(self, store: MetadataStore, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        state, src, appended, space = self.rigs[id(store)]
        src.at_hand.clear()  # every call starts cold, as after an await that evicted pages
        while True:
            before = (appended[0], len(state.live), state.live.size, space.free_blocks)
            try:
                return fn(*args, **kw)
            except PageMiss as miss:
                self.misses += 1
                after = (appended[0], len(state.live), state.live.size, space.free_blocks)
                changed = after != before or store.inodes._dirty  # type: ignore[attr-defined]
                assert not changed, f"{fn.__name__} missed a page after changing something"
                src.at_hand.add(miss.ref.page)

    def replay(self, store: MetadataStore, op: Any) -> None:
        """As the engine replays: read ahead (may miss, changes nothing), then apply."""
        self.call(store, store.prefetch_op, op)
        _, src, _, _ = self.rigs[id(store)]
        cold, src.cold = src.cold, True
        try:
            store.apply(op)  # must not miss now: a miss here fails the test
        finally:
            src.cold = cold

    def warm(self, fn: Callable[[], Any]) -> Any:
        srcs = [src for _, src, _, _ in self.rigs.values()]
        for src in srcs:
            src.cold = False
        try:
            return fn()
        finally:
            for src in srcs:
                src.cold = True

    def checkpoint(self, store: MetadataStore) -> None:
        state, src, _, _ = self.rigs[id(store)]
        self.generation += 1
        state.frozen, state.live = state.live, Memtable()
        result = trio.run(src.apply, state.tree, state.frozen.changes(), self.generation)
        state.tree, state.frozen = result.tree, None
        src.at_hand.clear()  # a checkpoint's pages start cold


@pytest.mark.parametrize("seed", range(12))
def test_random_sequences_on_pages(seed: int) -> None:
    backend = Paged()
    run_sequence(seed, 200, backend)
    assert backend.misses > 0
