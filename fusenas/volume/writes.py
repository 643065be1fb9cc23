"""Member writes: the unit of I/O the array issues and the WAL's ``STRIPE`` records carry.

Pure: a value type, no I/O, so the stripe planner (``fusenas.stripe.plan``) and the record
codec can build them without importing the array.

Units: ``offset`` is an *absolute* member byte offset (superblock area included; the data area
starts at ``Array.data_offset``), so a journaled write replays to the same place whatever the
layout code does.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusenas.units import ByteData


@dataclass(frozen=True)
class MemberWrite:
    """One write to one member: absolute member byte offset and the bytes.

    ``data`` may be a view of someone else's buffer (plans never copy the caller's bytes): it
    must not change until the write has been issued.
    """

    member: int
    offset: int
    data: ByteData
