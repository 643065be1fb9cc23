"""Memtable and layered reads: the checkpoint cycle (change, freeze, merge, publish) against a
dict model, reads checked at every step, including in the middle of a merge."""

from __future__ import annotations

from collections.abc import AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.meta.btree import PAUSE_PAGES, Tree, get, merge, scan
from fusenas.meta.memtable import ABSENT, KEY_OVERHEAD, LayeredView, Memtable
from tests.meta.test_btree import MemoryPages, key


class TreeAt:
    """The tree a checkpoint published, as the bottom layer."""

    def __init__(self, src: MemoryPages, tree: Tree) -> None:
        self.src = src
        self.tree = tree

    async def get(self, k: bytes) -> bytes | None:
        return await get(self.src, self.tree, k)

    async def scan(self, start: bytes, end: bytes | None) -> AsyncIterator[tuple[bytes, bytes]]:
        async for kv in scan(self.src, self.tree, start, end):
            yield kv


def test_size_counts_keys_values_and_tombstones() -> None:
    m = Memtable()
    m.put(b"a", b"123")
    assert m.size == 1 + KEY_OVERHEAD + 3
    m.put(b"a", b"1")
    assert m.size == 1 + KEY_OVERHEAD + 1
    m.delete(b"a")
    assert m.size == 1 + KEY_OVERHEAD
    assert m.lookup(b"a") is None and m.lookup(b"b") is ABSENT
    assert m.changes() == [(b"a", None)]


Step = tuple[str, int, bytes]


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["put", "put", "delete", "checkpoint"]),
            st.integers(0, 300),
            st.binary(max_size=60),
        ),
        max_size=400,
    )
)
@settings(max_examples=50, deadline=None)
async def test_the_checkpoint_cycle_matches_a_model(steps: list[Step]) -> None:
    src = MemoryPages()
    tree = TreeAt(src, Tree(None))
    live = Memtable()
    model: dict[bytes, bytes] = {}
    generation = 0

    async def check(view: LayeredView) -> None:
        got = [kv async for kv in view.scan(b"", None)]
        assert got == sorted(model.items())
        lo, hi = key(50), key(150)
        assert [kv async for kv in view.scan(lo, hi)] == sorted(
            (k, v) for k, v in model.items() if lo <= k < hi
        )
        for i in (0, 7, 50, 299):
            assert await view.get(key(i)) == model.get(key(i))

    for op, i, value in steps:
        if op == "put":
            live.put(key(i), value)
            model[key(i)] = value
        elif op == "delete":
            live.delete(key(i))
            model.pop(key(i), None)
        else:
            frozen, live = live, Memtable()
            # Reads during the merge see live, frozen and the old tree.
            await check(LayeredView([live, frozen], tree))
            generation += 1
            result = await src.apply(tree.tree, frozen.changes(), generation)
            await check(LayeredView([live, frozen], tree))  # old tree still intact
            tree = TreeAt(src, result.tree)
        await check(LayeredView([live], tree))


async def test_merge_pauses_after_every_leaf() -> None:
    src = MemoryPages()
    pauses = 0

    async def pause() -> None:
        nonlocal pauses
        pauses += 1

    changes = [(key(i), b"x" * 100) for i in range(5000)]
    result = await merge(src, Tree(None), changes, allocate=src.allocate, generation=1, pause=pause)
    leaves = sum(1 for _, raw in result.written if raw[4] == 0)
    assert leaves > 100 and pauses >= leaves // PAUSE_PAGES
