"""Stripe plans without I/O: every strategy at RAID5 and RAID6 (and the levels without parity),
checked on a model of the members as bytearrays.

A case plans a write, serves the planned reads from the model (only from active members, which
the test asserts), applies ``finish``'s writes to the model (a down member misses its write,
as ``Array.issue`` does), and then checks every row: each active data member holds the bytes of
a plain logical ``bytearray`` and each active parity member holds P (and Q) of those bytes,
computed by ``fusenas.volume.parity``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.errors import DataLostError
from fusenas.stripe.plan import (
    Strategy,
    StripePlan,
    choose_strategy,
    full_stripe_writes,
    plan_stripe_write,
)
from fusenas.units import BLOCK_SIZE, ByteData
from fusenas.volume import parity
from fusenas.volume.layout import Geometry, Level
from fusenas.volume.writes import MemberWrite

#: Where the members' data areas start in the model: any value, plans add it as given.
OFF = 8192
CHUNK = 2 * BLOCK_SIZE
STRIPES = 3


class Model:
    """The members as bytearrays, which are active, and the logical bytes they should hold."""

    def __init__(self, level: Level, members: int, seed: int = 0, chunk: int = CHUNK) -> None:
        self.g = Geometry.make(level, members, chunk, chunk * STRIPES)
        self.members = [bytearray(OFF + self.g.member_data_size) for _ in range(members)]
        self.active = [True] * members
        self.logical = bytearray(random.Random(seed).randbytes(self.g.logical_size))
        self.apply(full_stripe_writes(self.g, OFF, 0, memoryview(self.logical)))
        self.check()

    def lose(self, member: int) -> None:
        """``member`` goes away; what it holds is garbage that no plan may read."""
        self.active[member] = False
        self.members[member][:] = b"\xee" * len(self.members[member])

    def apply(self, writes: Sequence[MemberWrite]) -> None:
        for w in writes:
            if self.active[w.member]:
                self.members[w.member][w.offset : w.offset + len(w.data)] = w.data

    def plan(
        self, stripe: int, parts: Sequence[tuple[int, ByteData]], suspect: bool = False
    ) -> StripePlan:
        return plan_stripe_write(self.g, OFF, stripe, parts, self.active, suspect)

    def reads(self, plan: StripePlan) -> dict[int, bytes]:
        assert all(self.active[m] for m in plan.reads), "a plan read a member that is down"
        assert len(set(plan.reads)) == len(plan.reads)
        lo, n = plan.row_offset, plan.row_length
        return {m: bytes(self.members[m][lo : lo + n]) for m in plan.reads}

    def write(
        self, stripe: int, parts: Sequence[tuple[int, ByteData]], suspect: bool = False
    ) -> tuple[StripePlan, list[MemberWrite]]:
        """Plan, read, finish, apply; and the same bytes into the logical model."""
        plan = self.plan(stripe, parts, suspect)
        writes = plan.finish(self.reads(plan))
        self.apply(writes)
        for off, data in parts:
            self.logical[off : off + len(data)] = data
        return plan, writes

    def chunk_of(self, member: int, stripe: int) -> bytes:
        base = OFF + stripe * self.g.chunk
        return bytes(self.members[member][base : base + self.g.chunk])

    def check(self) -> None:
        """Every row: active members hold the logical model's data and its parity."""
        g = self.g
        for s in range(g.stripes):
            base = s * g.stripe_data_size
            data = [
                bytes(self.logical[base + i * g.chunk : base + (i + 1) * g.chunk])
                for i in range(g.data_per_stripe)
            ]
            for i, want in enumerate(data):
                for m in g.data_copies(s, i):
                    if self.active[m]:
                        assert self.chunk_of(m, s) == want, f"stripe {s} data {i} member {m}"
            pmembers = g.parity_members(s)
            if not pmembers:
                continue
            expect = [parity.gen_p(data)] if len(pmembers) == 1 else list(parity.gen_pq(data))
            for m, pv in zip(pmembers, expect, strict=True):
                if self.active[m]:
                    assert self.chunk_of(m, s) == pv, f"stripe {s} parity member {m}"

    def data_member(self, stripe: int, index: int) -> int:
        return self.g.data_copies(stripe, index)[0]

    def at(self, stripe: int, index: int, chunk_offset: int = 0) -> int:
        """Logical offset of byte ``chunk_offset`` of data index ``index`` of ``stripe``."""
        return stripe * self.g.stripe_data_size + index * self.g.chunk + chunk_offset


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def test_strategy_counts_reads_like_md() -> None:
    # 4 data + 1 parity, one block fully rewritten: RMW reads 2, RCW reads 3.
    assert choose_strategy(4, 1, covered=1, touched=1, degraded=False) is Strategy.RMW
    # 4 data, three blocks rewritten: RMW reads 4, RCW reads 1.
    assert choose_strategy(4, 1, covered=3, touched=3, degraded=False) is Strategy.RCW
    assert choose_strategy(4, 1, covered=4, touched=4, degraded=False) is Strategy.FULL
    assert choose_strategy(4, 2, covered=4, touched=4, degraded=True) is Strategy.DEGRADED
    # A tie (RMW 3 = RCW 3) goes to reconstruct-write.
    assert choose_strategy(4, 1, covered=1, touched=2, degraded=False) is Strategy.RCW


