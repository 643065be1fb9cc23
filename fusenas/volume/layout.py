"""Pure RAID geometry: where every logical byte of the volume lives on the members.

No I/O, no state: a :class:`Geometry` is a frozen value and every method is a function of it.

Units: **bytes** throughout. Offsets returned for members (``Piece.member_offset``) are relative
to the start of the member's *data area*; the array adds the data-area start (1 MiB, see
``docs/architecture.md``). The layout knows nothing of superblocks or bitmaps.

Shape. Every member's data area is cut into ``stripes`` chunks of ``chunk`` bytes. Stripe
(row) ``s`` is chunk ``s`` of *every* member, so it occupies member bytes
``[s*chunk, (s+1)*chunk)`` on each member. Of the ``members`` chunks of a stripe,
``data_per_stripe`` carry distinct logical data (data indexes ``0..data_per_stripe-1``, in
logical order); the rest are parity (RAID5/6) or mirror copies (RAID1/10).

Levels (md's defaults, so a volume reads the way an md array of the same geometry would):

* RAID0 — data index ``i`` on member ``i``.
* RAID1 — N-way mirror: one data chunk per stripe, a copy on every member.
* RAID10 — md ``near_copies=2`` with an even member count: data index ``i`` on members
  ``2i`` and ``2i+1``.
* RAID5 — left-symmetric (md ``ALGORITHM_LEFT_SYMMETRIC``): ``P = n-1 - s mod n``, data index
  ``i`` on ``(P+1+i) mod n``.
* RAID6 — md's raid6 left-symmetric (algorithm 2): ``P = n-1 - s mod n``, ``Q = (P+1) mod n``,
  data index ``i`` on ``(P+2+i) mod n``.

Invariants (checked exhaustively in ``tests/volume/test_layout.py``):

* every member chunk of every stripe has exactly one role — a copy of exactly one data chunk,
  or one parity block — so logical bytes never collide on a member and nothing is wasted;
* parity members of a stripe hold no data of that stripe, and P (and Q) visit every member
  exactly once in any ``n`` consecutive stripes;
* ``member_data_size`` is a multiple of ``chunk`` and at least one chunk.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from fractions import Fraction

from fusenas.errors import VolumeError
from fusenas.units import LogicalOffset, MemberIndex, StripeNumber

MIN_CHUNK = 4096


class Level(enum.IntEnum):
    RAID0 = 0
    RAID1 = 1
    RAID5 = 5
    RAID6 = 6
    RAID10 = 10


#: Fewest members each level accepts (RAID10 must also be even).
MIN_MEMBERS: dict[Level, int] = {
    Level.RAID0: 1,
    Level.RAID1: 2,
    Level.RAID5: 3,
    Level.RAID6: 4,
    Level.RAID10: 4,
}


@dataclass(frozen=True)
class Piece:
    """A run of logical bytes that stays inside one data chunk.

    ``copies`` are the members holding those bytes (first = the one to read by default; more
    than one only for RAID1/10). ``member_offset`` is the same on every copy and is relative to
    the member's data area.
    """

    logical_offset: LogicalOffset
    length: int
    stripe: StripeNumber
    data_index: int
    chunk_offset: int
    copies: tuple[MemberIndex, ...]
    member_offset: int


@dataclass(frozen=True)
class Geometry:
    """The shape of one array. Build it with :meth:`make`, which validates and rounds."""

    level: Level
    members: int
    chunk: int
    member_data_size: int

    def __post_init__(self) -> None:
        # Direct construction gets the same checks as make(), minus the rounding, so an
        # invalid Geometry cannot exist at all.
        _validate(self.level, self.members, self.chunk, self.member_data_size)
        if self.member_data_size % self.chunk:
            raise VolumeError(
                f"member data size {self.member_data_size} is not a multiple of the chunk "
                f"({self.chunk}); use Geometry.make to round it down"
            )

    @classmethod
    def make(cls, level: Level | int, members: int, chunk: int, member_data_size: int) -> Geometry:
        """Validate, round ``member_data_size`` down to whole chunks, and build.

        Raises :class:`VolumeError` with a one-line message for a bad level, member count or
        chunk, or for members too small to hold one chunk.
        """
        try:
            lvl = Level(level)
        except ValueError:
            raise VolumeError(f"unknown RAID level {level!r} (use one of 0, 1, 5, 6, 10)") from None
        _validate(lvl, members, chunk, member_data_size)
        return cls(lvl, members, chunk, member_data_size - member_data_size % chunk)

    # -- sizes -------------------------------------------------------------------------------

    @property
    def data_per_stripe(self) -> int:
        """Distinct data chunks in one stripe."""
        n = self.members
        match self.level:
            case Level.RAID0:
                return n
            case Level.RAID1:
                return 1
            case Level.RAID5:
                return n - 1
            case Level.RAID6:
                return n - 2
            case Level.RAID10:
                return n // 2

    @property
    def stripe_data_size(self) -> int:
        """Logical bytes in one stripe."""
        return self.data_per_stripe * self.chunk

    @property
    def stripes(self) -> int:
        """Number of stripes; each uses one chunk on every member."""
        return self.member_data_size // self.chunk

    @property
    def logical_size(self) -> int:
        """Bytes the volume presents."""
        return self.stripes * self.stripe_data_size

    @property
    def parity_count(self) -> int:
        """Parity blocks per stripe: 1 for RAID5, 2 for RAID6, else 0."""
        return {Level.RAID5: 1, Level.RAID6: 2}.get(self.level, 0)

    @property
    def tolerated_failures(self) -> int:
        """Member failures survived whichever members fail (RAID10: 1 guaranteed; more only
        if the failures fall in different mirror pairs)."""
        match self.level:
            case Level.RAID0:
                return 0
            case Level.RAID1:
                return self.members - 1
            case Level.RAID5 | Level.RAID10:
                return 1
            case Level.RAID6:
                return 2

    # -- placement ---------------------------------------------------------------------------

    def parity_members(self, stripe: int) -> tuple[MemberIndex, ...]:
        """``()`` for RAID0/1/10, ``(P,)`` for RAID5, ``(P, Q)`` for RAID6."""
        self._check_stripe(stripe)
        n = self.members
        if self.level not in (Level.RAID5, Level.RAID6):
            return ()
        p = n - 1 - stripe % n
        if self.level is Level.RAID5:
            return (MemberIndex(p),)
        return (MemberIndex(p), MemberIndex((p + 1) % n))

    def data_copies(self, stripe: int, data_index: int) -> tuple[MemberIndex, ...]:
        """Members holding data chunk ``data_index`` of ``stripe``, preferred copy first."""
        self._check_stripe(stripe)
        if not 0 <= data_index < self.data_per_stripe:
            raise ValueError(
                f"data index {data_index} outside 0..{self.data_per_stripe - 1} for {self}"
            )
        n = self.members
        match self.level:
            case Level.RAID0:
                return (MemberIndex(data_index),)
            case Level.RAID1:
                return tuple(MemberIndex(m) for m in range(n))
            case Level.RAID10:
                return (MemberIndex(2 * data_index), MemberIndex(2 * data_index + 1))
            case Level.RAID5:
                p = n - 1 - stripe % n
                return (MemberIndex((p + 1 + data_index) % n),)
            case Level.RAID6:
                p = n - 1 - stripe % n
                return (MemberIndex((p + 2 + data_index) % n),)

    def locate(self, offset: int) -> tuple[StripeNumber, int, int]:
        """``(stripe, data_index, offset_in_chunk)`` of logical byte ``offset``."""
        if not 0 <= offset < self.logical_size:
            raise ValueError(f"logical offset {offset} outside [0, {self.logical_size})")
        stripe, within = divmod(offset, self.stripe_data_size)
        data_index, in_chunk = divmod(within, self.chunk)
        return StripeNumber(stripe), data_index, in_chunk

    def map_range(self, offset: int, length: int) -> list[Piece]:
        """Split ``[offset, offset+length)`` into pieces that never cross a chunk boundary,
        in logical order. An empty range gives ``[]``."""
        if length < 0 or offset < 0 or offset + length > self.logical_size:
            raise ValueError(
                f"range [{offset}, {offset + length}) outside [0, {self.logical_size})"
            )
        pieces: list[Piece] = []
        pos, end = offset, offset + length
        while pos < end:
            stripe, data_index, in_chunk = self.locate(pos)
            n = min(self.chunk - in_chunk, end - pos)
            pieces.append(
                Piece(
                    logical_offset=LogicalOffset(pos),
                    length=n,
                    stripe=stripe,
                    data_index=data_index,
                    chunk_offset=in_chunk,
                    copies=self.data_copies(stripe, data_index),
                    member_offset=stripe * self.chunk + in_chunk,
                )
            )
            pos += n
        return pieces

    def stripe_range(self, stripe: int) -> tuple[LogicalOffset, LogicalOffset]:
        """Logical ``(start, end)`` of ``stripe``, end exclusive."""
        self._check_stripe(stripe)
        start = stripe * self.stripe_data_size
        return LogicalOffset(start), LogicalOffset(start + self.stripe_data_size)

    def __str__(self) -> str:
        return (
            f"raid{int(self.level)} over {self.members} members, chunk {format_size(self.chunk)},"
            f" {format_size(self.member_data_size)} per member"
        )

    def _check_stripe(self, stripe: int) -> None:
        if not 0 <= stripe < self.stripes:
            raise ValueError(f"stripe {stripe} outside 0..{self.stripes - 1}")


def _validate(level: Level, members: int, chunk: int, member_data_size: int) -> None:
    if not isinstance(level, Level):
        raise VolumeError(f"unknown RAID level {level!r} (use one of 0, 1, 5, 6, 10)")
    name = f"raid{int(level)}"
    least = MIN_MEMBERS[level]
    if members < least:
        raise VolumeError(f"{name} needs at least {least} members, got {members}")
    if level is Level.RAID10 and members % 2:
        raise VolumeError(f"raid10 needs an even number of members, got {members}")
    if chunk < MIN_CHUNK or chunk & (chunk - 1):
        raise VolumeError(f"chunk must be a power of two of at least 4K, got {chunk}")
    if member_data_size < chunk:
        raise VolumeError(
            f"members too small: {member_data_size} bytes of data area per member, "
            f"less than one chunk ({format_size(chunk)})"
        )


# -- text forms ------------------------------------------------------------------------------

_LEVEL_RE = re.compile(r"^\s*(?:raid)?[-_ ]?(\d+)\s*$", re.IGNORECASE)


def parse_level(text: str) -> Level:
    """``"raid5"``, ``"RAID5"``, ``"raid-5"`` or ``"5"`` → ``Level.RAID5``; ValueError if not a
    level fusenas supports."""
    m = _LEVEL_RE.match(text)
    if m is None:
        raise ValueError(f"not a RAID level: {text!r} (use raid0, raid1, raid5, raid6, raid10)")
    try:
        return Level(int(m.group(1)))
    except ValueError:
        raise ValueError(
            f"unsupported RAID level: {text!r} (use raid0, raid1, raid5, raid6, raid10)"
        ) from None


_UNITS = "KMGTP"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([KMGTP]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A size in bytes from ``"4096"``, ``"64K"``, ``"8G"``, ``"1.5G"``, ``"64KiB"``, ``"1MB"``.

    Units are binary (K = 1024) whatever the spelling. The result must be a whole number of
    bytes (``"1.5"`` is an error, ``"1.5K"`` is 1536). Raises ValueError otherwise.
    """
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 64K, 1.5G)")
    number, unit = m.group(1), m.group(2).upper()
    scale = 1024 ** (_UNITS.index(unit) + 1) if unit else 1
    # Fraction, not float: "1.1G" must not pick up binary rounding error.
    value = Fraction(number) * scale
    if value.denominator != 1:
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    """``65536`` → ``"64K"``. Exact (``parse_size`` round-trips) when ``n`` is a whole number of
    its largest unit or below 1 KiB; otherwise two decimals, for display only."""
    if n < 0:
        raise ValueError(f"negative size: {n}")
    if n < 1024:
        return f"{n}B"
    for power, unit in reversed(list(enumerate(_UNITS, start=1))):
        scale = 1024**power
        if n >= scale:
            if n % scale == 0:
                return f"{n // scale}{unit}"
            return f"{n / scale:.2f}{unit}"
    raise AssertionError("unreachable")
