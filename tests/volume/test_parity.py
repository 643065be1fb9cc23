"""parity.py against a bytewise pure-Python reference of md's GF(2^8) arithmetic."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.errors import DataLostError
from fusenas.units import ByteData
from fusenas.volume import parity

# -- the reference: slow, obvious, independent of the module's tables ----------------------------


def ref_mul(a: int, b: int) -> int:
    """Shift-and-add multiply modulo 0x11d."""
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11D
        b >>= 1
    return r


def ref_pow2(i: int) -> int:
    r = 1
    for _ in range(i):
        r = ref_mul(r, 2)
    return r


def ref_pq(data: Sequence[bytes]) -> tuple[bytes, bytes]:
    n = len(data[0])
    p = bytearray(n)
    q = bytearray(n)
    for i, d in enumerate(data):
        g = ref_pow2(i)
        for k in range(n):
            p[k] ^= d[k]
            q[k] ^= ref_mul(g, d[k])
    return bytes(p), bytes(q)


def random_blocks(rng: np.random.Generator, count: int, length: int) -> list[bytes]:
    return [rng.integers(0, 256, length, dtype=np.uint8).tobytes() for _ in range(count)]


def blocks_strategy(min_count: int = 3, max_count: int = 10) -> st.SearchStrategy[list[bytes]]:
    return st.integers(1, 40).flatmap(
        lambda n: st.lists(
            st.binary(min_size=n, max_size=n), min_size=min_count, max_size=max_count
        )
    )


# -- the field -------------------------------------------------------------------------------------


def test_tables_match_reference_for_every_pair() -> None:
    ref = np.array([[ref_mul(a, b) for b in range(256)] for a in range(256)], dtype=np.uint8)
    assert np.array_equal(parity.MUL, ref)
    for a in range(1, 256):
        assert ref_mul(a, parity.gf_inv(a)) == 1
    assert [parity.gf_pow2(i) for i in range(10)] == [ref_pow2(i) for i in range(10)]
    # g = 2 generates the whole multiplicative group under 0x11d.
    assert len({parity.gf_pow2(i) for i in range(255)}) == 255


def test_known_md_values() -> None:
    # 0x80·2 wraps through the polynomial: 0x100 ^ 0x11d = 0x1d.
    assert parity.gf_mul(0x80, 2) == 0x1D
    assert parity.gf_pow2(8) == 0x1D


# -- generation ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(blocks_strategy())
def test_gen_pq_matches_reference(blocks: list[bytes]) -> None:
    p, q = parity.gen_pq(blocks)
    assert (p, q) == ref_pq(blocks)
    assert parity.gen_p(blocks) == p


@pytest.mark.parametrize("count", range(3, 11))
def test_gen_pq_seeded_4k(count: int) -> None:
    rng = np.random.default_rng(count)
    blocks = random_blocks(rng, count, 4096)
    assert parity.gen_pq(blocks) == ref_pq(blocks)


def test_accepts_every_bytes_like_type() -> None:
    rng = np.random.default_rng(7)
    raw = random_blocks(rng, 4, 64)
    mixed: list[ByteData] = [raw[0], bytearray(raw[1]), memoryview(raw[2]), memoryview(raw[3])]
    assert parity.gen_pq(mixed) == ref_pq(raw)
    # A memoryview slice at an odd offset: unaligned for uint64, still correct.
    buf = b"x" + b"".join(raw)
    sliced = [memoryview(buf)[1 + 64 * i : 1 + 64 * (i + 1)] for i in range(4)]
    assert parity.gen_pq(sliced) == ref_pq(raw)


def test_length_mismatch_and_empty_are_rejected() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        parity.gen_p([b"ab", b"abc"])
    with pytest.raises(ValueError, match="no blocks"):
        parity.gen_pq([])


# -- read-modify-write -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(blocks_strategy(), st.data())
def test_update_equals_recomputation(blocks: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(blocks) - 1))
    new = data.draw(st.binary(min_size=len(blocks[0]), max_size=len(blocks[0])))
    p, q = parity.gen_pq(blocks)
    changed = [*blocks[:index], new, *blocks[index + 1 :]]
    assert parity.update_p(p, blocks[index], new) == parity.gen_p(changed)
    assert parity.update_pq(p, q, index, blocks[index], new) == parity.gen_pq(changed)


# -- recovery --------------------------------------------------------------------------------------


def _erase(blocks: list[bytes], lost: Sequence[int]) -> list[ByteData | None]:
    return [None if i in lost else b for i, b in enumerate(blocks)]


@pytest.mark.parametrize("count", range(3, 11))
@pytest.mark.parametrize("length", [4096, 8, 13])
def test_recover_every_single_and_pair(count: int, length: int) -> None:
    rng = np.random.default_rng(1000 * count + length)
    blocks = random_blocks(rng, count, length)
    p, q = parity.gen_pq(blocks)
    for x in range(count):
        assert parity.recover(_erase(blocks, [x]), p, q) == blocks  # from P
        assert parity.recover(_erase(blocks, [x]), p) == blocks  # RAID5: no Q at all
        assert parity.recover(_erase(blocks, [x]), None, q) == blocks  # data + P lost
    for x, y in itertools.combinations(range(count), 2):
        assert parity.recover(_erase(blocks, [x, y]), p, q) == blocks
    # Only parity lost (or nothing): the data comes back unchanged.
    assert parity.recover(list(blocks), None, None) == blocks
    assert parity.recover(list(blocks), p, None) == blocks


@settings(max_examples=60, deadline=None)
@given(blocks_strategy(), st.data())
def test_recover_property(blocks: list[bytes], data: st.DataObject) -> None:
    p, q = parity.gen_pq(blocks)
    lost = data.draw(st.lists(st.integers(0, len(blocks) - 1), min_size=1, max_size=2, unique=True))
    keep_p = len(lost) == 2 or data.draw(st.booleans())
    got = parity.recover(_erase(blocks, lost), p if keep_p else None, q)
    assert got == blocks


@pytest.mark.parametrize(
    ("lost", "keep_p", "keep_q"),
    [
        ([0], False, False),
        ([0, 1], True, False),
        ([0, 1], False, True),
        ([0, 1, 2], True, True),
        ([1, 3], False, False),
    ],
)
def test_too_much_missing_raises_data_lost(lost: list[int], keep_p: bool, keep_q: bool) -> None:
    rng = np.random.default_rng(3)
    blocks = random_blocks(rng, 5, 4096)
    p, q = parity.gen_pq(blocks)
    with pytest.raises(DataLostError, match="stripe lost: data blocks D"):
        parity.recover(_erase(blocks, lost), p if keep_p else None, q if keep_q else None)


def test_data_lost_is_one_line() -> None:
    with pytest.raises(DataLostError) as info:
        parity.recover([None, None, b"\0" * 8], b"\0" * 8)
    assert "\n" not in str(info.value)
    assert "D0, D1" in str(info.value)


@pytest.mark.parametrize("ndata", [1, 2, 3, 6])
def test_gen_rows_equals_gen_p_and_gen_pq_per_stripe(ndata: int) -> None:
    """P and Q of many stripes in one pass equal the per-stripe functions."""
    rng = np.random.default_rng(ndata)
    rows = rng.integers(0, 256, size=(5, ndata, 4096), dtype=np.uint8)
    p, q = parity.gen_rows(rows, want_q=True)
    p_only, none = parity.gen_rows(rows, want_q=False)
    assert none is None and q is not None
    for k in range(5):
        blocks = [rows[k, i].tobytes() for i in range(ndata)]
        assert p[k].tobytes() == p_only[k].tobytes() == parity.gen_p(blocks)
        assert (p[k].tobytes(), q[k].tobytes()) == parity.gen_pq(blocks)
    with pytest.raises(ValueError):
        parity.gen_rows(rows[:, :, :4095].copy(), want_q=False)