@pytest.mark.parametrize(
    ("level", "members"), [(Level.RAID0, 3), (Level.RAID1, 3), (Level.RAID10, 4)]
)
def test_levels_without_parity_write_every_copy_and_read_nothing(
    level: Level, members: int
) -> None:
    m = Model(level, members)
    data = payload(m.g.stripe_data_size - 60)
    parts = [(m.at(1, 0, 50), data)]
    for suspect in (False, True):  # rows of these levels have no parity to suspect
        plan, writes = m.write(1, parts, suspect)
        assert plan.strategy is None and plan.reads == () and not plan.journal
        pieces = m.g.map_range(m.at(1, 0, 50), len(data))
        assert len(writes) == sum(len(p.copies) for p in pieces)
        assert all(isinstance(w.data, memoryview) and w.data.obj is data for w in writes)
        m.check()
    m.lose(1)
    m.write(1, [(m.at(1, 0), payload(BLOCK_SIZE, 2))])
    m.check()


@pytest.mark.parametrize(("level", "members"), [(Level.RAID5, 4), (Level.RAID6, 5)])
def test_full_stripe_reads_nothing_and_is_not_journaled(level: Level, members: int) -> None:
    m = Model(level, members)
    g = m.g
    whole = payload(g.stripe_data_size)
    half = g.stripe_data_size // 2
    # In two parts: coverage is counted over all of them.
    plan, writes = m.write(2, [(m.at(2, 0), whole[:half]), (m.at(2, 0) + half, whole[half:])])
    assert plan.strategy is Strategy.FULL and plan.reads == () and not plan.journal
    assert (plan.row_start, plan.row_length) == (0, g.chunk)
    assert [w.member for w in writes[-g.parity_count :]] == list(g.parity_members(2))
    m.check()
    # The same 1 KiB of every data chunk is a full-stripe write of that row range.
    parts = [(m.at(0, i, 1024), payload(1024, i)) for i in range(g.data_per_stripe)]
    plan, _ = m.write(0, parts)
    assert plan.strategy is Strategy.FULL and plan.reads == ()
    assert (plan.row_start, plan.row_length) == (1024, 1024)
    assert plan.row_offset == OFF + 0 * g.chunk + 1024
    m.check()


@pytest.mark.parametrize(("level", "members"), [(Level.RAID5, 6), (Level.RAID6, 7)])
def test_read_modify_write_reads_the_touched_block_and_parity(level: Level, members: int) -> None:
    m = Model(level, members)
    g = m.g
    data = payload(BLOCK_SIZE)
    plan, writes = m.write(1, [(m.at(1, 2, BLOCK_SIZE), data)])
    assert plan.strategy is Strategy.RMW and plan.journal
    assert plan.reads == (m.data_member(1, 2), *g.parity_members(1))
    assert (plan.row_offset, plan.row_length) == (OFF + g.chunk + BLOCK_SIZE, BLOCK_SIZE)
    # The data write is the caller's bytes (a view, no copy), then one write per parity.
    assert writes[0] == MemberWrite(m.data_member(1, 2), OFF + g.chunk + BLOCK_SIZE, data)
    assert isinstance(writes[0].data, memoryview) and writes[0].data.obj is data
    assert [w.member for w in writes[1:]] == list(g.parity_members(1))
    assert all((w.offset, len(w.data)) == (plan.row_offset, BLOCK_SIZE) for w in writes[1:])
    m.check()
    # Two blocks in part, in separate parts: still RMW (3 or 4 reads against 5).
    plan, _ = m.write(1, [(m.at(1, 0, 10), payload(100, 3)), (m.at(1, 3, 500), payload(9, 4))])
    assert plan.strategy is Strategy.RMW
    assert plan.reads == (m.data_member(1, 0), m.data_member(1, 3), *g.parity_members(1))
    assert (plan.row_start, plan.row_length) == (10, 500 + 9 - 10)
    m.check()


