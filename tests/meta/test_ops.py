"""Op records: every op round-trips through encode/decode; malformed bytes are ValueError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.meta.ops import (
    CreateInode,
    Link,
    MapBlocks,
    Punch,
    Reclaim,
    RemoveXattr,
    Rename,
    SetAttr,
    SetXattr,
    Unlink,
    decode_op,
    encode_op,
)

u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
name = st.binary(max_size=300)
ou = st.none() | u64
oi = st.none() | i64

ops = st.one_of(
    st.builds(CreateInode, u64, name, u64, u64, u64, u64, u64, name, i64),
    st.builds(Link, u64, u64, name, i64),
    st.builds(Unlink, u64, name, i64),
    st.builds(Rename, u64, name, u64, name, st.integers(0, 2), i64),
    st.builds(SetAttr, u64, ou, ou, ou, ou, oi, oi, i64),
    st.builds(SetXattr, u64, name, st.binary(max_size=2000), i64),
    st.builds(RemoveXattr, u64, name, i64),
    st.builds(
        MapBlocks,
        u64,
        u64,
        st.lists(st.tuples(u64, u64), max_size=5).map(tuple),
        st.lists(st.integers(-1, 2**32 - 1), max_size=20).map(tuple),
        ou,
        i64,
        i64,
    ),
    st.builds(Punch, u64, u64, u64, i64),
    st.builds(Reclaim, u64),
)


@settings(max_examples=500, deadline=None)
@given(ops)
def test_round_trip(op) -> None:  # type: ignore[no-untyped-def]
    raw = encode_op(op)
    assert decode_op(raw) == op
    assert decode_op(memoryview(raw)) == op
    # every proper prefix is rejected, as is a trailing byte
    for cut in {0, 1, len(raw) // 2, len(raw) - 1}:
        if cut < len(raw):
            with pytest.raises(ValueError):
                decode_op(raw[:cut])
    with pytest.raises(ValueError):
        decode_op(raw + b"\0")


def test_unknown_tag_and_bad_presence() -> None:
    with pytest.raises(ValueError, match="unknown op tag"):
        decode_op(b"\x63")
    raw = bytearray(encode_op(SetAttr(1, None, None, None, None, None, None, 5)))
    raw[9] = 7
    with pytest.raises(ValueError):
        decode_op(bytes(raw))


def test_layout_is_stable() -> None:
    # the journal outlives the code: pin one encoding byte for byte
    raw = encode_op(Link(2, 1, b"ab", -1))
    assert raw == bytes([2]) + (2).to_bytes(8, "little") + (1).to_bytes(8, "little") + (
        (2).to_bytes(4, "little") + b"ab" + (2**64 - 1).to_bytes(8, "little")
    )
