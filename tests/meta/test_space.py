"""SpaceMap against a set of used blocks, and the allocation policy's promises."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.errors import NoSpaceError
from fusenas.meta.btree import Tree
from fusenas.meta.memtable import LayeredView, Memtable
from fusenas.meta.space import GROUP_BLOCKS, SpaceMap
from tests.meta.test_btree import MemoryPages

STRIPE = 48  # 3 data chunks of 64 KiB


class Rig:
    def __init__(self, data_blocks: int) -> None:
        self.src = MemoryPages()
        self.tree = Tree(None)
        self.mem = Memtable()
        self.space = SpaceMap.empty(data_blocks, STRIPE)
        self.generation = 0

    @property
    def view(self) -> LayeredView:
        return LayeredView([self.mem], self.src, self.tree)

    async def checkpoint(self) -> None:
        self.generation += 1
        self.tree = (await self.src.apply(self.tree, self.mem.changes(), self.generation)).tree
        self.mem = Memtable()

    def alloc(self, n: int, goal: int | None = None) -> list[tuple[int, int]]:
        """Allocate and mark used at once (what mapping the blocks does)."""
        runs = self.space.allocate(self.view, n, goal=goal)
        self.space.mark_used(self.view, self.mem, runs)
        return runs

    def used(self) -> set[int]:
        out = set()
        for g in range(self.space.groups):
            bits = self.space.bits(self.view, g)
            size = min(GROUP_BLOCKS, self.space.data_blocks - g * GROUP_BLOCKS)
            out |= {g * GROUP_BLOCKS + i for i in range(size) if bits[i]}
        return out


@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["alloc", "alloc", "free", "checkpoint"]),
            st.integers(1, 3000),
            st.one_of(st.none(), st.integers(0, 3 * GROUP_BLOCKS)),
        ),
        min_size=5,
        max_size=40,
    )
)
@settings(max_examples=60, deadline=None)
async def test_allocations_never_overlap_and_counts_stay_true(
    ops: list[tuple[str, int, int | None]],
) -> None:
    rig = Rig(3 * GROUP_BLOCKS - 100)  # a short last group
    model: set[int] = set()
    held: list[tuple[int, int]] = []
    rng = random.Random(len(ops))
    for kind, n, goal in ops:
        if kind == "alloc":
            free = rig.space.data_blocks - len(model)
            if n > free:
                with pytest.raises(NoSpaceError):
                    rig.alloc(n, goal)
                continue
            runs = rig.alloc(n, goal)
            got = {b for s, k in runs for b in range(s, s + k)}
            assert len(got) == n and not got & model
            assert all(0 <= b < rig.space.data_blocks for b in got)
            model |= got
            held += runs
        elif kind == "free" and held:
            s, k = held.pop(rng.randrange(len(held)))
            rig.space.free(rig.view, rig.mem, [(s, k)])
            model -= set(range(s, s + k))
        elif kind == "checkpoint":
            await rig.checkpoint()
        assert rig.space.free_blocks == rig.space.data_blocks - len(model)
        assert sum(rig.space.counts) == rig.space.free_blocks
    assert rig.used() == model


async def test_policy_aligned_large_runs_small_writes_fill_stripes_goal_continues() -> None:
    rig = Rig(4 * GROUP_BLOCKS)
    # A misaligned start: one block used at 0.
    rig.space.mark_used(rig.view, rig.mem, [(0, 1)])
    [(a, n)] = rig.alloc(256)
    assert a % STRIPE == 0 and n == 256
    # A goal in open space continues the file.
    [(g, _)] = rig.alloc(10, goal=a + 256)
    assert g == a + 256
    # Small allocations fill one wholly free stripe, one after the other.
    small = [rig.alloc(1) for _ in range(STRIPE)]
    blocks = [r[0][0] for r in small]
    assert blocks == list(range(blocks[0], blocks[0] + STRIPE)) and blocks[0] % STRIPE == 0
    # A goal in a hole that ends before the next stripe is not taken (a partial-stripe
    # write); the small-write stripe is used instead.
    rig.space.free(rig.view, rig.mem, [(a + 100, 5)])
    [(h, _)] = rig.alloc(1, goal=a + 100)
    assert h != a + 100


async def test_mount_state_is_the_counts_only() -> None:
    rig = Rig(2 * GROUP_BLOCKS)
    rig.alloc(5000)
    await rig.checkpoint()
    from array import array

    from fusenas.meta.btree import get
    from fusenas.meta.space import summary_key

    raw = await get(rig.src, rig.tree, summary_key(0))
    assert raw is not None
    counts = array("I")
    counts.frombytes(raw)
    reopened = SpaceMap(rig.space.data_blocks, STRIPE, counts)
    assert reopened.free_blocks == 2 * GROUP_BLOCKS - 5000


async def test_filling_the_area_never_hands_out_blocks_past_its_end() -> None:
    rig = Rig(2 * GROUP_BLOCKS - 100)
    got: list[tuple[int, int]] = []
    while rig.space.free_blocks:
        got += rig.alloc(min(700, rig.space.free_blocks))
    blocks = sorted(b for s, n in got for b in range(s, s + n))
    assert blocks == list(range(rig.space.data_blocks))
    with pytest.raises(NoSpaceError):
        rig.alloc(1)


def test_busy_blocks_are_skipped_and_nothing_is_stored_until_marked_used() -> None:
    from fusenas.meta.allocator import RunSet

    rig = Rig(GROUP_BLOCKS)
    busy = RunSet()
    first = rig.space.allocate(rig.view, 100, busy=busy)
    assert len(rig.mem) == 0 and rig.space.free_blocks == GROUP_BLOCKS
    for s, n in first:
        busy.add(s, n)
    second = rig.space.allocate(rig.view, 100, busy=busy)
    a = {b for s, n in first for b in range(s, s + n)}
    b = {x for s, n in second for x in range(s, s + n)}
    assert not a & b
    with pytest.raises(NoSpaceError):
        rig.space.allocate(rig.view, GROUP_BLOCKS - 50, busy=busy)
