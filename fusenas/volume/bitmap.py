"""The write-intent bitmap (md's model): which regions of the members may differ between them.

Design note
===========

Units: a *region* is ``region_size`` bytes of every member's data area (a power-of-two
multiple of the chunk, so a region is a whole number of stripe rows: rows
``[r * region_size // chunk, (r + 1) * region_size // chunk)``). Region ``r`` covers member
data offsets ``[r * region_size, (r + 1) * region_size)`` on every member alike.

On disk
    Member bytes ``[BITMAP_OFFSET, DATA_OFFSET)`` hold two copies (slots A and B, each half the
    area). A copy is a 4 KiB header (magic, version, sequence number, array uuid, events at
    write, events at the last clear, region size, region count, the member uuid *tracked* for
    every slot) followed by the bits, padded to 4 KiB, with one crc32c over all of it. Updates
    alternate between the two slots (sequence ``n`` goes to slot ``n % 2``), and a copy is
    written and flushed on every writable member before the write it covers is issued. A torn
    or lost update therefore damages only the slot being written; the other copy is the
    previous state, which lacks only bits whose data writes were never issued (a set) or has
    more bits than needed (a clear). The reader takes the valid copy with the highest sequence
    number among the active members.

Invariant (what makes a quick resync correct)
    For every slot ``i`` whose tracked uuid is ``U``: member ``U`` holds the right bytes of
    every row outside the regions whose bit is set. Kept by:

    * **set before write**: ``Array.issue`` calls :meth:`begin` with its member writes; bits of
      regions not yet durable are set in memory, written to every writable member and flushed
      before the member writes go out. Steady writes to regions already durable cost nothing;
    * **lazy clear**: at a checkpoint (:meth:`clear_candidates` before the checkpoint's member
      flush, :meth:`clear` after it) a region is cleared only if every member is active, the
      region had no write since the previous checkpoint and none is in flight, and the flush
      that made its writes durable on every member completed in between. Nothing is cleared
      while any member is faulty, missing or rebuilding;
    * **tracked uuids**: a slot's entry is set when the bitmap is created with that member
      active, or when its rebuild completes; it is zeroed when a replacement is attached.

Returning member
    At open, a member that the newest superblock records as failed or missing but whose device
    is back (same array uuid, same slot index) is *returning*. It can be resynced by the dirty
    regions alone iff the survivors hold a valid bitmap, the slot's tracked uuid equals the
    member uuid in the returning member's own superblock, and that superblock's events are
    not older than the bitmap's last clear (no clear can have happened while it was away).
    Otherwise it is rebuilt in full. See ``fusenas.engine.rebuild.readd_member``.

Cancellation: a cancelled :meth:`begin` leaves the bits set in memory and possibly on some
members; the member writes were not issued. Harmless (extra bits only).
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import crc32c
import trio

from fusenas.volume.array import Array
from fusenas.volume.superblock import BITMAP_OFFSET, DATA_OFFSET, MAX_MEMBERS
from fusenas.volume.writes import MemberWrite

log = logging.getLogger(__name__)

MAGIC = b"FNBITMAP"
VERSION = 1
HEADER_SIZE = 4096
SLOT_SIZE = (DATA_OFFSET - BITMAP_OFFSET) // 2
MAX_REGIONS = (SLOT_SIZE - HEADER_SIZE) * 8
#: Default region size (md's default bitmap chunk is 64 MiB too).
DEFAULT_REGION = 64 << 20

# magic, version, seq, array uuid, events, events_cleared, region size, regions, crc
_HEAD = struct.Struct("<8sIQ16sQQQQ")
_ZERO_UUID = uuid.UUID(int=0)


def region_size_for(member_data_size: int, chunk: int, want: int = DEFAULT_REGION) -> int:
    """The region size: ``want`` rounded up to a power-of-two multiple of ``chunk``, grown
    until the bits fit a slot."""
    size = chunk
    while size < want:
        size *= 2
    while -(-member_data_size // size) > MAX_REGIONS:
        size *= 2
    return size


class BitmapError(Exception):
    pass


@dataclass
class BitmapImage:
    """One decoded copy."""

    seq: int
    array_uuid: uuid.UUID
    events: int
    events_cleared: int
    region_size: int
    regions: int
    tracked: list[uuid.UUID | None]
    bits: set[int]

    def encode(self) -> bytes:
        nbytes = -(-self.regions // 8)
        body_len = -(-(HEADER_SIZE + nbytes) // 4096) * 4096
        raw = bytearray(body_len)
        _HEAD.pack_into(
            raw,
            0,
            MAGIC,
            VERSION,
            self.seq,
            self.array_uuid.bytes,
            self.events,
            self.events_cleared,
            self.region_size,
            self.regions,
        )
        off = _HEAD.size
        for i in range(MAX_MEMBERS):
            u = self.tracked[i] if i < len(self.tracked) else None
            raw[off + 16 * i : off + 16 * i + 16] = (u or _ZERO_UUID).bytes
        for r in self.bits:
            raw[HEADER_SIZE + r // 8] |= 1 << (r % 8)
        struct.pack_into("<I", raw, HEADER_SIZE - 4, 0)
        crc = crc32c.crc32c(bytes(raw))
        struct.pack_into("<I", raw, HEADER_SIZE - 4, crc)
        return bytes(raw)

    @classmethod
    def decode(cls, raw: bytes, members: int) -> BitmapImage:
        if len(raw) < HEADER_SIZE:
            raise BitmapError("truncated")
        magic, version, seq, au, events, cleared, rsize, regions = _HEAD.unpack_from(raw, 0)
        if magic != MAGIC:
            raise BitmapError("no bitmap")
        if version != VERSION:
            raise BitmapError(f"unsupported bitmap version {version}")
        if not 0 < regions <= MAX_REGIONS or rsize <= 0:
            raise BitmapError("bad geometry")
        nbytes = -(-regions // 8)
        body_len = -(-(HEADER_SIZE + nbytes) // 4096) * 4096
        if len(raw) < body_len:
            raise BitmapError("truncated")
        body = bytearray(raw[:body_len])
        (stored,) = struct.unpack_from("<I", body, HEADER_SIZE - 4)
        struct.pack_into("<I", body, HEADER_SIZE - 4, 0)
        if crc32c.crc32c(bytes(body)) != stored:
            raise BitmapError("checksum mismatch")
        off = _HEAD.size
        tracked: list[uuid.UUID | None] = []
        for i in range(members):
            u = uuid.UUID(bytes=bytes(body[off + 16 * i : off + 16 * i + 16]))
            tracked.append(None if u == _ZERO_UUID else u)
        bits = {
            byte * 8 + b
            for byte in range(nbytes)
            if body[HEADER_SIZE + byte]
            for b in range(8)
            if body[HEADER_SIZE + byte] >> b & 1 and byte * 8 + b < regions
        }
        return cls(seq, uuid.UUID(bytes=au), events, cleared, rsize, regions, tracked, bits)


def _slot_offset(seq: int) -> int:
    return BITMAP_OFFSET + (seq % 2) * SLOT_SIZE


async def read_bitmap(array: Array, members: Iterable[int]) -> tuple[BitmapImage | None, str]:
    """The valid copy with the highest sequence number on ``members``: ``(image, "")`` or
    ``(None, why)``. Read errors count as a copy that does not decode."""
    best: BitmapImage | None = None
    reasons: list[str] = []
    n = array.geometry.members
    for m in members:
        dev = array.devices[m]
        if dev is None:
            continue
        for slot in range(2):
            off = BITMAP_OFFSET + slot * SLOT_SIZE
            try:
                raw = await dev.read(off, SLOT_SIZE)
                img = BitmapImage.decode(raw, n)
            except (OSError, BitmapError) as exc:
                reasons.append(f"member {m} slot {'AB'[slot]}: {exc}")
                continue
            if best is None or img.seq > best.seq:
                best = img
    if best is None:
        return None, "; ".join(reasons[:2]) or "no member to read it from"
    return best, ""


@dataclass
class WriteIntentBitmap:
    """The live bitmap of an open array (see the module docstring)."""

    array: Array
    image: BitmapImage
    events: int = 0  # the superblock event counter, kept current by the volume
    #: Bits set in memory (durable, or being written).
    bits: set[int] = field(default_factory=set)
    #: Bits known durable on every writable member.
    durable: set[int] = field(default_factory=set)
    touched: set[int] = field(default_factory=set)  # regions written since the last clear pass
    inflight: dict[int, int] = field(default_factory=dict)
    writes: int = 0  # bitmap updates written (for tests and metrics)
    _lock: trio.Lock = field(default_factory=trio.Lock)

    def __post_init__(self) -> None:
        self.bits = set(self.image.bits)
        self.durable = set(self.image.bits)

    @property
    def region_size(self) -> int:
        return self.image.region_size

    @property
    def regions(self) -> int:
        return self.image.regions

    @classmethod
    def fresh(
        cls,
        array: Array,
        array_uuid: uuid.UUID,
        tracked: Sequence[uuid.UUID | None],
        events: int,
        region_size: int,
    ) -> WriteIntentBitmap:
        g = array.geometry
        regions = max(1, -(-g.member_data_size // region_size))
        img = BitmapImage(0, array_uuid, events, events, region_size, regions, list(tracked), set())
        return cls(array, img, events)

    def stripes(self, region: int) -> range:
        g = self.array.geometry
        per = self.region_size // g.chunk
        return range(region * per, min(g.stripes, (region + 1) * per))

    def _regions_of(self, writes: Sequence[MemberWrite]) -> set[int]:
        base = self.array.data_offset
        rs = self.region_size
        out: set[int] = set()
        for w in writes:
            lo = w.offset - base
            if lo < 0:
                continue
            out.update(range(lo // rs, (lo + len(w.data) - 1) // rs + 1))
        return out

    async def begin(self, writes: Sequence[MemberWrite]) -> set[int]:
        """Before ``writes`` are issued: their regions' bits are durable on every writable
        member when this returns. Returns the regions, to hand to :meth:`end`."""
        regions = self._regions_of(writes)
        for r in regions:
            self.inflight[r] = self.inflight.get(r, 0) + 1
        self.touched |= regions
        try:
            if not regions <= self.durable:
                self.bits |= regions
                async with self._lock:
                    if not regions <= self.durable:
                        await self._write()
        except BaseException:
            self.end(regions)
            raise
        return regions

    def end(self, regions: set[int]) -> None:
        for r in regions:
            left = self.inflight.get(r, 0) - 1
            if left > 0:
                self.inflight[r] = left
            else:
                self.inflight.pop(r, None)

    async def _write(self) -> None:
        """Write the in-memory state (next sequence number, other slot) to every writable
        member and flush. Caller holds the lock. A member that fails is failed in the array."""
        array = self.array
        snapshot = set(self.bits)
        img = self.image
        img.seq += 1
        img.bits = snapshot
        img.events = self.events
        raw = img.encode()
        off = _slot_offset(img.seq)

        async def one(i: int) -> None:
            dev = array.devices[i]
            assert dev is not None
            try:
                with trio.fail_after(array.io_timeout):
                    await dev.write(off, raw)
                    await dev.flush()
            except (OSError, trio.TooSlowError) as exc:
                why = "I/O deadline exceeded" if isinstance(exc, trio.TooSlowError) else exc
                array.fail_member(i, f"bitmap update failed: {why}")

        async with trio.open_nursery() as nursery:
            for i in range(array.geometry.members):
                if array.devices[i] is not None and array.is_writable(i):
                    nursery.start_soon(one, i)
        self.durable = snapshot
        self.writes += 1

    async def write(self) -> None:
        """Write the current state now (tracked uuids changed, or a fresh bitmap)."""
        async with self._lock:
            await self._write()

    def set_tracked(self, member: int, member_uuid: uuid.UUID | None) -> None:
        self.image.tracked[member] = member_uuid

    # -- lazy clearing ------------------------------------------------------------------

    def clear_candidates(self) -> set[int]:
        """Call just before a member flush: the regions that may be cleared after it (set,
        not written since the last pass, nothing in flight). Starts a new pass."""
        if self.array.degraded:
            return set()
        cand = {r for r in self.bits - self.touched if r not in self.inflight}
        self.touched = set()
        return cand

    async def clear(self, candidates: set[int]) -> int:
        """After the flush: clear the candidates still untouched; returns how many."""
        cand = {r for r in candidates - self.touched if r not in self.inflight}
        cand &= self.bits
        if not cand or self.array.degraded:
            return 0
        # Before any await: a new write to these regions takes the slow path and sets them
        # again, after this update (the lock orders the two).
        self.bits -= cand
        self.durable -= cand
        async with self._lock:
            self.image.events_cleared = self.events
            await self._write()
        return len(cand)

    def dirty_stripe_ranges(self) -> list[tuple[int, int]]:
        """Stripe ranges ``[lo, hi)`` of the regions whose bit is set, merged, ascending."""
        out: list[tuple[int, int]] = []
        for r in sorted(self.bits):
            s = self.stripes(r)
            if not len(s):
                continue
            if out and out[-1][1] == s.start:
                out[-1] = (out[-1][0], s.stop)
            else:
                out.append((s.start, s.stop))
        return out
