"""Metadata checkpoints in two alternating regions at the start of the logical volume.

Layout (logical byte offsets; ``R`` = region size, a whole number of stripes fixed at mkfs)::

    [0, R)      region A: 4 KiB slot header, then the metadata image
    [R, 2R)     region B: same
    [2R, ...)   the data area (file blocks)

Slot header (little-endian, 4096 bytes, zero padded)::

    magic "FNASCKPT" | version u32 | array uuid 16 | seq u64 | log lsn u64 | log offset u64
    | image length u64 | image crc32c u32 | ... | header crc32c u32 (last 4 bytes, over the rest)

``seq`` increases by one per checkpoint; the newest valid slot (header and image checksums
both good) is the checkpoint. ``(log lsn, log offset)`` is where replay starts.

Write order (``CheckpointRegions.write``): image into the region that does *not* hold the newest
valid checkpoint → flush members → header → flush members. A crash before the header is
durable leaves the old checkpoint newest; a torn header fails its checksum. Either way the
other region is untouched, so there is always one valid checkpoint to fall back to (and the log
keeps records back to the older checkpoint, so falling back still replays everything).
Because the regions are whole stripes, image writes never share a parity row with file data.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Protocol

import crc32c

from fusenas.errors import JournalError, NoSpaceError
from fusenas.units import LSN, ByteData
from fusenas.wal.format import LogPosition

HEADER_SIZE = 4096
MAGIC = b"FNASCKPT"
VERSION = 1
_HEADER = struct.Struct("<8sI16sQQQQI")


class LogicalVolume(Protocol):
    """What checkpoints need of the volume: logical reads, writes and a flush.

    In production a ``fusenas.stripe.writer.StripeWriter`` over the array, without a journal
    hook: the regions' safety is the two-slot order above, not the WAL.
    """

    async def read(self, offset: int, length: int) -> bytes: ...
    async def write(self, offset: int, data: ByteData) -> None: ...
    async def flush(self) -> None: ...


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its sequence number, where replay starts, and the image bytes."""

    seq: int
    log_start: LogPosition
    image: bytes
    region: int  # 0 = A, 1 = B


def encode_header(array_uuid: uuid.UUID, seq: int, start: LogPosition, image: ByteData) -> bytes:
    body = _HEADER.pack(
        MAGIC,
        VERSION,
        array_uuid.bytes,
        seq,
        start.lsn,
        start.offset,
        len(image),
        crc32c.crc32c(image),
    ).ljust(HEADER_SIZE - 4, b"\0")
    return body + struct.pack("<I", crc32c.crc32c(body))


def decode_header(raw: bytes, array_uuid: uuid.UUID) -> tuple[int, LogPosition, int, int]:
    """``(seq, log start, image length, image crc)``; ``JournalError`` saying why not."""
    if len(raw) < HEADER_SIZE:
        raise JournalError("truncated checkpoint header")
    (crc,) = struct.unpack_from("<I", raw, HEADER_SIZE - 4)
    if crc32c.crc32c(raw[: HEADER_SIZE - 4]) != crc:
        if raw[:8] != MAGIC:
            raise JournalError("no checkpoint (bad magic)")
        raise JournalError("checkpoint header checksum mismatch")
    magic, version, uid, seq, lsn, offset, length, image_crc = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise JournalError("no checkpoint (bad magic)")
    if version != VERSION:
        raise JournalError(f"unsupported checkpoint version {version}")
    if uid != array_uuid.bytes:
        raise JournalError(f"checkpoint belongs to another array ({uuid.UUID(bytes=uid)})")
    return seq, LogPosition(LSN(lsn), offset), length, image_crc


class CheckpointRegions:
    """The two checkpoint regions of one volume. ``region_size`` in bytes."""

    def __init__(self, volume: LogicalVolume, region_size: int, array_uuid: uuid.UUID) -> None:
        self.volume = volume
        self.region_size = region_size
        self.array_uuid = array_uuid
        self.current: Checkpoint | None = None

    @property
    def data_start(self) -> int:
        """Logical offset of the data area, right after the two regions."""
        return 2 * self.region_size

    @property
    def max_image(self) -> int:
        return self.region_size - HEADER_SIZE

    async def _read_slot(self, region: int) -> Checkpoint:
        base = region * self.region_size
        seq, start, length, image_crc = decode_header(
            await self.volume.read(base, HEADER_SIZE), self.array_uuid
        )
        if length > self.max_image:
            raise JournalError(f"checkpoint image length {length} exceeds its region")
        image = await self.volume.read(base + HEADER_SIZE, length)
        if crc32c.crc32c(image) != image_crc:
            raise JournalError("checkpoint image checksum mismatch")
        return Checkpoint(seq, start, image, region)

    async def load(self) -> tuple[Checkpoint, list[str]]:
        """The newest valid checkpoint, and one note per region that could not be used.

        ``JournalError`` if neither region holds a valid checkpoint.
        """
        found: list[Checkpoint] = []
        notes: list[str] = []
        for region in (0, 1):
            try:
                found.append(await self._read_slot(region))
            except JournalError as exc:
                notes.append(f"checkpoint slot {'AB'[region]} unusable: {exc}")
        if not found:
            raise JournalError("no valid metadata checkpoint: " + "; ".join(notes))
        newest = max(found, key=lambda c: c.seq)
        if len(found) == 2 or (newest.seq == 1 and "bad magic" in notes[0]):
            notes = []  # the older one is the previous checkpoint, or a fresh volume's blank
        elif newest.seq > 1:
            notes[-1] += f"; using slot {'AB'[newest.region]} (checkpoint {newest.seq})"
        self.current = newest
        return newest, notes

    async def write(self, start: LogPosition, image: ByteData) -> Checkpoint:
        """Write a new checkpoint (image at LSN ``start.lsn - 1``) into the inactive region.

        ``NoSpaceError`` if the image does not fit. Crash: see the module docstring. Cancelled:
        the same as a crash at that point; ``current`` is unchanged until the header is durable.
        """
        if len(image) > self.max_image:
            raise NoSpaceError(
                f"metadata image of {len(image)} bytes does not fit its {self.region_size}-byte "
                "checkpoint region"
            )
        prev = self.current
        region = 0 if prev is None else 1 - prev.region
        seq = 1 if prev is None else prev.seq + 1
        base = region * self.region_size
        await self.volume.write(base + HEADER_SIZE, image)
        await self.volume.flush()
        await self.volume.write(base, encode_header(self.array_uuid, seq, start, image))
        await self.volume.flush()
        self.current = Checkpoint(seq, start, bytes(image), region)
        return self.current
