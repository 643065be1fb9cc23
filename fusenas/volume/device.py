"""The block device interface every store of bytes in fusenas implements.

A ``BlockDevice`` is a fixed-size array of bytes with positional reads and writes and an
explicit ``flush`` (the durability barrier). Members of the array, the journal file, the
fault-injecting wrapper and the power-cut recorder of the tests all implement it, so the layers
above cannot tell them apart.

Durability contract (what a power cut may do): a write that returned is *not* durable until a
later ``flush`` returned. At a power cut, every write that completed before the last completed
flush survives; any subset of the others may survive, each possibly torn at
``BLOCK_SIZE`` granularity. Nothing else is promised, and nothing above relies on more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from fusenas.units import ByteData


class BlockDevice(Protocol):
    """Positional I/O on a fixed-size device. Offsets and lengths are in bytes.

    Cancellation: every method may be cancelled. A cancelled ``write`` or ``flush`` may or may
    not have taken effect (the thread running it is abandoned, not awaited); the caller must
    treat the range as unknown, exactly as after a power cut.
    """

    @property
    def size(self) -> int:
        """Usable size in bytes (fixed while open)."""
        ...

    @property
    def name(self) -> str:
        """A short human name for messages (a path)."""
        ...

    async def read(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes; bytes never written read as zeros. OSError on failure."""
        ...

    def read_nowait(self, offset: int, length: int) -> bytes | None:
        """The bytes at once if they can be had without waiting (from the page cache), else
        None. Never raises for I/O errors (``read`` reports them); devices without such a
        path always return None. Runs on the event loop, so it must never block."""
        ...

    async def write(self, offset: int, data: ByteData) -> None:
        """Write all of ``data`` at ``offset``. Not durable until ``flush``. OSError on failure."""
        ...

    async def flush(self) -> None:
        """Make every completed write durable (fdatasync). OSError on failure."""
        ...

    async def aclose(self) -> None:
        """Release the device. Does not flush."""
        ...


class DeviceProvider(Protocol):
    """Where devices come from: real files and block devices in production
    (``fusenas.volume.member.FILES``), memory images in the power-cut tests."""

    async def open(self, path: Path, *, readonly: bool = False) -> BlockDevice:
        """Open an existing device; ``VolumeError`` with one line if it cannot be used."""
        ...

    async def create(self, path: Path, size: int, *, allocate: bool = False) -> None:
        """Create a new device of ``size`` bytes reading as zeros; ``VolumeError`` if it
        exists. Sparse unless ``allocate``: then every block is written (zeros) and flushed
        first, so that later writes overwrite and an ``fdatasync`` after them has no
        allocation metadata to commit (the journal: a commit per fsync)."""
        ...
