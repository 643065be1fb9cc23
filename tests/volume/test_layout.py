"""layout.py: every level's placement checked exhaustively on small geometries."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.errors import VolumeError
from fusenas.volume.layout import (
    MIN_MEMBERS,
    Geometry,
    Level,
    format_size,
    parse_level,
    parse_size,
)

KIB = 1024


@st.composite
def geometries(draw: st.DrawFn, max_stripes: int = 20) -> Geometry:
    level = draw(st.sampled_from(list(Level)))
    members = draw(st.integers(MIN_MEMBERS[level], 8))
    if level is Level.RAID10:
        members -= members % 2
    chunk = 1 << draw(st.integers(12, 18))  # 4K..256K
    stripes = draw(st.integers(1, max_stripes))
    slack = draw(st.integers(0, chunk - 1))  # make() must round this away
    return Geometry.make(level, members, chunk, stripes * chunk + slack)


def all_small_geometries() -> list[Geometry]:
    out = []
    for level in Level:
        for members in range(MIN_MEMBERS[level], 9):
            if level is Level.RAID10 and members % 2:
                continue
            # 2n stripes: parity makes two full turns.
            out.append(Geometry.make(level, members, 4096, 2 * members * 4096))
    return out


SMALL = all_small_geometries()


# -- sizes -----------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(geometries())
def test_sizes_are_consistent(g: Geometry) -> None:
    n = g.members
    assert g.member_data_size % g.chunk == 0
    assert g.stripes * g.chunk == g.member_data_size
    expected_dps = {
        Level.RAID0: n,
        Level.RAID1: 1,
        Level.RAID5: n - 1,
        Level.RAID6: n - 2,
        Level.RAID10: n // 2,
    }[g.level]
    assert g.data_per_stripe == expected_dps
    assert g.stripe_data_size == expected_dps * g.chunk
    assert g.logical_size == g.stripes * g.stripe_data_size
    assert g.parity_count == {Level.RAID5: 1, Level.RAID6: 2}.get(g.level, 0)
    # Data chunks, parity chunks and extra mirror copies account for every member chunk.
    copies = len(g.data_copies(0, 0))
    assert g.data_per_stripe * copies + g.parity_count == n
    assert (
        g.tolerated_failures
        == {
            Level.RAID0: 0,
            Level.RAID1: n - 1,
            Level.RAID5: 1,
            Level.RAID6: 2,
            Level.RAID10: 1,
        }[g.level]
    )


def test_make_rounds_down() -> None:
    g = Geometry.make(Level.RAID5, 3, 64 * KIB, 10 * 64 * KIB + 65535)
    assert g.member_data_size == 10 * 64 * KIB
    assert g.logical_size == 10 * 2 * 64 * KIB


# -- placement: exhaustive on small geometries -----------------------------------------------------


@pytest.mark.parametrize("g", SMALL, ids=str)
def test_every_member_chunk_has_exactly_one_role(g: Geometry) -> None:
    """(member, stripe) → one role: a copy of one data chunk, or one parity block. Together
    the roles cover every chunk of every member's data area."""
    roles: dict[tuple[int, int], object] = {}
    first_copies: set[tuple[int, int]] = set()
    for s in range(g.stripes):
        for k, m in enumerate(g.parity_members(s)):
            assert (m, s) not in roles
            roles[(m, s)] = ("parity", k)
        for i in range(g.data_per_stripe):
            copies = g.data_copies(s, i)
            assert len(set(copies)) == len(copies), "copies on distinct members"
            first_copies.add((copies[0], s))
            for m in copies:
                assert (m, s) not in roles, f"{(m, s)} has two roles"
                roles[(m, s)] = ("data", i)
    assert set(roles) == {(m, s) for m in range(g.members) for s in range(g.stripes)}
    # First copies: one per logical chunk, never shared (the bijection, chunk-granular).
    assert len(first_copies) == g.stripes * g.data_per_stripe


