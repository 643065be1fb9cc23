"""Superblock encode/decode, one test per reader error path, copy selection, write order."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusenas.units import ByteData
from fusenas.volume.member import FileDevice
from fusenas.volume.superblock import (
    BACKUP_OFFSET,
    DATA_OFFSET,
    FORMAT_VERSION,
    HEADER_LENGTH,
    LEVELS,
    MAX_MEMBERS,
    PRIMARY_OFFSET,
    RECOVERY_COMPLETE,
    SPARE_INDEX,
    SUPERBLOCK_SIZE,
    ArrayState,
    MemberState,
    Superblock,
    SuperblockError,
    looks_used,
    read_superblock,
    write_superblock,
)

U64 = st.integers(0, (1 << 64) - 1)


def sample(**changes: object) -> Superblock:
    sb = Superblock(
        array_uuid=uuid.UUID(int=0x1234),
        member_uuid=uuid.UUID(int=0x5678),
        name="tank",
        level=5,
        chunk=64 * 1024,
        members=4,
        member_index=2,
        data_offset=DATA_OFFSET,
        member_data_size=1 << 30,
        logical_size=3 << 30,
        events=7,
        state=ArrayState.CLEAN,
        created_ns=1_700_000_000_000_000_000,
        updated_ns=1_700_000_000_500_000_000,
        recovery_offset=RECOVERY_COMPLETE,
        member_states=(MemberState.ACTIVE,) * 4,
    )
    return sb.with_(**changes)


def flip(raw: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(raw)
    out[offset] ^= mask
    return bytes(out)


def reseal(raw: bytes) -> bytes:
    """Recompute the checksum, to reach the checks that come after it."""
    body = raw[: SUPERBLOCK_SIZE - 4]
    return body + struct.pack("<I", crc32c.crc32c(body))


@st.composite
def superblocks(draw: st.DrawFn) -> Superblock:
    members = draw(st.integers(1, MAX_MEMBERS))
    return Superblock(
        array_uuid=uuid.UUID(int=draw(st.integers(0, (1 << 128) - 1))),
        member_uuid=uuid.UUID(int=draw(st.integers(0, (1 << 128) - 1))),
        name=draw(
            st.text(
                st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=32
            ).filter(lambda s: len(s.encode()) <= 32)
        ),
        level=draw(st.sampled_from(sorted(LEVELS))),
        chunk=draw(st.integers(1, (1 << 32) - 1)),
        members=members,
        member_index=draw(st.one_of(st.integers(0, members - 1), st.just(SPARE_INDEX))),
        data_offset=draw(U64),
        member_data_size=draw(U64),
        logical_size=draw(U64),
        events=draw(U64),
        state=draw(st.sampled_from(ArrayState)),
        created_ns=draw(U64),
        updated_ns=draw(U64),
        recovery_offset=draw(U64),
        member_states=tuple(
            draw(st.lists(st.sampled_from(MemberState), min_size=members, max_size=members))
        ),
    )


# -- encode / decode ---------------------------------------------------------------------------


@given(superblocks())
def test_round_trip(sb: Superblock) -> None:
    raw = sb.encode()
    assert len(raw) == SUPERBLOCK_SIZE
    assert Superblock.decode(raw) == sb
    assert raw[HEADER_LENGTH : SUPERBLOCK_SIZE - 4] == bytes(SUPERBLOCK_SIZE - 4 - HEADER_LENGTH)


def test_field_offsets_match_the_format_doc() -> None:
    raw = sample(members=3, member_states=(0, 1, 4), events=0x0102030405060708).encode()
    assert raw[0:8] == b"FUSENAS\x00"
    assert struct.unpack_from("<II", raw, 8) == (FORMAT_VERSION, 220)
    assert raw[16:32] == uuid.UUID(int=0x1234).bytes
    assert raw[48:80] == b"tank".ljust(32, b"\0")
    assert struct.unpack_from("<IIII", raw, 80) == (5, 65536, 3, 2)
    assert struct.unpack_from("<QQQQ", raw, 96) == (
        DATA_OFFSET,
        1 << 30,
        3 << 30,
        0x0102030405060708,
    )
    assert struct.unpack_from("<I", raw, 128) == (0,)
    assert struct.unpack_from("<Q", raw, 148) == (RECOVERY_COMPLETE,)
    assert raw[156:220] == bytes([0, 1, 4]) + bytes(61)
    assert struct.unpack_from("<I", raw, 4092) == (crc32c.crc32c(raw[:4092]),)


def test_decode_ignores_bytes_past_the_block() -> None:
    sb = sample()
    assert Superblock.decode(sb.encode() + b"\xff" * 100) == sb


def test_with_returns_validated_copy() -> None:
    sb = sample()
    assert sb.with_(events=8).events == 8 and sb.events == 7
    with pytest.raises(ValueError, match="member states"):
        sb.with_(members=5)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"name": "x" * 33}, "longer than 32"),
        ({"name": "a\0b"}, "NUL"),
        ({"level": 4}, "level 4"),
        ({"members": 0, "member_states": ()}, "member count"),
        ({"member_index": 4}, "member index"),
        ({"chunk": 0}, "chunk"),
        ({"events": -1}, "events"),
        ({"state": 2}, "array state"),
        ({"member_states": (0, 0, 0, 9)}, "member 3"),
    ],
)
def test_invalid_fields_refused_at_construction(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample(**changes)


# -- one test per reader error path ------------------------------------------------------------


def test_decode_bad_magic() -> None:
    for i in range(8):
        with pytest.raises(SuperblockError, match=r"^no fusenas superblock \(bad magic\)$"):
            Superblock.decode(flip(sample().encode(), i))


def test_decode_zeros_is_bad_magic() -> None:
    with pytest.raises(SuperblockError, match="bad magic"):
        Superblock.decode(bytes(SUPERBLOCK_SIZE))


def test_decode_bad_version() -> None:
    raw = flip(sample().encode(), 8, 0x02)  # version 1 -> 3
    with pytest.raises(SuperblockError, match=r"^unsupported format version 3$"):
        Superblock.decode(raw)
    with pytest.raises(SuperblockError, match=r"^unsupported format version 16777217$"):
        Superblock.decode(flip(sample().encode(), 11))


@pytest.mark.parametrize("offset", [12, 20, 50, 100, 130, 200, 1000, 4091, 4092, 4095])
def test_decode_checksum_mismatch(offset: int) -> None:
    with pytest.raises(SuperblockError, match=r"^checksum mismatch$"):
        Superblock.decode(flip(sample().encode(), offset))


@pytest.mark.parametrize("length", [0, 7, 8, 4095])
def test_decode_truncated(length: int) -> None:
    with pytest.raises(SuperblockError, match=rf"^truncated \({length} of 4096 bytes\)$"):
        Superblock.decode(sample().encode()[:length])


def test_decode_bad_header_length() -> None:
    with pytest.raises(SuperblockError, match=r"^bad header length 221$"):
        Superblock.decode(reseal(flip(sample().encode(), 12)))


@pytest.mark.parametrize(
    ("offset", "mask", "match"),
    [
        (80, 0x02, "unsupported RAID level 7"),
        (88, 0x40, "member count 68"),
        (92, 0x08, "member index 10"),
        (128, 0x02, "unknown array state 2"),
        (156, 0x08, "unknown state 8 for member 0"),
        (156 + 10, 0x01, "non-zero past member count"),
        (48, 0x80, "not utf-8"),
    ],
)
def test_decode_invalid_field_under_valid_checksum(offset: int, mask: int, match: str) -> None:
    with pytest.raises(SuperblockError, match=f"^invalid field: .*{match}"):
        Superblock.decode(reseal(flip(sample().encode(), offset, mask)))


def test_decode_errors_are_one_line() -> None:
    raw = sample().encode()
    for bad in (raw[:10], flip(raw, 0), flip(raw, 8), flip(raw, 100), reseal(flip(raw, 80, 2))):
        with pytest.raises(SuperblockError) as info:
            Superblock.decode(bad)
        assert "\n" not in str(info.value)


# -- reading and writing the two copies on a device --------------------------------------------


async def member(tmp_path: Path) -> FileDevice:
    path = tmp_path / "m0"
    await FileDevice.create_file(path, 2 * DATA_OFFSET)
    return await FileDevice.open(path)


async def test_write_then_read_both_copies(tmp_path: Path) -> None:
    dev = await member(tmp_path)
    try:
        sb = sample()
        await write_superblock(dev, sb)
        assert await dev.read(PRIMARY_OFFSET, SUPERBLOCK_SIZE) == sb.encode()
        assert await dev.read(BACKUP_OFFSET, SUPERBLOCK_SIZE) == sb.encode()
        assert await read_superblock(dev) == (sb, None)
    finally:
        await dev.aclose()


async def test_backup_used_when_primary_corrupt(tmp_path: Path) -> None:
    dev = await member(tmp_path)
    try:
        sb = sample()
        await write_superblock(dev, sb)
        await dev.write(PRIMARY_OFFSET + 100, b"\xee")
        got, note = await read_superblock(dev)
        assert got == sb
        assert note is not None and "\n" not in note
        assert dev.name in note and "checksum mismatch" in note and "using the backup" in note
    finally:
        await dev.aclose()


async def test_primary_used_when_backup_corrupt(tmp_path: Path) -> None:
    dev = await member(tmp_path)
    try:
        sb = sample()
        await write_superblock(dev, sb)
        await dev.write(BACKUP_OFFSET, b"XX")
        got, note = await read_superblock(dev)
        assert got == sb
        assert note is not None and "backup superblock unusable (no fusenas" in note
    finally:
        await dev.aclose()


async def test_neither_copy_names_device_and_primary_reason(tmp_path: Path) -> None:
    dev = await member(tmp_path)
    try:
        with pytest.raises(SuperblockError, match=r"m0: no fusenas superblock \(bad magic\)$"):
            await read_superblock(dev)
        await write_superblock(dev, sample())
        await dev.write(PRIMARY_OFFSET + 8, b"\x09")
        await dev.write(BACKUP_OFFSET + 300, b"\x09")
        with pytest.raises(SuperblockError, match=r"m0: unsupported format version 9$"):
            await read_superblock(dev)
    finally:
        await dev.aclose()


@pytest.mark.parametrize("newer", ["primary", "backup"])
async def test_higher_event_counter_wins(tmp_path: Path, newer: str) -> None:
    dev = await member(tmp_path)
    try:
        old, new = sample(events=7), sample(events=8, state=ArrayState.DIRTY)
        primary, backup = (new, old) if newer == "primary" else (old, new)
        await dev.write(PRIMARY_OFFSET, primary.encode())
        await dev.write(BACKUP_OFFSET, backup.encode())
        got, note = await read_superblock(dev)
        assert got == new
        assert note is not None and f"using the {newer}" in note
    finally:
        await dev.aclose()


async def test_tie_in_events_primary_wins(tmp_path: Path) -> None:
    dev = await member(tmp_path)
    try:
        await dev.write(PRIMARY_OFFSET, sample(updated_ns=2).encode())
        await dev.write(BACKUP_OFFSET, sample(updated_ns=1).encode())
        got, note = await read_superblock(dev)
        assert got.updated_ns == 2 and note is not None and "differ" in note
    finally:
        await dev.aclose()


class Recorder:
    """A BlockDevice in memory that logs every write and flush, in order."""

    def __init__(self, size: int = 2 * DATA_OFFSET, fail_reads_at: int | None = None) -> None:
        self.buf = bytearray(size)
        self.log: list[tuple[str, int]] = []
        self.fail_reads_at = fail_reads_at

    @property
    def size(self) -> int:
        return len(self.buf)

    @property
    def name(self) -> str:
        return "recorder"

    async def read(self, offset: int, length: int) -> bytes:
        if offset == self.fail_reads_at:
            raise OSError(5, "Input/output error")
        return bytes(self.buf[offset : offset + length])

    async def write(self, offset: int, data: ByteData) -> None:
        self.log.append(("write", offset))
        self.buf[offset : offset + len(data)] = data

    def read_nowait(self, offset: int, length: int) -> bytes | None:
        return None

    async def flush(self) -> None:
        self.log.append(("flush", -1))

    async def aclose(self) -> None:
        pass


async def test_write_order_primary_durable_before_backup() -> None:
    rec = Recorder()
    await write_superblock(rec, sample())
    assert rec.log == [
        ("write", PRIMARY_OFFSET),
        ("flush", -1),
        ("write", BACKUP_OFFSET),
        ("flush", -1),
    ]


async def test_read_error_on_primary_falls_back() -> None:
    rec = Recorder(fail_reads_at=PRIMARY_OFFSET)
    await write_superblock(rec, sample())
    got, note = await read_superblock(rec)
    assert got == sample()
    assert note is not None and "read error" in note


async def test_device_too_small() -> None:
    rec = Recorder(size=100)
    with pytest.raises(SuperblockError, match=r"recorder: truncated \(device is 100 bytes\)"):
        await read_superblock(rec)


# -- looks_used --------------------------------------------------------------------------------


def test_looks_used() -> None:
    raw = sample().encode()
    assert not looks_used(bytes(2 * SUPERBLOCK_SIZE))
    assert not looks_used(b"")
    assert looks_used(raw + raw)
    assert looks_used(bytes(SUPERBLOCK_SIZE) + raw)  # only the backup survives
    assert looks_used(memoryview(raw))
    assert looks_used(bytes(5000) + b"\x01" + bytes(100))  # some other filesystem's bytes
    assert looks_used(flip(raw, 100) + bytes(SUPERBLOCK_SIZE))  # a damaged superblock
