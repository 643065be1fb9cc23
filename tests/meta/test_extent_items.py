"""Extent items in the tree answer exactly what the in-memory ExtentMap answers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.meta import extent_items as X
from fusenas.meta.btree import Tree
from fusenas.meta.extents import UNWRITTEN, ExtentMap, Mapping
from fusenas.meta.memtable import LayeredView, Memtable
from tests.meta.test_btree import MemoryPages

INO = 7
SPAN = 700


def blocks(ms: list[Mapping]) -> list[tuple[int | None, int]]:
    """Block by block: (volume block or None, crc)."""
    out: list[tuple[int | None, int]] = []
    for m in ms:
        for i in range(m.count):
            out.append((None, 0) if m.vol_block is None else (m.vol_block + i, m.crcs[i]))
    return out


def freed_blocks(runs: list[tuple[int, int]]) -> list[int]:
    return sorted(b for v, n in runs for b in range(v, v + n))


op = st.one_of(
    st.tuples(
        st.just("set"),
        st.integers(0, 600),
        st.lists(st.integers(1, 300), min_size=1, max_size=3),
        st.booleans(),
    ),
    st.tuples(st.just("punch"), st.integers(0, 600), st.integers(1, 300), st.just(False)),
    st.tuples(st.just("truncate"), st.integers(0, 600), st.just(0), st.just(False)),
    st.tuples(st.just("checkpoint"), st.just(0), st.just(0), st.just(False)),
)


@given(ops=st.lists(op, min_size=5, max_size=40))
@settings(max_examples=80, deadline=None)
async def test_matches_the_extent_map(ops: list[tuple[str, int, object, bool]]) -> None:
    src = MemoryPages()
    tree = Tree(None)
    mem = Memtable()
    model = ExtentMap()
    vol = 10_000
    generation = 0
    for kind, first, arg, unwritten in ops:
        view = LayeredView([mem], src, tree)
        if kind == "set":
            assert isinstance(arg, list)
            runs = []
            for n in arg:
                runs.append((vol, n))
                vol += n + 3
            total = sum(arg)
            if unwritten:
                got = X.set_blocks(view, mem, INO, first, runs, None)
                want = model.set(first, runs, [UNWRITTEN] * total)
            else:
                crcs = [(first * 31 + i) % 2**32 for i in range(total)]
                got = X.set_blocks(view, mem, INO, first, runs, crcs)
                want = model.set(first, runs, crcs)
        elif kind == "punch":
            assert isinstance(arg, int)
            got = X.punch(view, mem, INO, first, arg)
            want = model.punch(first, arg)
        elif kind == "truncate":
            got = X.truncate(view, mem, INO, first)
            want = model.truncate(first)
        else:
            generation += 1
            tree = (await src.apply(tree, mem.changes(), generation)).tree
            mem = Memtable()
            continue
        assert freed_blocks(got) == freed_blocks(want)
        view = LayeredView([mem], src, tree)
        assert blocks(X.lookup(view, INO, 0, SPAN)) == blocks(model.lookup(0, SPAN))
        assert X.end_block(view, INO) == model.end_block()
        assert blocks(X.lookup(view, INO, 123, 77)) == blocks(model.lookup(123, 77))


def test_a_huge_unwritten_range_is_a_few_items() -> None:
    mem = Memtable()
    view = LayeredView([mem], MemoryPages(), Tree(None))
    n = 40 << 18  # 40 GiB of 4 KiB blocks
    X.set_blocks(view, mem, INO, 0, [(5, n)], None)
    assert len(mem) == 1 and mem.size < 200
    [m] = X.lookup(view, INO, n - 2, 2)
    assert m.vol_block == 5 + n - 2 and m.crcs == (UNWRITTEN, UNWRITTEN)
