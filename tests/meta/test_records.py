"""Item values round-trip, and a value of the wrong length is refused."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusenas.meta.records import (
    UNWRITTEN,
    DirEntry,
    ExtentItem,
    InodeRecord,
    RecordError,
    decode_dirindex,
    encode_dirindex,
)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
ts = st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(0, 999_999_999))


@given(
    st.builds(
        InodeRecord,
        generation=u64,
        mode=u32,
        uid=u32,
        gid=u32,
        nlink=u32,
        size=u64,
        blocks=u64,
        rdev=u64,
        parent=u64,
        next_cookie=u64,
        flags=u32,
        atime=ts,
        mtime=ts,
        ctime=ts,
    )
)
def test_inode_records_round_trip_the_full_time_range(rec: InodeRecord) -> None:
    assert InodeRecord.decode(rec.encode()) == rec


@given(ino=u64, cookie=u64, kind=st.integers(0, 15), name=st.binary(min_size=1, max_size=255))
def test_directory_values_round_trip(ino: int, cookie: int, kind: int, name: bytes) -> None:
    assert DirEntry.decode(DirEntry(ino, cookie, kind).encode()) == DirEntry(ino, cookie, kind)
    assert decode_dirindex(encode_dirindex(ino, kind, name)) == (ino, kind, name)


@given(vol=u64, crcs=st.lists(u32, min_size=1, max_size=256))
def test_written_extents_round_trip(vol: int, crcs: list[int]) -> None:
    item = ExtentItem(vol, len(crcs), 0, array("I", crcs))
    assert ExtentItem.decode(item.encode()) == item


def test_unwritten_extents_carry_no_checksums_whatever_their_length() -> None:
    item = ExtentItem(10, 2**32 - 1, UNWRITTEN, array("I"))
    raw = item.encode()
    assert len(raw) == 13 and ExtentItem.decode(raw) == item


def test_wrong_lengths_are_refused() -> None:
    raw = InodeRecord(1, 0o100644, 0, 0, 1, 0, 0, 0, 0, 0, 0, (0, 0), (0, 0), (0, 0)).encode()
    with pytest.raises(RecordError):
        InodeRecord.decode(raw[:-1])
    with pytest.raises(RecordError):
        ExtentItem.decode(ExtentItem(1, 2, 0, array("I", [1, 2])).encode()[:-4])
    with pytest.raises(ValueError):
        ExtentItem(1, 3, 0, array("I", [1, 2])).encode()
