"""PageCache: bounded, verified against the pointer, healed from redundancy."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fusenas.meta.btree import Tree, get, merge
from fusenas.meta.page import PAGE_SIZE, PageError
from fusenas.meta.pagecache import PageCache
from tests.meta.test_btree import MemoryPages, key


class Blocks:
    """A PageDevice over the pages of a MemoryPages, with one rotten copy per page that a
    test may plant and a good copy that ``heal_block`` finds (or not)."""

    def __init__(self, src: MemoryPages) -> None:
        self.src = src
        self.rotten: dict[int, bytes] = {}
        self.lost: set[int] = set()
        self.reads = 0

    async def read(self, block: int, count: int) -> bytes:
        assert count == 1
        self.reads += 1
        return self.rotten.get(block, self.src.pages[block])

    def read_nowait(self, block: int, count: int) -> bytes | None:
        return None

    async def heal_block(self, block: int, check: Callable[[bytes], bool]) -> bytes | None:
        good = self.src.pages[block]
        if block in self.lost or not check(good):
            return None
        self.rotten.pop(block, None)
        return good


async def tree_of(n: int) -> tuple[MemoryPages, Tree]:
    src = MemoryPages()
    result = await src.apply(Tree(None), [(key(i), b"v" * 100) for i in range(n)], 1)
    return src, result.tree


async def test_hits_after_the_first_read_and_the_bound_holds() -> None:
    src, tree = await tree_of(20_000)
    dev = Blocks(src)
    cache = PageCache(dev, capacity=64 * PAGE_SIZE)
    for i in range(0, 20_000, 97):
        assert await get(cache, tree, key(i)) == b"v" * 100
    st = cache.statistics()
    assert st.bytes <= 64 * PAGE_SIZE and st.pages < len(src.pages)
    reads = dev.reads
    await get(cache, tree, key(19_999))
    await get(cache, tree, key(19_999))
    assert dev.reads - reads <= tree.height + 1  # the second lookup is all hits
    assert cache.statistics().hit_rate > 0


async def test_a_rotten_page_is_healed_and_a_lost_one_is_an_error() -> None:
    src, tree = await tree_of(2_000)
    assert tree.root is not None
    dev = Blocks(src)
    cache = PageCache(dev, capacity=1 << 20)
    bad = bytearray(src.pages[tree.root.page])
    bad[100] ^= 1
    dev.rotten[tree.root.page] = bytes(bad)
    assert await get(cache, tree, key(5)) == b"v" * 100
    assert cache.statistics().healed == 1 and tree.root.page not in dev.rotten
    cache.forget(tree.root.page)
    dev.rotten[tree.root.page] = bytes(bad)
    dev.lost.add(tree.root.page)
    with pytest.raises(PageError, match="no copy is intact"):
        await get(cache, tree, key(5))


async def test_a_reused_page_number_is_not_served_from_the_cache() -> None:
    src, tree = await tree_of(10)  # one leaf
    assert tree.root is not None and tree.height == 0
    cache = PageCache(Blocks(src), capacity=1 << 20)
    await get(cache, tree, key(1))
    # The same page number, rewritten by a later checkpoint: the pointer differs.
    result = await merge(
        src, tree, [(key(1), b"new")], allocate=lambda: tree.root.page, generation=5
    )
    [(number, raw)] = result.written
    src.pages[number] = raw
    new_ref = result.tree.root
    assert new_ref is not None and new_ref.page == tree.root.page
    assert await get(cache, result.tree, key(1)) == b"new"
    assert new_ref.generation == 5