@pytest.mark.parametrize("g", SMALL, ids=str)
def test_map_range_over_the_whole_volume_is_a_bijection(g: Geometry) -> None:
    """Byte-granular: the pieces of the whole volume tile each first-copy member's data
    positions without overlap, and every non-parity byte is reached by some copy."""
    pieces = g.map_range(0, g.logical_size)
    assert len(pieces) == g.stripes * g.data_per_stripe  # one piece per chunk
    first: dict[int, list[tuple[int, int]]] = {}
    every: Counter[tuple[int, int]] = Counter()
    for piece in pieces:
        first.setdefault(piece.copies[0], []).append(
            (piece.member_offset, piece.member_offset + piece.length)
        )
        for m in piece.copies:
            every[(m, piece.member_offset // g.chunk)] += piece.length
    for spans in first.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, "two logical bytes on the same member byte"
    parity_chunks = sum(len(g.parity_members(s)) for s in range(g.stripes))
    assert len(every) + parity_chunks == g.members * g.stripes
    assert all(v == g.chunk for v in every.values())


@settings(max_examples=150, deadline=None)
@given(geometries(max_stripes=40))
def test_parity_members_hold_no_data_and_rotate(g: Geometry) -> None:
    n = g.members
    for s in range(g.stripes):
        par = g.parity_members(s)
        assert len(par) == g.parity_count
        data_members = {m for i in range(g.data_per_stripe) for m in g.data_copies(s, i)}
        assert not data_members & set(par)
        assert data_members | set(par) == set(range(n))
    if g.parity_count and g.stripes >= n:
        for start in range(g.stripes - n + 1):
            window = [g.parity_members(s) for s in range(start, start + n)]
            for k in range(g.parity_count):
                assert sorted(p[k] for p in window) == list(range(n))


def test_md_raid5_left_symmetric_4_members_literal() -> None:
    g = Geometry.make(Level.RAID5, 4, 4096, 8 * 4096)
    # Row = stripe; each row lists (P member, members of data 0, 1, 2). md raid5.c,
    # ALGORITHM_LEFT_SYMMETRIC: parity walks left, data continues after it.
    table = [
        (3, (0, 1, 2)),
        (2, (3, 0, 1)),
        (1, (2, 3, 0)),
        (0, (1, 2, 3)),
        (3, (0, 1, 2)),
    ]
    for s, (p, data) in enumerate(table):
        assert g.parity_members(s) == (p,)
        assert tuple(g.data_copies(s, i)[0] for i in range(3)) == data


def test_md_raid6_left_symmetric_5_members_literal() -> None:
    g = Geometry.make(Level.RAID6, 5, 4096, 8 * 4096)
    # md raid6 ALGORITHM_LEFT_SYMMETRIC: Q right after P (wrapping), data after Q.
    # stripe 0: Q D0 D1 D2 P;  stripe 1: D2 Q... see the rows below as (P, Q, data members).
    table = [
        (4, 0, (1, 2, 3)),
        (3, 4, (0, 1, 2)),
        (2, 3, (4, 0, 1)),
        (1, 2, (3, 4, 0)),
        (0, 1, (2, 3, 4)),
    ]
    for s, (p, q, data) in enumerate(table):
        assert g.parity_members(s) == (p, q)
        assert tuple(g.data_copies(s, i)[0] for i in range(3)) == data


def test_raid10_and_raid1_copies() -> None:
    g = Geometry.make(Level.RAID10, 6, 4096, 4 * 4096)
    assert [g.data_copies(1, i) for i in range(3)] == [(0, 1), (2, 3), (4, 5)]
    g1 = Geometry.make(Level.RAID1, 3, 4096, 4 * 4096)
    assert g1.data_copies(2, 0) == (0, 1, 2)
    assert g1.parity_members(2) == ()


# -- locate / map_range / stripe_range -------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(geometries(), st.data())
def test_map_range_pieces(g: Geometry, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, g.logical_size))
    length = data.draw(st.integers(0, min(g.logical_size - offset, 4 * g.stripe_data_size)))
    pieces = g.map_range(offset, length)
    assert sum(p.length for p in pieces) == length
    pos = offset
    for p in pieces:
        assert p.logical_offset == pos, "contiguous and in order"
        assert p.length > 0
        assert p.chunk_offset >= 0 and p.chunk_offset + p.length <= g.chunk, "never crosses"
        assert (p.stripe, p.data_index, p.chunk_offset) == g.locate(pos)
        assert p.member_offset == p.stripe * g.chunk + p.chunk_offset
        assert p.copies == g.data_copies(p.stripe, p.data_index)
        start, end = g.stripe_range(p.stripe)
        assert start <= pos and pos + p.length <= end
        pos += p.length
    # Pieces are maximal: only the first may start inside a chunk, only the last end inside.
    for p in pieces[1:]:
        assert p.chunk_offset == 0
    for p in pieces[:-1]:
        assert p.chunk_offset + p.length == g.chunk


@settings(max_examples=100, deadline=None)
@given(geometries())
def test_stripe_ranges_tile_the_volume(g: Geometry) -> None:
    ends = 0
    for s in range(g.stripes):
        start, end = g.stripe_range(s)
        assert start == ends and end - start == g.stripe_data_size
        ends = end
    assert ends == g.logical_size


@pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, -1), (0, 10**12), (1, 0)])
def test_map_range_rejects_ranges_outside_the_volume(offset: int, length: int) -> None:
    g = Geometry.make(Level.RAID0, 1, 4096, 4096)
    if (offset, length) == (1, 0):
        assert g.map_range(1, 0) == []  # empty range inside the volume is fine
        assert g.map_range(g.logical_size, 0) == []
        return
    with pytest.raises(ValueError, match="outside"):
        g.map_range(offset, length)


