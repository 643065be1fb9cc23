"""Fault injection: a ``BlockDevice`` wrapper that fails, corrupts, slows down or hangs on demand.

Used by the tests (wrap a ``MemoryDevice`` or a ``FileDevice``) and by the ``-o inject=...``
debug mount option (``FaultyProvider`` wraps the production provider and arms the faults of
the members it is told about).

Faults (a ``FaultyDevice`` holds any combination; all are counted in I/O operations, reads and
writes alike, flushes excluded):

``fail``            every I/O (and flush) raises ``OSError(EIO)`` from now on
``fail_after N``    the first ``N`` I/Os succeed, then every one fails (a disk that dies)
``corrupt_read P``  each block read comes back with one bit flipped, with probability ``P``
                    (the member keeps good bytes: a flaky cable)
``corrupt_write P`` each block written lands with one bit flipped, with probability ``P``
                    (silent rot on the platter)
``slow S``          every I/O sleeps ``S`` seconds first
``hang_after N``    after ``N`` I/Os, every I/O blocks forever (only cancellation ends it:
                    the array's per-I/O deadline must fail the member)

The spec syntax of the mount option is ``member:INDEX:KIND[:ARG]``; several specs are joined
with ``+`` (``-o inject=member:1:fail_after:100+member:2:slow:0.01``).

Units: offsets and lengths in bytes; bit flips are chosen per ``BLOCK_SIZE`` block.
Cancellation: every method may be cancelled like the wrapped device's; a hang is a plain
``trio.sleep_forever``.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass
from pathlib import Path

import trio

from fusenas.units import BLOCK_SIZE, ByteData
from fusenas.volume.device import BlockDevice, DeviceProvider

__all__ = ["KINDS", "FaultSpec", "FaultyDevice", "FaultyProvider", "flip_bit", "parse_inject"]

KINDS = ("fail", "fail_after", "corrupt_read", "corrupt_write", "slow", "hang_after")


@dataclass(frozen=True)
class FaultSpec:
    """One fault for one member index (``arg``: a count, a probability or seconds)."""

    member: int
    kind: str
    arg: float = 0.0


def parse_inject(text: str) -> list[FaultSpec]:
    """``member:1:fail_after:100+member:2:slow:0.01`` → specs; ``ValueError`` on bad input."""
    specs: list[FaultSpec] = []
    for part in filter(None, (p.strip() for p in text.split("+"))):
        fields = part.split(":")
        if len(fields) not in (3, 4) or fields[0] != "member":
            raise ValueError(f"bad fault spec {part!r} (member:INDEX:KIND[:ARG])")
        try:
            member = int(fields[1])
        except ValueError:
            raise ValueError(f"bad member index in {part!r}") from None
        kind = fields[2]
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r} (one of {', '.join(KINDS)})")
        arg = 0.0
        if kind != "fail":
            if len(fields) != 4:
                raise ValueError(f"fault {kind!r} needs an argument")
            try:
                arg = float(fields[3])
            except ValueError:
                raise ValueError(f"bad argument in {part!r}") from None
            if arg < 0:
                raise ValueError(f"negative argument in {part!r}")
        specs.append(FaultSpec(member, kind, arg))
    return specs


def flip_bit(data: ByteData, rng: random.Random) -> bytes:
    """``data`` with one random bit of one random byte flipped."""
    out = bytearray(data)
    if out:
        pos = rng.randrange(len(out))
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


class FaultyDevice:
    """A ``BlockDevice`` forwarding to ``inner`` with the faults set on it (see module doc).

    Faults can be changed at any time by assigning the attributes; ``ios`` counts the reads
    and writes seen so far, ``corrupted`` the blocks that were bit-flipped.
    """

    def __init__(self, inner: BlockDevice, *, seed: int = 0) -> None:
        self.inner = inner
        self.rng = random.Random(seed)
        self.failing = False
        self.fail_after: int | None = None
        self.hang_after: int | None = None
        self.corrupt_read = 0.0
        self.corrupt_write = 0.0
        self.delay = 0.0
        self.ios = 0
        self.corrupted = 0

    def arm(self, spec: FaultSpec) -> None:
        """Set the fault described by ``spec`` (its ``member`` is not looked at)."""
        if spec.kind == "fail":
            self.failing = True
        elif spec.kind == "fail_after":
            self.fail_after = int(spec.arg)
        elif spec.kind == "hang_after":
            self.hang_after = int(spec.arg)
        elif spec.kind == "corrupt_read":
            self.corrupt_read = spec.arg
        elif spec.kind == "corrupt_write":
            self.corrupt_write = spec.arg
        elif spec.kind == "slow":
            self.delay = spec.arg
        else:  # pragma: no cover - parse_inject refuses it
            raise ValueError(spec.kind)

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def name(self) -> str:
        return self.inner.name

    async def _gate(self) -> None:
        """Count one I/O and apply fail / hang / slow, in that order."""
        self.ios += 1
        if self.failing or (self.fail_after is not None and self.ios > self.fail_after):
            self.failing = True
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EIO, f"{self.name}: injected I/O error")
        if self.hang_after is not None and self.ios > self.hang_after:
            await trio.sleep_forever()
        if self.delay:
            await trio.sleep(self.delay)

    def _corrupt(self, data: ByteData, offset: int, p: float) -> bytes:
        out = bytes(data)
        if p <= 0:
            return out
        buf = bytearray(out)
        start = offset - offset % BLOCK_SIZE
        for blk in range(start, offset + len(buf), BLOCK_SIZE):
            lo = max(blk, offset) - offset
            hi = min(blk + BLOCK_SIZE, offset + len(buf)) - offset
            if hi > lo and self.rng.random() < p:
                buf[lo:hi] = flip_bit(buf[lo:hi], self.rng)
                self.corrupted += 1
        return bytes(buf)

    async def read(self, offset: int, length: int) -> bytes:
        await self._gate()
        data = await self.inner.read(offset, length)
        return self._corrupt(data, offset, self.corrupt_read)

    def read_nowait(self, offset: int, length: int) -> bytes | None:
        """Always None: every read goes through the fault gate."""
        return None

    async def write(self, offset: int, data: ByteData) -> None:
        await self._gate()
        await self.inner.write(offset, self._corrupt(data, offset, self.corrupt_write))

    async def flush(self) -> None:
        if self.failing:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EIO, f"{self.name}: injected I/O error")
        if self.hang_after is not None and self.ios > self.hang_after:
            await trio.sleep_forever()
        await self.inner.flush()

    async def aclose(self) -> None:
        await self.inner.aclose()


class FaultyProvider:
    """A ``DeviceProvider`` that wraps every device it opens in a ``FaultyDevice``.

    ``faults`` maps a path to the specs armed when that path is opened; ``opened`` keeps the
    wrappers by path so a test can change their faults while the volume runs.
    """

    def __init__(self, inner: DeviceProvider, faults: dict[Path, list[FaultSpec]] | None = None):
        self.inner = inner
        self.faults = dict(faults or {})
        self.opened: dict[Path, FaultyDevice] = {}

    async def open(self, path: Path, *, readonly: bool = False) -> FaultyDevice:
        dev = FaultyDevice(await self.inner.open(path, readonly=readonly))
        for spec in self.faults.get(path, []):
            dev.arm(spec)
        self.opened[path] = dev
        return dev

    async def create(self, path: Path, size: int, *, allocate: bool = False) -> None:
        await self.inner.create(path, size, allocate=allocate)