@pytest.mark.parametrize(("level", "members"), [(Level.RAID5, 4), (Level.RAID6, 5)])
def test_reconstruct_write_reads_the_blocks_not_covered(level: Level, members: int) -> None:
    m = Model(level, members)
    g = m.g
    # Data indexes 0 and 1 whole: one read (index 2) instead of 2 + parity.
    plan, _ = m.write(0, [(m.at(0, 0), payload(2 * g.chunk))])
    assert plan.strategy is Strategy.RCW and plan.journal
    assert plan.reads == (m.data_member(0, 2),)
    assert (plan.row_start, plan.row_length) == (0, g.chunk)
    m.check()
    # Index 0 whole and index 1 in part: index 1 is read too, and merged.
    plan, _ = m.write(2, [(m.at(2, 0), payload(g.chunk + 300, 5))])
    assert plan.strategy is Strategy.RCW
    assert plan.reads == (m.data_member(2, 1), m.data_member(2, 2))
    m.check()


@pytest.mark.parametrize(("level", "members"), [(Level.RAID5, 6), (Level.RAID6, 7)])
def test_suspect_rows_recompute_the_whole_row_never_rmw(level: Level, members: int) -> None:
    """A crash tore a row: one data member holds new bytes, the parity old ones. A partial
    write into that row, even of one block elsewhere in it, leaves the parity of the whole row
    right if the row is suspect; read-modify-write would patch only the written range."""
    for suspect in (True, False):
        m = Model(level, members)
        g = m.g
        torn = m.data_member(1, 3)
        m.members[torn][OFF + g.chunk : OFF + 2 * g.chunk] = b"\x5a" * g.chunk
        m.logical[m.at(1, 3) : m.at(1, 4)] = b"\x5a" * g.chunk  # what the row now holds
        plan, _ = m.write(1, [(m.at(1, 0), payload(BLOCK_SIZE))], suspect=suspect)
        if not suspect:
            assert plan.strategy is Strategy.RMW
            with pytest.raises(AssertionError, match="parity"):
                m.check()
            continue
        assert plan.strategy is Strategy.RCW and plan.journal
        assert (plan.row_start, plan.row_length) == (0, g.chunk)
        # Every data block, the one written in part included, over the whole chunk.
        assert plan.reads == tuple(m.data_member(1, i) for i in range(g.data_per_stripe))
        m.check()
        assert m.chunk_of(torn, 1) == b"\x5a" * g.chunk  # what it did not write is kept
    # A suspect row written whole is still a full-stripe write; written over part of every
    # chunk it is not (the row range is the whole chunk): reconstruct-write.
    m = Model(level, members)
    plan, _ = m.write(0, [(m.at(0, 0), payload(m.g.stripe_data_size))], suspect=True)
    assert plan.strategy is Strategy.FULL
    parts = [(m.at(0, i, 1024), payload(1024, i)) for i in range(m.g.data_per_stripe)]
    plan, _ = m.write(0, parts, suspect=True)
    assert plan.strategy is Strategy.RCW and plan.row_length == m.g.chunk
    m.check()


#: Members lost, as (data indexes, parity indexes) of the written row: a written data block,
#: a block not written, parity, and for RAID6 every pair of those.
DEGRADED_CASES = [
    (Level.RAID5, 4, (0,), ()),
    (Level.RAID5, 4, (2,), ()),
    (Level.RAID5, 4, (), (0,)),
    (Level.RAID6, 5, (0,), ()),
    (Level.RAID6, 5, (0, 2), ()),
    (Level.RAID6, 5, (1, 2), ()),
    (Level.RAID6, 5, (0,), (0,)),
    (Level.RAID6, 5, (2,), (1,)),
    (Level.RAID6, 5, (), (0, 1)),
]


@pytest.mark.parametrize(("level", "members", "data_lost", "parity_lost"), DEGRADED_CASES)
def test_degraded_reads_every_active_member_and_recovers(
    level: Level, members: int, data_lost: tuple[int, ...], parity_lost: tuple[int, ...]
) -> None:
    m = Model(level, members)
    g = m.g
    lost = [m.data_member(1, i) for i in data_lost] + [g.parity_members(1)[i] for i in parity_lost]
    for member in lost:
        m.lose(member)
    # Data indexes 0 and 1 over the same range [1000, 6000): both covered, index 2 untouched.
    parts = [(m.at(1, 0, 1000), payload(5000)), (m.at(1, 1, 1000), payload(5000, 2))]
    plan, _ = m.write(1, parts)
    assert plan.strategy is Strategy.DEGRADED and plan.journal
    row = [*(m.data_member(1, i) for i in range(g.data_per_stripe)), *g.parity_members(1)]
    assert plan.reads == tuple(x for x in row if x not in lost)
    assert (plan.row_start, plan.row_length) == (1000, 5000)  # not widened unless suspect
    m.check()
    # Suspect while degraded: still degraded, over the whole row.
    plan, _ = m.write(1, [(m.at(1, 2, 0), payload(10, 3))], suspect=True)
    assert plan.strategy is Strategy.DEGRADED and plan.row_length == g.chunk
    m.check()


