"""On-disk format of the write-ahead log: pure encoding and decoding, no I/O.

The byte layout is specified in ``docs/wal_format.md``; this module is its executable form.
All sizes and offsets are in bytes, all integers little-endian.

Layout of the journal device::

    [0, 4096)             log header (LOG_HEADER_SIZE): magic, version, array uuid, log size, crc
    [4096, log_size)      the record ring: records are packed back to back and wrap to 4096

Record: ``crc32c u32 | length u32 | type u8 | reserved 3 | lsn u64 | payload[length]``; the crc
covers bytes 4..20 of the header (length, type, reserved, lsn) followed by the payload.

Reader rules (``record_acceptable`` + ``record_crc``): a record is accepted only if its type is
known, it lies entirely inside the ring (a PAD must end exactly at ``log_size``), its LSN is the
expected next LSN and its crc matches. Anything else (a stale record of an earlier lap, a torn
tail, zeros, garbage) is the end of the log, never an error and never half-applied.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum

import crc32c as _crc32c

from fusenas.errors import JournalError
from fusenas.units import BLOCK_SIZE, LSN, ByteData

LOG_MAGIC = b"FNASWAL\x00"
LOG_VERSION = 1
#: The log header occupies the first block; records start right after it.
LOG_HEADER_SIZE = BLOCK_SIZE
RECORDS_START = LOG_HEADER_SIZE
RECORD_HEADER_SIZE = 20
#: Smallest journal that format() accepts: the header block plus one block of ring.
MIN_LOG_SIZE = LOG_HEADER_SIZE + BLOCK_SIZE

_LOG_HEADER = struct.Struct("<8sI16sQ")
_LOG_CRC = struct.Struct("<I")
_RECORD_HEADER = struct.Struct("<IIB3xQ")
assert _RECORD_HEADER.size == RECORD_HEADER_SIZE


class RecordType(IntEnum):
    """What a record holds. The WAL interprets only PAD; the others are opaque payloads."""

    #: Fills the bytes from its position to the end of the ring, before a wrap. Has its own LSN.
    PAD = 0
    #: A block-aligned write to the logical volume (stripe cache).
    DATA = 1
    #: The member writes of one in-place partial-stripe update (write-hole protection).
    STRIPE = 2
    #: One metadata operation (meta/records.py).
    META = 3


_KNOWN_TYPES = frozenset(int(t) for t in RecordType)


@dataclass(frozen=True)
class LogPosition:
    """Where replay starts: the LSN expected at byte ``offset`` of the journal device.

    Kept by the checkpoint; ``offset`` is always in ``[RECORDS_START, log_size)``.
    """

    lsn: LSN
    offset: int


@dataclass(frozen=True)
class LogHeader:
    version: int
    array_uuid: uuid.UUID
    log_size: int


@dataclass(frozen=True)
class RecordHeader:
    """A decoded record header, not yet validated. ``type`` is the raw byte (may be unknown)."""

    crc: int
    length: int
    type: int
    lsn: LSN

    @property
    def size(self) -> int:
        """Bytes the whole record occupies in the ring (header + payload)."""
        return RECORD_HEADER_SIZE + self.length


def record_size(payload_length: int) -> int:
    """Bytes a record with ``payload_length`` payload bytes occupies in the ring."""
    return RECORD_HEADER_SIZE + payload_length


def record_crc(header_tail: ByteData, payload: ByteData) -> int:
    """crc32c of header bytes 4..20 (length, type, reserved, lsn) followed by the payload."""
    return int(_crc32c.crc32c(payload, _crc32c.crc32c(header_tail)))


#: A record's payload: one buffer, or a tuple of parts concatenated on the device.
Payload = ByteData | tuple[ByteData, ...]


def record_parts(type: RecordType, lsn: LSN, payload: Payload) -> list[ByteData]:
    """One record as buffers to write back to back: its header, then the payload, given as
    parts (byte-format buffers) that are concatenated on the device, not in memory. The
    parts are referenced, not copied: they must not change until written."""
    if not isinstance(payload, tuple):
        payload = (payload,)
    length = sum(len(p) for p in payload)
    header = _RECORD_HEADER.pack(0, length, int(type), lsn)
    crc = _crc32c.crc32c(memoryview(header)[4:])
    for part in payload:
        crc = _crc32c.crc32c(part, crc)
    return [_RECORD_HEADER.pack(int(crc), length, int(type), lsn), *payload]


def encode_record(type: RecordType, lsn: LSN, payload: ByteData) -> bytes:
    """The bytes of one record: header then payload."""
    return b"".join(record_parts(type, lsn, payload))


def encode_pad(lsn: LSN, offset: int, log_size: int) -> bytes:
    """A PAD record filling ``[offset, log_size)``; needs at least RECORD_HEADER_SIZE bytes."""
    n = log_size - offset - RECORD_HEADER_SIZE
    if n < 0:
        raise ValueError(f"no room for a PAD header at offset {offset} of {log_size}")
    return encode_record(RecordType.PAD, lsn, bytes(n))


def decode_header(raw: ByteData) -> RecordHeader:
    """Parse the first RECORD_HEADER_SIZE bytes of ``raw``. Validation is the caller's."""
    crc, length, type_, lsn = _RECORD_HEADER.unpack_from(raw, 0)
    return RecordHeader(crc=crc, length=length, type=type_, lsn=LSN(lsn))


