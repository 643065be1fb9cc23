"""The metadata B+tree and its page format, against a dict model, with pages in memory.

Every merge is checked the way a checkpoint relies on it: the new tree holds exactly the
model's items, the old tree still reads as before (copy-on-write: nothing it references was
touched), every page decodes with the checksum its parent holds, every page fits, and the
pages the merge freed are exactly those the old tree had and the new one does not.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.meta.btree import Change, MergeResult, PageMiss, Tree, get, get_nowait, merge, scan
from fusenas.meta.page import (
    PAGE_CAPACITY,
    PAGE_SIZE,
    ChildRef,
    Page,
    PageError,
    decode_page,
    encode_page,
    pack_items,
    page_crc,
)


class MemoryPages:
    """A PageSource over a dict of encoded pages; counts reads."""

    def __init__(self) -> None:
        self.pages: dict[int, bytes] = {}
        self.reads = 0
        self.cold = False
        self.at_hand: set[int] = set()
        self._next = itertools.count(1)

    def allocate(self) -> int:
        return next(self._next)

    async def read(self, ref: ChildRef) -> Page:
        self.reads += 1
        self.at_hand.add(ref.page)
        return decode_page(self.pages[ref.page], expect=ref)

    def read_nowait(self, ref: ChildRef) -> Page | None:
        """Pages are at hand once ``read`` loaded them (or always, with ``cold`` False)."""
        if self.cold and ref.page not in self.at_hand:
            return None
        return decode_page(self.pages[ref.page], expect=ref)

    async def apply(self, tree: Tree, changes: list[Change], generation: int) -> MergeResult:
        result = await merge(self, tree, changes, allocate=self.allocate, generation=generation)
        for number, raw in result.written:
            assert number not in self.pages, "a page number is written once"
            self.pages[number] = raw
        return result


async def items(src: MemoryPages, tree: Tree) -> list[tuple[bytes, bytes]]:
    return [kv async for kv in scan(src, tree, b"")]


async def reachable(src: MemoryPages, tree: Tree) -> set[int]:
    """Every page number the tree references; checks the shape on the way."""
    out: set[int] = set()
    if tree.root is None:
        return out
    depths: set[int] = set()

    async def walk(ref: ChildRef, level: int, lo: bytes, hi: bytes | None) -> None:
        page = await src.read(ref)
        assert page.level == level
        out.add(ref.page)
        if page.keys:
            first = page.keys[1] if level and len(page.keys) > 1 else page.keys[0]
            assert level or first >= lo
            assert hi is None or page.keys[-1] < hi
        if level == 0:
            depths.add(level)
            return
        assert page.keys[0] == b""
        for i, raw in enumerate(page.values):
            sub_lo = page.keys[i] if i else lo
            sub_hi = page.keys[i + 1] if i + 1 < len(page.keys) else hi
            await walk(ChildRef.decode(raw), level - 1, sub_lo, sub_hi)

    await walk(tree.root, tree.height, b"", None)
    return out


def key(i: int) -> bytes:
    return b"\x01" + i.to_bytes(8, "big")


async def check(
    src: MemoryPages,
    old: Tree,
    old_items: list[tuple[bytes, bytes]],
    result: MergeResult,
    model: dict[bytes, bytes],
) -> None:
    new = result.tree
    assert await items(src, new) == sorted(model.items())
    assert await items(src, old) == old_items  # copy-on-write: the old tree is intact
    for k, v in list(model.items())[:20]:
        assert await get(src, new, k) == v
    before, after = await reachable(src, old), await reachable(src, new)
    assert set(result.freed) == before - after
    assert {n for n, _ in result.written} == after - before
    assert not set(result.unused) & after


@given(
    batches=st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 400),
                st.one_of(st.none(), st.binary(min_size=0, max_size=300)),
            ),
            max_size=120,
        ),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=60, deadline=None)
async def test_merges_match_a_dict_model(batches: list[list[tuple[int, bytes | None]]]) -> None:
    src = MemoryPages()
    tree = Tree(None)
    model: dict[bytes, bytes] = {}
    for generation, batch in enumerate(batches, start=1):
        changes = dict((key(i), v) for i, v in batch)  # the last change of a key wins
        old_items = await items(src, tree)
        result = await src.apply(tree, sorted(changes.items()), generation)
        for k, v in changes.items():
            if v is None:
                model.pop(k, None)
            else:
                model[k] = v
        await check(src, tree, old_items, result, model)
        tree = result.tree


async def test_a_large_tree_grows_shrinks_and_touches_only_changed_paths() -> None:
    rng = random.Random(7)
    src = MemoryPages()
    model = {key(i): rng.randbytes(rng.randrange(20, 200)) for i in range(20_000)}
    result = await src.apply(Tree(None), sorted(model.items()), 1)
    tree = result.tree
    assert tree.height >= 2
    # One key changed: one page per level is rewritten, nothing else.
    k = key(12_345)
    model[k] = b"new"
    old_items = await items(src, tree)
    result = await src.apply(tree, [(k, b"new")], 2)
    assert len(result.written) == tree.height + 1
    assert len(result.freed) == tree.height + 1
    await check(src, tree, old_items, result, model)
    tree = result.tree
    # Delete almost everything: the tree shrinks back to a few pages.
    gone = sorted(model)[10:]
    old_items = await items(src, tree)
    result = await src.apply(tree, [(g, None) for g in gone], 3)
    for g in gone:
        del model[g]
    await check(src, tree, old_items, result, model)
    assert result.tree.height == 0


async def test_deleting_everything_gives_the_empty_tree() -> None:
    src = MemoryPages()
    result = await src.apply(Tree(None), [(key(i), b"x" * 100) for i in range(500)], 1)
    result = await src.apply(result.tree, [(key(i), None) for i in range(500)], 2)
    assert result.tree == Tree(None)
    assert await items(src, result.tree) == []


async def test_scan_bounds() -> None:
    src = MemoryPages()
    result = await src.apply(Tree(None), [(key(i), b"v%d" % i) for i in range(0, 3000, 3)], 1)
    got = [k async for k, _ in scan(src, result.tree, key(100), key(200))]
    assert got == [key(i) for i in range(102, 200, 3)]


def test_a_page_round_trips_and_every_flipped_byte_is_caught() -> None:
    page = Page(0, [b"a", b"b", b"c"], [b"1", b"", b"333"])
    raw = encode_page(page, generation=9)
    assert len(raw) == PAGE_SIZE
    back = decode_page(raw, expect=ChildRef(5, page_crc(raw), 9))
    assert (back.level, back.keys, back.values, back.generation) == (0, page.keys, page.values, 9)
    for pos in (0, 5, 20, 40, 45, PAGE_SIZE - 1):
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        with pytest.raises(PageError):
            decode_page(bytes(bad))
    with pytest.raises(PageError, match="not the one"):
        decode_page(raw, expect=ChildRef(5, page_crc(raw), 8))


def test_pack_items_fills_pages_and_leaves_no_tiny_tail() -> None:
    keys = [key(i) for i in range(1000)]
    values = [b"x" * 50] * 1000
    groups = pack_items(keys, values, fill=PAGE_CAPACITY)
    assert groups[0][0] == 0 and groups[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(groups))
    sizes = [sum(4 + len(keys[j]) + 50 for j in range(lo, hi)) for lo, hi in groups]
    assert max(sizes) <= PAGE_CAPACITY
    assert min(sizes) >= PAGE_CAPACITY // 2


async def test_pages_emptied_by_deletions_are_folded_together() -> None:
    """Deleting nine keys of ten all over the tree leaves every leaf a tenth full: the
    merge folds them, so the tree ends up about as many pages as its items need."""
    src = MemoryPages()
    model = {key(i): b"v" * 80 for i in range(20_000)}
    tree = (await src.apply(Tree(None), sorted(model.items()), 1)).tree
    gone = [k for i, k in enumerate(sorted(model)) if i % 10]
    old_items = await items(src, tree)
    result = await src.apply(tree, [(g, None) for g in gone], 2)
    for g in gone:
        del model[g]
    await check(src, tree, old_items, result, model)
    need = -(-len(model) * (4 + 9 + 80) // PAGE_CAPACITY)
    assert len(await reachable(src, result.tree)) <= 2 * need + 2


async def test_synchronous_reads_miss_until_the_page_is_loaded() -> None:
    src = MemoryPages()
    tree = (await src.apply(Tree(None), [(key(i), b"v" * 50) for i in range(5000)], 1)).tree
    src.cold = True
    with pytest.raises(PageMiss):
        get_nowait(src, tree, key(77))
    assert await get(src, tree, key(77)) == b"v" * 50  # loads the path, then hits
    reads = src.reads
    assert get_nowait(src, tree, key(77)) == b"v" * 50
    assert src.reads == reads
    got = [k async for k, _ in scan(src, tree, key(10), key(4000))]  # loads leaf by leaf
    assert got == [key(i) for i in range(10, 4000)]
