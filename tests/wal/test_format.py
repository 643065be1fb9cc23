"""The record and header format, and one test per reader error path (single-byte flips)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusenas.errors import JournalError
from fusenas.units import LSN
from fusenas.wal.format import (
    LOG_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    RECORDS_START,
    RecordType,
    decode_header,
    decode_log_header,
    encode_log_header,
    encode_pad,
    encode_record,
    header_acceptable,
    next_offset,
    payload_valid,
)

LOG_SIZE = 4 * 4096
ARRAY = uuid.UUID(int=0x1234)


def accept(ring: bytes | bytearray, offset: int, expected: int) -> bool:
    """The reader's rule for the record at ``offset`` of a journal image."""
    raw = ring[offset : offset + RECORD_HEADER_SIZE]
    h = decode_header(raw)
    if not header_acceptable(h, offset, len(ring), LSN(expected)):
        return False
    payload = ring[offset + RECORD_HEADER_SIZE : offset + h.size]
    return payload_valid(h, raw, payload)


def image_with(record: bytes, offset: int = RECORDS_START) -> bytearray:
    ring = bytearray(LOG_SIZE)
    ring[offset : offset + len(record)] = record
    return ring


def flipped(ring: bytearray, index: int, xor: int = 0x01) -> bytearray:
    out = bytearray(ring)
    out[index] ^= xor
    return out


@given(
    st.sampled_from([RecordType.DATA, RecordType.STRIPE, RecordType.META]),
    st.integers(1, 2**63),
    st.binary(max_size=300),
)
def test_record_round_trip(type_: RecordType, lsn: int, payload: bytes) -> None:
    raw = encode_record(type_, LSN(lsn), payload)
    assert len(raw) == RECORD_HEADER_SIZE + len(payload)
    h = decode_header(raw)
    assert (h.type, h.lsn, h.length) == (type_, lsn, len(payload))
    assert payload_valid(h, raw, raw[RECORD_HEADER_SIZE:])


def test_valid_record_accepted() -> None:
    ring = image_with(encode_record(RecordType.META, LSN(7), b"hello"))
    assert accept(ring, RECORDS_START, 7)


def test_crc_flip_rejected() -> None:
    ring = image_with(encode_record(RecordType.META, LSN(7), b"hello"))
    assert not accept(flipped(ring, RECORDS_START), RECORDS_START, 7)


def test_payload_flip_rejected() -> None:
    ring = image_with(encode_record(RecordType.META, LSN(7), b"hello"))
    assert not accept(flipped(ring, RECORDS_START + RECORD_HEADER_SIZE + 2), RECORDS_START, 7)


def test_unknown_type_rejected() -> None:
    ring = image_with(encode_record(RecordType.META, LSN(7), b"hello"))
    assert not accept(flipped(ring, RECORDS_START + 8, 0x04), RECORDS_START, 7)  # type 3 -> 7


def test_length_past_end_rejected() -> None:
    ring = image_with(encode_record(RecordType.META, LSN(7), b"hello"))
    assert not accept(flipped(ring, RECORDS_START + 6, 0x80), RECORDS_START, 7)  # +8 MiB


def test_wrong_lsn_rejected() -> None:
    ring = image_with(encode_record(RecordType.META, LSN(7), b"hello"))
    assert not accept(ring, RECORDS_START, 8)
    # A flipped LSN byte also breaks the crc.
    assert not accept(flipped(ring, RECORDS_START + 12), RECORDS_START, 7)


def test_stale_record_from_earlier_lap_rejected() -> None:
    # A perfectly valid record whose LSN is from a previous lap around the ring.
    ring = image_with(encode_record(RecordType.DATA, LSN(3), b"old lap"))
    assert not accept(ring, RECORDS_START, 3 + 1000)


def test_torn_tail_rejected() -> None:
    record = encode_record(RecordType.DATA, LSN(7), bytes(range(200)) * 30)
    offset = 2 * 4096 - 100  # straddles a 4 KiB boundary
    ring = image_with(record, offset)
    assert accept(ring, offset, 7)
    torn = bytearray(ring)
    torn[2 * 4096 : offset + len(record)] = bytes(offset + len(record) - 2 * 4096)
    assert not accept(torn, offset, 7)


def test_zeros_rejected() -> None:
    assert not accept(bytearray(LOG_SIZE), RECORDS_START, 1)


def test_pad_must_end_at_ring_end() -> None:
    offset = LOG_SIZE - 100
    ring = image_with(encode_pad(LSN(5), offset, LOG_SIZE), offset)
    assert accept(ring, offset, 5)
    short = encode_record(RecordType.PAD, LSN(5), bytes(10))
    assert not accept(image_with(short, offset), offset, 5)


def test_next_offset_wraps_without_pad_when_header_does_not_fit() -> None:
    assert next_offset(RECORDS_START, 100, LOG_SIZE) == RECORDS_START + 100
    assert next_offset(LOG_SIZE - 120, 100, LOG_SIZE) == LOG_SIZE - 20
    assert next_offset(LOG_SIZE - 119, 100, LOG_SIZE) == RECORDS_START
    assert next_offset(LOG_SIZE - 100, 100, LOG_SIZE) == RECORDS_START


def test_log_header_round_trip() -> None:
    raw = encode_log_header(ARRAY, 1 << 20)
    assert len(raw) == LOG_HEADER_SIZE
    h = decode_log_header(raw, ARRAY)
    assert (h.array_uuid, h.log_size, h.version) == (ARRAY, 1 << 20, 1)


def test_log_header_bad_magic() -> None:
    raw = bytearray(encode_log_header(ARRAY, 1 << 20))
    with pytest.raises(JournalError, match="not a fusenas journal"):
        decode_log_header(flipped(raw, 0), ARRAY)


def test_log_header_checksum_mismatch() -> None:
    raw = bytearray(encode_log_header(ARRAY, 1 << 20))
    with pytest.raises(JournalError, match="checksum mismatch"):
        decode_log_header(flipped(raw, 20), ARRAY)


def test_log_header_other_array() -> None:
    other = uuid.UUID(int=0x9999)
    with pytest.raises(JournalError, match=f"another array .*{other}.*{ARRAY}"):
        decode_log_header(encode_log_header(other, 1 << 20), ARRAY)
