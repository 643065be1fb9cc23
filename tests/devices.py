"""In-memory block devices for tests, with the power-cut model of ``fusenas.volume.device``.

``MemoryDevice`` keeps two images: ``durable`` (what survived the last flush) and ``data``
(what a reader sees now), plus the list of writes since the last flush. ``crash(rng)`` is the
power cut: the device goes back to ``durable`` and then each unflushed write is kept or lost
at random, in random order, and a kept write may be torn — only some of its 4 KiB sectors make
it. This is exactly what the ``BlockDevice`` contract allows a real disk to do, so every layer
above must survive any outcome of it.
"""

from __future__ import annotations

import random

import trio

from fusenas.units import BLOCK_SIZE, ByteData


class MemoryDevice:
    """A ``BlockDevice`` in memory. Sizes and offsets in bytes."""

    def __init__(self, size: int, name: str = "mem") -> None:
        self._size = size
        self._name = name
        self.data = bytearray(size)
        self.durable = bytearray(size)
        self.unflushed: list[tuple[int, bytes]] = []
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
            raise OSError(f"{self._name}: I/O {offset}+{length} outside {self._size} bytes")

    @property
    def unflushed_writes(self) -> int:
        return len(self.unflushed)

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        await trio.lowlevel.checkpoint()
        return bytes(self.data[offset : offset + length])

    async def write(self, offset: int, data: ByteData) -> None:
        self._check(offset, len(data))
        await trio.lowlevel.checkpoint()
        self.apply_write(offset, bytes(data))

    def read_nowait(self, offset: int, length: int) -> bytes | None:
        """Always None: reads take the async path, where subclasses inject faults."""
        return None

    def apply_write(self, offset: int, raw: bytes) -> None:
        """The effect of ``write``, synchronously (replaying a recorded run)."""
        self.data[offset : offset + len(raw)] = raw
        self.unflushed.append((offset, raw))
        self.writes += 1
        self.bytes_written += len(raw)

    async def flush(self) -> None:
        self._check(0, 0)
        await trio.lowlevel.checkpoint()
        self.apply_flush()

    def apply_flush(self) -> None:
        """The effect of ``flush``, synchronously."""
        for offset, raw in self.unflushed:
            self.durable[offset : offset + len(raw)] = raw
        self.unflushed.clear()
        self.flushes += 1

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()

    def crash_image(self, rng: random.Random, *, keep: float = 0.5, tear: float = 0.3) -> bytes:
        """What the device would hold after a power cut now (see ``crash``); changes nothing."""
        image = bytearray(self.durable)
        pending = list(self.unflushed)
        rng.shuffle(pending)
        for offset, raw in pending:
            if rng.random() >= keep:
                continue
            if rng.random() < tear:
                end = offset + len(raw)
                pos = offset
                while pos < end:
                    nxt = min(end, (pos // BLOCK_SIZE + 1) * BLOCK_SIZE)
                    if rng.random() < 0.5:
                        image[pos:nxt] = raw[pos - offset : nxt - offset]
                    pos = nxt
            else:
                image[offset : offset + len(raw)] = raw
        return bytes(image)

    def crash(self, rng: random.Random, *, keep: float = 0.5, tear: float = 0.3) -> None:
        """Power cut: keep every flushed write and a random, possibly torn, subset of the rest.

        Each unflushed write survives with probability ``keep``; a surviving write is torn with
        probability ``tear``, in which case each of its 4 KiB sectors (aligned to the device)
        survives on its own coin flip. Surviving writes land in random order, so a later write
        to the same sector may be overtaken by an earlier one. The device is usable afterwards.
        """
        self.restore(self.crash_image(rng, keep=keep, tear=tear))

    def copy(self) -> MemoryDevice:
        """An independent device in exactly this state (durable image and unflushed writes)."""
        dev = MemoryDevice(self._size, self._name)
        dev.data = bytearray(self.data)
        dev.durable = bytearray(self.durable)
        dev.unflushed = list(self.unflushed)
        return dev

    def restore(self, image: bytes) -> None:
        """Reboot with ``image`` as the durable contents."""
        self.data = bytearray(image)
        self.durable = bytearray(image)
        self.unflushed.clear()
        self.closed = False