def test_locate_and_indexes_reject_out_of_range() -> None:
    g = Geometry.make(Level.RAID5, 3, 4096, 2 * 4096)
    with pytest.raises(ValueError, match="outside"):
        g.locate(g.logical_size)
    with pytest.raises(ValueError, match="outside"):
        g.locate(-1)
    with pytest.raises(ValueError, match="stripe 2 outside"):
        g.parity_members(2)
    with pytest.raises(ValueError, match="data index 2 outside"):
        g.data_copies(0, 2)


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "members", "chunk", "size", "message"),
    [
        (Level.RAID0, 0, 4096, 4096, "raid0 needs at least 1 members"),
        (Level.RAID1, 1, 4096, 4096, "raid1 needs at least 2 members"),
        (Level.RAID5, 2, 4096, 4096, "raid5 needs at least 3 members"),
        (Level.RAID6, 3, 4096, 4096, "raid6 needs at least 4 members"),
        (Level.RAID10, 2, 4096, 4096, "raid10 needs at least 4 members"),
        (Level.RAID10, 5, 4096, 4096, "raid10 needs an even number"),
        (Level.RAID5, 3, 2048, 8192, "power of two of at least 4K"),
        (Level.RAID5, 3, 12288, 65536, "power of two of at least 4K"),
        (Level.RAID5, 3, 0, 65536, "power of two of at least 4K"),
        (Level.RAID5, 3, 65536, 65535, "members too small"),
        (4, 3, 4096, 4096, "unknown RAID level 4"),
        (7, 3, 4096, 4096, "unknown RAID level"),
    ],
)
def test_make_rejects(level: int, members: int, chunk: int, size: int, message: str) -> None:
    with pytest.raises(VolumeError, match=message) as info:
        Geometry.make(level, members, chunk, size)
    assert "\n" not in str(info.value)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(VolumeError, match="not a multiple of the chunk"):
        Geometry(Level.RAID0, 2, 4096, 4097)
    with pytest.raises(VolumeError, match="raid6 needs at least 4"):
        Geometry(Level.RAID6, 3, 4096, 4096)


# -- text forms ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("raid5", Level.RAID5),
        ("RAID5", Level.RAID5),
        ("5", Level.RAID5),
        ("raid-6", Level.RAID6),
        ("Raid10", Level.RAID10),
        (" 0 ", Level.RAID0),
        ("raid1", Level.RAID1),
    ],
)
def test_parse_level(text: str, level: Level) -> None:
    assert parse_level(text) is level


@pytest.mark.parametrize("text", ["raid4", "4", "", "raid", "mirror", "raid5x"])
def test_parse_level_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="RAID level"):
        parse_level(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("64K", 65536),
        ("64k", 65536),
        ("1M", 1 << 20),
        ("8G", 8 << 30),
        ("1.5G", 3 << 29),
        ("64KiB", 65536),
        ("1MB", 1 << 20),
        ("512B", 512),
        ("2T", 2 << 40),
        (" 1 P ", 1 << 50),
        ("0", 0),
        (".5K", 512),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "K", "-1", "1.5", "64X", "1e3", "1.0000001K", "1,5G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@given(st.integers(0, 1 << 60))
def test_format_size_round_trips_when_exact(n: int) -> None:
    text = format_size(n)
    if "." not in text:
        assert parse_size(text) == n


def test_format_size_examples() -> None:
    assert format_size(65536) == "64K"
    assert format_size(8 << 30) == "8G"
    assert format_size(1536) == "1.50K"
    assert format_size(100) == "100B"
