"""An in-memory BlockDevice with the power-cut model of ``fusenas.volume.device``.

``MemoryDevice(size)`` keeps two images: ``durable`` (what survived the last ``flush``) and the
current contents that ``read`` sees. Every ``write`` since the last ``flush`` is remembered in
issue order. ``crash(rng)`` models a power cut and then a reboot:

* every write that completed before the last completed ``flush`` survives (it is in
  ``durable``);
* each unflushed write, independently, survives whole, is lost, or is torn: cut at absolute
  ``BLOCK_SIZE`` (4096-byte) boundaries of the device, each piece surviving or not at random;
* surviving pieces are applied in issue order (a later write wins where two overlap), which is
  one of the outcomes a real device may produce; nothing else is modelled.

After ``crash`` the device is usable again and reads the surviving image. Counters
(``writes``, ``flushes``, ``bytes_written``) let tests assert on I/O patterns. Every method
yields to the scheduler once so that concurrent callers really interleave.
"""

from __future__ import annotations

import random

import trio

from fusenas.units import BLOCK_SIZE, ByteData


class MemoryDevice:
    """A fixed-size in-memory BlockDevice. Offsets and lengths in bytes."""

    def __init__(self, size: int, name: str = "memory") -> None:
        self._size = size
        self._name = name
        self._current = bytearray(size)
        self.durable = bytearray(size)
        self._unflushed: list[tuple[int, bytes]] = []
        self.writes = 0
        self.flushes = 0
        self.bytes_written = 0
        self.closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._name

    def _check(self, offset: int, length: int) -> None:
        if self.closed:
            raise OSError(f"{self._name}: device closed")
        if offset < 0 or length < 0 or offset + length > self._size:
            raise OSError(f"{self._name}: I/O [{offset}, {offset + length}) out of range")

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        await trio.lowlevel.checkpoint()
        return bytes(self._current[offset : offset + length])

    async def write(self, offset: int, data: ByteData) -> None:
        self._check(offset, len(data))
        await trio.lowlevel.checkpoint()
        data = bytes(data)
        self._current[offset : offset + len(data)] = data
        self._unflushed.append((offset, data))
        self.writes += 1
        self.bytes_written += len(data)

    async def flush(self) -> None:
        self._check(0, 0)
        await trio.lowlevel.checkpoint()
        for offset, data in self._unflushed:
            self.durable[offset : offset + len(data)] = data
        self._unflushed.clear()
        self.flushes += 1

    async def aclose(self) -> None:
        self.closed = True

    @property
    def unflushed_writes(self) -> int:
        return len(self._unflushed)

    def crash(self, rng: random.Random) -> None:
        """Power cut: keep flushed writes, a random (possibly torn) subset of the others."""
        image = bytearray(self.durable)
        for offset, data in self._unflushed:
            fate = rng.randrange(3)
            if fate == 0:
                continue
            if fate == 1:
                image[offset : offset + len(data)] = data
                continue
            pos = offset
            end = offset + len(data)
            while pos < end:
                cut = min(end, (pos // BLOCK_SIZE + 1) * BLOCK_SIZE)
                if rng.random() < 0.5:
                    image[pos:cut] = data[pos - offset : cut - offset]
                pos = cut
        self.durable = image
        self._current = bytearray(image)
        self._unflushed.clear()
        self.closed = False