def test_degraded_beyond_redundancy_loses_data() -> None:
    m = Model(Level.RAID5, 4)
    m.lose(m.data_member(0, 0))
    m.lose(m.data_member(0, 1))
    plan = m.plan(0, [(m.at(0, 2), payload(10))])
    assert plan.strategy is Strategy.DEGRADED
    with pytest.raises(DataLostError):
        plan.finish(m.reads(plan))


def test_parts_must_be_inside_the_stripe() -> None:
    m = Model(Level.RAID5, 4)
    end = m.g.stripe_data_size
    with pytest.raises(ValueError, match="cross"):
        m.plan(0, [(end - 10, payload(20))])
    with pytest.raises(ValueError, match="cross"):
        m.plan(0, [(0, payload(10)), (end, payload(10))])
    with pytest.raises(ValueError, match="nothing"):
        m.plan(0, [])


@pytest.mark.parametrize(
    ("level", "members"),
    [(Level.RAID0, 3), (Level.RAID1, 2), (Level.RAID10, 4), (Level.RAID5, 5), (Level.RAID6, 6)],
)
def test_full_stripe_runs_hold_data_and_parity(level: Level, members: int) -> None:
    m = Model(level, members)
    g = m.g
    data = payload(2 * g.stripe_data_size, 9)
    writes = full_stripe_writes(g, OFF, 1, memoryview(data))
    assert sorted(w.member for w in writes) == list(range(members))
    assert all(w.offset == OFF + g.chunk and len(w.data) == 2 * g.chunk for w in writes)
    m.apply(writes)
    m.logical[g.stripe_data_size :] = data
    m.check()


@st.composite
def stripe_parts(draw: st.DrawFn, g: Geometry) -> tuple[int, list[tuple[int, int]]]:
    """A stripe and non-overlapping (logical offset, length) parts inside it, at byte
    granularity: a range cut at up to 3 points, some of the pieces kept."""
    stripe = draw(st.integers(0, g.stripes - 1))
    base = stripe * g.stripe_data_size
    start = draw(st.integers(0, g.stripe_data_size - 1))
    end = draw(st.integers(start + 1, g.stripe_data_size))
    cuts = sorted(
        draw(st.sets(st.integers(start + 1, end - 1), max_size=3)) if end - start > 1 else []
    )
    bounds = [start, *cuts, end]
    segments = list(itertools.pairwise(bounds))
    keep = draw(st.lists(st.booleans(), min_size=len(segments), max_size=len(segments)))
    parts = [(base + lo, hi - lo) for (lo, hi), k in zip(segments, keep, strict=True) if k]
    return stripe, parts or [(base + segments[0][0], segments[0][1] - segments[0][0])]


PROPERTY_LEVELS = [
    (Level.RAID5, 3),
    (Level.RAID5, 4),
    (Level.RAID5, 6),
    (Level.RAID6, 4),
    (Level.RAID6, 5),
    (Level.RAID6, 7),
]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(PROPERTY_LEVELS), st.integers(0, 2**32 - 1), st.data())
def test_random_writes_keep_every_row_consistent(
    level_members: tuple[Level, int], seed: int, data: st.DataObject
) -> None:
    """Random stripe contents, random partial writes (several parts, byte granularity, some
    rows suspect), members lost (one for RAID5, up to two for RAID6) at random points: after
    every write each row's data equals a bytearray model and its parity is that of the data."""
    level, members = level_members
    m = Model(level, members, seed, chunk=BLOCK_SIZE)
    g = m.g
    steps = data.draw(st.integers(1, 5))
    lost = data.draw(st.lists(st.integers(0, members - 1), unique=True, max_size=g.parity_count))
    lose_at = [(data.draw(st.integers(0, steps - 1)), member) for member in lost]
    rng = random.Random(seed)
    for step in range(steps):
        for member in (member for at, member in lose_at if at == step):
            m.lose(member)
        stripe, ranges = data.draw(stripe_parts(g))
        parts = [(off, rng.randbytes(n)) for off, n in ranges]
        m.write(stripe, parts, suspect=data.draw(st.booleans()))
        m.check()
