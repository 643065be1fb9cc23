"""Memtable and layered reads: the checkpoint cycle (change, freeze, merge, publish) against a
dict model, reads checked at every step, including in the middle of a merge."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.meta.btree import PAUSE_PAGES, Tree, leaf_nowait, merge
from fusenas.meta.memtable import ABSENT, KEY_OVERHEAD, LayeredView, Memtable
from tests.meta.test_btree import MemoryPages, key


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
            st.integers(0, 40),
            st.binary(max_size=900),
        ),
        min_size=20,
        max_size=400,
    )
)
@settings(max_examples=80, deadline=None)
async def test_the_checkpoint_cycle_matches_a_model(steps: list[Step]) -> None:
    src = MemoryPages()
    tree = Tree(None)
    live = Memtable()
    model: dict[bytes, bytes] = {}
    generation = 0

    async def check(view: LayeredView) -> None:
        got = [kv async for kv in view.scan(b"", None, batch=7)]
        assert got == sorted(model.items())
        lo, hi = key(50), key(150)
        assert [kv async for kv in view.scan(lo, hi, batch=3)] == sorted(
            (k, v) for k, v in model.items() if lo <= k < hi
        )
        for i in (0, 7, 50, 299):
            assert await view.get(key(i)) == model.get(key(i))
        # Page through in small batches, resuming where each batch said.
        at: bytes | None = b""
        paged: list[tuple[bytes, bytes]] = []
        while at is not None:
            batch, at = view.items_nowait(at, None, 2)
            paged += batch
        assert paged == sorted(model.items())

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
            await check(LayeredView([live, frozen], src, tree))
            generation += 1
            result = await src.apply(tree, frozen.changes(), generation)
            await check(LayeredView([live, frozen], src, tree))  # old tree still intact
            tree = result.tree
        await check(LayeredView([live], src, tree))


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


async def test_a_batch_that_ends_with_a_leaf_resumes_at_memtable_keys_before_the_next_leaf() -> (
    None
):
    src = MemoryPages()
    tree = (await src.apply(Tree(None), [(key(i), b"v" * 900) for i in range(0, 40, 2)], 1)).tree
    assert tree.height > 0
    first_leaf, after = leaf_nowait(src, tree, b"", None)
    assert after is not None
    live = Memtable()
    gap = [k for k in (key(i) for i in range(40)) if first_leaf[-1][0] < k < after]
    assert gap, "odd keys between the first leaf's last key and the next leaf"
    live.put(gap[0], b"new")
    view = LayeredView([live], src, tree)
    batch, resume = view.items_nowait(b"", None, len(first_leaf))
    assert batch == first_leaf and resume == gap[0]