def header_acceptable(h: RecordHeader, offset: int, log_size: int, expected: LSN | None) -> bool:
    """Everything the reader checks before reading the payload (crc is checked after).

    ``expected=None`` skips the LSN check (used to tell a mismatched LSN at the checkpoint's
    position apart from an empty log).
    """
    if h.type not in _KNOWN_TYPES:
        return False
    end = offset + h.size
    if end > log_size:
        return False
    if h.type == RecordType.PAD and end != log_size:
        return False
    return expected is None or h.lsn == expected


def payload_valid(h: RecordHeader, raw_header: ByteData, payload: ByteData) -> bool:
    """True if the record's crc matches its header and payload."""
    return record_crc(memoryview(raw_header)[4:RECORD_HEADER_SIZE], payload) == h.crc


def next_offset(offset: int, size: int, log_size: int) -> int:
    """Where the record after one of ``size`` bytes at ``offset`` starts.

    If fewer than RECORD_HEADER_SIZE bytes remain before the end of the ring, both writer and
    reader wrap to RECORDS_START without a PAD.
    """
    end = offset + size
    return RECORDS_START if log_size - end < RECORD_HEADER_SIZE else end


def encode_log_header(array_uuid: uuid.UUID, log_size: int) -> bytes:
    """The LOG_HEADER_SIZE bytes of the log header block (zero-filled after the crc)."""
    body = _LOG_HEADER.pack(LOG_MAGIC, LOG_VERSION, array_uuid.bytes, log_size)
    raw = body + _LOG_CRC.pack(_crc32c.crc32c(body))
    return raw + bytes(LOG_HEADER_SIZE - len(raw))


def decode_log_header(raw: ByteData, array_uuid: uuid.UUID | None = None) -> LogHeader:
    """Parse and check a log header block. JournalError with a one-line reason otherwise.

    With ``array_uuid`` the journal must belong to that array.
    """
    need = _LOG_HEADER.size + _LOG_CRC.size
    if len(raw) < need:
        raise JournalError(f"journal header truncated ({len(raw)} bytes)")
    magic, version, uuid_bytes, log_size = _LOG_HEADER.unpack_from(raw, 0)
    if magic != LOG_MAGIC:
        raise JournalError("not a fusenas journal (bad magic)")
    (crc,) = _LOG_CRC.unpack_from(raw, _LOG_HEADER.size)
    if crc != _crc32c.crc32c(bytes(raw[: _LOG_HEADER.size])):
        raise JournalError("journal header checksum mismatch")
    if version != LOG_VERSION:
        raise JournalError(f"unsupported journal version {version} (this is {LOG_VERSION})")
    if log_size < MIN_LOG_SIZE:
        raise JournalError(f"journal header says {log_size} bytes, below {MIN_LOG_SIZE}")
    found = uuid.UUID(bytes=uuid_bytes)
    if array_uuid is not None and found != array_uuid:
        raise JournalError(f"journal belongs to another array (uuid {found}, not {array_uuid})")
    return LogHeader(version=version, array_uuid=found, log_size=log_size)
