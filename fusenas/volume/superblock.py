"""The per-member superblock: who this member is, which array it belongs to, how fresh it is.

The byte format is written down in ``docs/superblock_format.md``; this module is its only
encoder and decoder. All sizes and offsets are in bytes.

Member layout (``MemberOffset``)::

    [0, 4K)   primary superblock        PRIMARY_OFFSET
    [4K, 8K)  backup superblock         BACKUP_OFFSET
    [8K, 1M)  write-intent bitmap area  BITMAP_OFFSET (reserved)
    [1M, ...) data area                 DATA_OFFSET

Invariants
----------
* A superblock is exactly ``SUPERBLOCK_SIZE`` bytes, little-endian, protected by a crc32c of
  bytes ``[0, 4092)`` stored at ``4092``. ``encode`` always produces a block that ``decode``
  accepts and maps back to an equal ``Superblock``.
* ``decode`` checks, in order: length, magic, version, checksum, then field ranges; it
  reports the first failure as a one-line ``SuperblockError``. It refuses any version but
  ``FORMAT_VERSION``.
* ``Superblock`` values are immutable and validated on construction (``ValueError``), so an
  invalid one cannot be written.

Crash behaviour
---------------
``write_superblock`` writes the primary, flushes, then writes the backup and flushes. Only
one copy is ever in flight, so a power cut or torn write can damage at most one of them, and
``read_superblock`` falls back to the other. A cut between the two leaves the primary newer;
the reader prefers the copy with the higher event counter (and the primary on a tie), so
callers bump ``events`` on every update that matters for freshness.

Cancellation
------------
``read_superblock`` has no side effects. A cancelled ``write_superblock`` leaves the member
exactly as a power cut at that point would (see above), which the reader handles.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import crc32c

from fusenas.errors import VolumeError
from fusenas.volume.device import BlockDevice

__all__ = [
    "BACKUP_OFFSET",
    "BITMAP_OFFSET",
    "DATA_OFFSET",
    "FORMAT_VERSION",
    "HEADER_LENGTH",
    "LEVELS",
    "MAGIC",
    "MAX_MEMBERS",
    "NAME_SIZE",
    "PRIMARY_OFFSET",
    "RECOVERY_COMPLETE",
    "SPARE_INDEX",
    "SUPERBLOCK_SIZE",
    "ArrayState",
    "MemberState",
    "Superblock",
    "SuperblockError",
    "looks_used",
    "read_superblock",
    "write_superblock",
]

SUPERBLOCK_SIZE = 4096
PRIMARY_OFFSET = 0
BACKUP_OFFSET = 4096
#: Start of the area reserved for the write-intent bitmap, up to ``DATA_OFFSET``.
BITMAP_OFFSET = 8192
#: Start of the member's data area.
DATA_OFFSET = 1 << 20

MAGIC = b"FUSENAS\x00"
FORMAT_VERSION = 1
#: RAID levels the format can record.
LEVELS = frozenset({0, 1, 5, 6, 10})
#: Entries in the member state table, hence the largest array.
MAX_MEMBERS = 64
#: ``member_index`` of a spare, which holds no slot in the layout.
SPARE_INDEX = 0xFFFF_FFFF
#: ``recovery_offset`` of a member that needs no rebuild.
RECOVERY_COMPLETE = (1 << 64) - 1
NAME_SIZE = 32

_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1

# Field order is the on-disk order; "<" means little-endian with no padding.
_HEADER = struct.Struct(
    "<"
    "8s"  # magic
    "I"  # format version
    "I"  # header length
    "16s"  # array uuid
    "16s"  # member uuid
    f"{NAME_SIZE}s"  # array name, utf-8, NUL padded
    "I"  # level
    "I"  # chunk size
    "I"  # member count
    "I"  # member index
    "Q"  # data offset
    "Q"  # member data size
    "Q"  # logical size
    "Q"  # event counter
    "I"  # array state
    "Q"  # created ns
    "Q"  # updated ns
    "Q"  # recovery offset
    f"{MAX_MEMBERS}s"  # member state table, one u8 per member index
)
#: Bytes of defined fields; the rest up to the checksum is reserved and zero.
HEADER_LENGTH = _HEADER.size
_CRC_OFFSET = SUPERBLOCK_SIZE - 4
_VERSION = struct.Struct("<I")

assert HEADER_LENGTH == 220 and HEADER_LENGTH <= _CRC_OFFSET


class ArrayState(IntEnum):
    """DIRTY while mounted read-write; CLEAN after a clean unmount (parity is consistent)."""

    CLEAN = 0
    DIRTY = 1


class MemberState(IntEnum):
    """What the array believes about the member at one index (the table is per index)."""

    ACTIVE = 0
    FAULTY = 1
    MISSING = 2
    SPARE = 3
    REBUILDING = 4


class SuperblockError(VolumeError):
    """A superblock copy cannot be used. ``str(e)`` is one line giving the reason."""


@dataclass(frozen=True)
class Superblock:
    """One decoded superblock. Sizes and offsets in bytes; timestamps in ns since the epoch.

    ``member_states`` has exactly ``members`` entries, indexed by member index.
    Construction validates every field (``ValueError``) and normalises ``state`` and
    ``member_states`` to their enums.
    """

    array_uuid: uuid.UUID
    member_uuid: uuid.UUID
    name: str
    level: int
    chunk: int
    members: int
    member_index: int
    data_offset: int
    member_data_size: int
    logical_size: int
    events: int
    state: ArrayState
    created_ns: int
    updated_ns: int
    recovery_offset: int
    member_states: tuple[MemberState, ...]

    def __post_init__(self) -> None:
        # Enums are normalised first so a bad value reports as a bad value, not a type error.
        try:
            object.__setattr__(self, "state", ArrayState(self.state))
        except ValueError:
            raise ValueError(f"unknown array state {self.state!r}") from None
        states = []
        for i, s in enumerate(self.member_states):
            try:
                states.append(MemberState(s))
            except ValueError:
                raise ValueError(f"unknown state {s!r} for member {i}") from None
        object.__setattr__(self, "member_states", tuple(states))

        encoded = self.name.encode("utf-8")
        if len(encoded) > NAME_SIZE:
            raise ValueError(f"array name longer than {NAME_SIZE} bytes in utf-8")
        if "\0" in self.name:
            raise ValueError("array name contains a NUL character")
        if self.level not in LEVELS:
            raise ValueError(f"unsupported RAID level {self.level}")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise ValueError(f"member count {self.members} outside 1..{MAX_MEMBERS}")
        if not (0 <= self.member_index < self.members or self.member_index == SPARE_INDEX):
            raise ValueError(f"member index {self.member_index} outside 0..{self.members - 1}")
        if len(self.member_states) != self.members:
            raise ValueError(f"{len(self.member_states)} member states for {self.members} members")
        if not 0 < self.chunk <= _U32_MAX:
            raise ValueError(f"chunk size {self.chunk} outside 1..{_U32_MAX}")
        for field in (
            "data_offset",
            "member_data_size",
            "logical_size",
            "events",
            "created_ns",
            "updated_ns",
            "recovery_offset",
        ):
            value = getattr(self, field)
            if not 0 <= value <= _U64_MAX:
                raise ValueError(f"{field} {value} does not fit in 64 bits")

    @property
    def is_spare(self) -> bool:
        return self.member_index == SPARE_INDEX

    def with_(self, **changes: Any) -> Superblock:
        """A copy with ``changes`` applied (validated like any construction)."""
        return dataclasses.replace(self, **changes)

    def encode(self) -> bytes:
        """The exact ``SUPERBLOCK_SIZE`` bytes of this superblock, checksum included."""
        table = bytes(self.member_states).ljust(MAX_MEMBERS, b"\0")
        header = _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            HEADER_LENGTH,
            self.array_uuid.bytes,
            self.member_uuid.bytes,
            self.name.encode("utf-8"),  # struct pads "32s" with NULs
            self.level,
            self.chunk,
            self.members,
            self.member_index,
            self.data_offset,
            self.member_data_size,
            self.logical_size,
            self.events,
            self.state,
            self.created_ns,
            self.updated_ns,
            self.recovery_offset,
            table,
        )
        body = header.ljust(_CRC_OFFSET, b"\0")
        return body + struct.pack("<I", crc32c.crc32c(body))

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview) -> Superblock:
        """Parse one copy. Only the first ``SUPERBLOCK_SIZE`` bytes of ``raw`` are looked at.

        ``SuperblockError`` with the first failing check: ``truncated``, ``no fusenas
        superblock (bad magic)``, ``unsupported format version N``, ``checksum mismatch``,
        ``bad header length N``, ``invalid field: ...``.
        """
        block = bytes(memoryview(raw)[:SUPERBLOCK_SIZE])
        if len(block) < SUPERBLOCK_SIZE:
            raise SuperblockError(f"truncated ({len(block)} of {SUPERBLOCK_SIZE} bytes)")
        if block[: len(MAGIC)] != MAGIC:
            raise SuperblockError("no fusenas superblock (bad magic)")
        # Version before checksum: a future version may checksum differently, and "written by
        # a newer fusenas" is the more useful thing to say.
        (version,) = _VERSION.unpack_from(block, len(MAGIC))
        if version != FORMAT_VERSION:
            raise SuperblockError(f"unsupported format version {version}")
        (stored_crc,) = struct.unpack_from("<I", block, _CRC_OFFSET)
        if crc32c.crc32c(block[:_CRC_OFFSET]) != stored_crc:
            raise SuperblockError("checksum mismatch")

        (
            _magic,
            _version,
            header_length,
            array_uuid,
            member_uuid,
            name,
            level,
            chunk,
            members,
            member_index,
            data_offset,
            member_data_size,
            logical_size,
            events,
            state,
            created_ns,
            updated_ns,
            recovery_offset,
            table,
        ) = _HEADER.unpack_from(block)
        if header_length != HEADER_LENGTH:
            raise SuperblockError(f"bad header length {header_length}")
        # A valid checksum over invalid fields means a buggy writer, not a torn write; say
        # which field so the bug can be found.
        try:
            name_str = name.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise SuperblockError("invalid field: array name is not utf-8") from None
        if members <= MAX_MEMBERS and any(table[members:]):
            raise SuperblockError("invalid field: member state table non-zero past member count")
        try:
            return cls(
                array_uuid=uuid.UUID(bytes=array_uuid),
                member_uuid=uuid.UUID(bytes=member_uuid),
                name=name_str,
                level=level,
                chunk=chunk,
                members=members,
                member_index=member_index,
                data_offset=data_offset,
                member_data_size=member_data_size,
                logical_size=logical_size,
                events=events,
                state=state,
                created_ns=created_ns,
                updated_ns=updated_ns,
                recovery_offset=recovery_offset,
                member_states=tuple(table[: min(members, MAX_MEMBERS)]),
            )
        except ValueError as e:
            raise SuperblockError(f"invalid field: {e}") from None


async def _read_copy(dev: BlockDevice, offset: int) -> tuple[Superblock | None, str]:
    """Decode the copy at ``offset``: ``(superblock, "")`` or ``(None, reason)``."""
    if dev.size < offset + SUPERBLOCK_SIZE:
        return None, f"truncated (device is {dev.size} bytes)"
    try:
        raw = await dev.read(offset, SUPERBLOCK_SIZE)
    except OSError as e:
        return None, f"read error: {e}"
    try:
        return Superblock.decode(raw), ""
    except SuperblockError as e:
        return None, str(e)


async def read_superblock(dev: BlockDevice) -> tuple[Superblock, str | None]:
    """Read both copies and return ``(superblock, note)``.

    ``note`` is ``None`` when both copies decode and are equal; otherwise it is one line (naming
    the device) saying which copy was used and why: the primary did not decode, the backup did
    not decode, or both decode but differ, in which case the higher event counter wins and the
    primary wins a tie (it is written first, so after a cut between the two writes it is the
    newer one). Callers should rewrite both copies when a note is returned.

    ``SuperblockError("<device>: <primary's reason>")`` if neither copy decodes. Read errors
    count as a copy that does not decode. No side effects, so cancellation is harmless.
    """
    primary, p_reason = await _read_copy(dev, PRIMARY_OFFSET)
    backup, b_reason = await _read_copy(dev, BACKUP_OFFSET)
    if primary is None and backup is None:
        raise SuperblockError(f"{dev.name}: {p_reason}")
    if primary is None:
        assert backup is not None
        return backup, (
            f"{dev.name}: primary superblock unusable ({p_reason}); "
            f"using the backup (events {backup.events})"
        )
    if backup is None:
        return primary, f"{dev.name}: backup superblock unusable ({b_reason}); using the primary"
    if primary == backup:
        return primary, None
    if backup.events > primary.events:
        return backup, (
            f"{dev.name}: superblock copies differ; using the backup "
            f"(events {backup.events} > primary's {primary.events})"
        )
    return primary, (
        f"{dev.name}: superblock copies differ; using the primary "
        f"(events {primary.events}, backup's {backup.events})"
    )


async def write_superblock(dev: BlockDevice, sb: Superblock) -> None:
    """Write ``sb`` to both copies: primary, flush, backup, flush.

    The flush between the two writes is the point: the backup is not touched until the
    primary is durable, so at any instant at most one copy can be torn or stale-and-partial,
    and ``read_superblock`` falls back to the other. The caller is responsible for bumping
    ``sb.events`` when the new contents must win over older copies on other members.

    ``OSError`` from the device propagates; the copies are then in an unknown but readable
    state (at least one decodes if it did before). Cancellation leaves the same states a power
    cut at that point would.
    """
    raw = sb.encode()
    await dev.write(PRIMARY_OFFSET, raw)
    await dev.flush()
    await dev.write(BACKUP_OFFSET, raw)
    await dev.flush()


def looks_used(head: bytes | bytearray | memoryview) -> bool:
    """True if ``head`` (the first bytes of a would-be member) may hold something of value.

    That is: either superblock copy decodes, or any byte is non-zero. mkfs refuses to
    overwrite such a device without ``--force``. Pass at least ``2 * SUPERBLOCK_SIZE`` bytes
    to see both copies; all-zero (e.g. a fresh sparse file) is the only "unused".
    """
    view = memoryview(head).cast("B")
    for offset in (PRIMARY_OFFSET, BACKUP_OFFSET):
        if len(view) >= offset + SUPERBLOCK_SIZE:
            try:
                Superblock.decode(view[offset : offset + SUPERBLOCK_SIZE])
            except SuperblockError:
                pass
            else:
                return True
    # A superblock has a non-zero magic, so this also catches torn or foreign-version copies.
    return view.tobytes() != bytes(len(view))
