"""FileDevice write batching (the member side of a stripe flush): concurrent writes share one
worker thread, contiguous ones one pwritev, each keeps its own outcome; a write cancelled
while queued never starts; ``write_many(..., flush=True)`` (the WAL commit path) and the
WAL over a real FileDevice."""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest
import trio

from fusenas.units import BLOCK_SIZE
from fusenas.volume.member import FileDevice, _write_batch, _WriteRequest
from fusenas.wal.format import RecordType
from fusenas.wal.log import WriteAheadLog

SIZE = 4 << 20


async def _device(tmp_path: Path, name: str = "m0") -> FileDevice:
    path = tmp_path / name
    await FileDevice.create_file(path, SIZE)
    return await FileDevice.open(path)


async def test_concurrent_writes_all_land(tmp_path: Path) -> None:
    dev = await _device(tmp_path)
    rng = random.Random(5)
    model = bytearray(SIZE)
    # Adjacent runs (merged into pwritev), scattered blocks and odd sizes, all at once.
    writes: list[tuple[int, bytes]] = []
    for i in range(40):
        writes.append((i * 3 * BLOCK_SIZE, rng.randbytes(3 * BLOCK_SIZE)))
    for i in range(100):  # disjoint slots of 12,000 bytes, odd offsets and sizes
        off = 150 * BLOCK_SIZE + i * 12_000 + rng.randrange(0, 2_000)
        writes.append((off, rng.randbytes(rng.randrange(1, 10_000))))
    async with trio.open_nursery() as nursery:
        for off, data in writes:
            nursery.start_soon(dev.write, off, data)
    # Disjoint: the order among concurrent writes (trio's scheduling order) does not matter.
    for off, data in writes:
        model[off : off + len(data)] = data
    assert await dev.read(0, SIZE) == bytes(model)
    await dev.aclose()


async def test_overlapping_writes_in_order(tmp_path: Path) -> None:
    """Sequential awaits keep their order; a batch keeps queue order."""
    dev = await _device(tmp_path)
    for i in range(20):
        await dev.write(0, bytes([i]) * BLOCK_SIZE)
    assert await dev.read(0, BLOCK_SIZE) == bytes([19]) * BLOCK_SIZE
    await dev.aclose()


async def test_batches_share_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = await _device(tmp_path)
    started = 0
    real = trio.lowlevel.start_thread_soon

    def counting(*a: object, **k: object) -> None:
        nonlocal started
        started += 1
        real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(trio.lowlevel, "start_thread_soon", counting)
    async with trio.open_nursery() as nursery:
        for i in range(64):
            nursery.start_soon(dev.write, i * BLOCK_SIZE, bytes([i % 251]) * BLOCK_SIZE)
    assert started <= 2  # one batch (or two if the first was submitted early), not 64
    got = await dev.read(0, 64 * BLOCK_SIZE)
    assert got == b"".join(bytes([i % 251]) * BLOCK_SIZE for i in range(64))
    await dev.aclose()


async def test_cancelled_while_queued_never_starts(tmp_path: Path) -> None:
    dev = await _device(tmp_path)
    with trio.CancelScope() as scope:
        scope.cancel()
        await dev.write(0, b"x" * BLOCK_SIZE)
    await dev.write(BLOCK_SIZE, b"y" * BLOCK_SIZE)  # a later batch runs; the first is gone
    assert await dev.read(0, 2 * BLOCK_SIZE) == bytes(BLOCK_SIZE) + b"y" * BLOCK_SIZE
    await dev.aclose()


async def test_write_after_close_fails(tmp_path: Path) -> None:
    dev = await _device(tmp_path)
    await dev.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await dev.write(0, b"z")


def test_batch_errors_are_per_request(tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.write_bytes(bytes(SIZE))
    good = os.open(path, os.O_RDWR)
    ro = os.open(path, os.O_RDONLY)
    try:
        task = None
        reqs = [_WriteRequest(i * 4, memoryview(b"abcd"), task) for i in range(3)]  # type: ignore[arg-type]
        _write_batch(ro, reqs)
        assert all(isinstance(r.error, OSError) for r in reqs)
        reqs = [_WriteRequest(i * 4, memoryview(b"abcd"), task) for i in range(3)]  # type: ignore[arg-type]
        _write_batch(good, reqs)
        assert all(r.error is None for r in reqs)
        assert os.pread(good, 12, 0) == b"abcd" * 3
    finally:
        os.close(good)
        os.close(ro)


def test_short_pwritev_is_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(64))
    fd = os.open(path, os.O_RDWR)
    real = os.pwritev

    def short(fd: int, bufs: list[memoryview], off: int) -> int:
        return real(fd, [bufs[0][:3]], off)  # 3 bytes only

    monkeypatch.setattr(os, "pwritev", short)
    try:
        reqs = [_WriteRequest(i * 4, memoryview(b"%d%d%d%d" % ((i,) * 4)), None) for i in range(4)]  # type: ignore[arg-type]
        _write_batch(fd, reqs)
        assert all(r.error is None for r in reqs)
        assert os.pread(fd, 16, 0) == b"0000111122223333"
    finally:
        os.close(fd)


async def test_write_many_flush(tmp_path: Path) -> None:
    dev = await _device(tmp_path)
    await dev.write_many(
        [(0, [b"a" * 10]), (100, [bytearray(b"b" * 5), memoryview(b"de")]), (5, [b"c"])],
        flush=True,
    )
    assert await dev.read(0, 107) == b"aaaaacaaaa" + bytes(90) + b"bbbbbde"
    # More buffers than one pwritev takes, back to back.
    await dev.write_many([(200, [bytes([i]) for i in range(200)])], flush=False)
    assert await dev.read(200, 200) == bytes(range(200))
    with pytest.raises(ValueError):
        await dev.write_many([(SIZE - 1, [b"x", b"x"])], flush=False)
    await dev.aclose()


async def test_wal_over_file_device(tmp_path: Path) -> None:
    """The WAL's one-hop commit (write_many + fdatasync) round-trips through open/replay,
    wrap-arounds included."""
    array = uuid.UUID(int=42)
    dev = await _device(tmp_path, "journal")
    start = await WriteAheadLog.format(dev, array)
    wal = await WriteAheadLog.open(dev, array, start)
    rng = random.Random(1)
    payloads = []
    for _ in range(3):
        for _ in range(50):
            p = rng.randbytes(rng.randrange(1, 20_000))
            payloads.append(p)
            await wal.append(RecordType.DATA, p)
            if rng.random() < 0.3:
                await wal.commit()
        await wal.commit()
        wal.reclaim(wal.position_of(wal.last_lsn))
        payloads = payloads[-1:]
    pos = wal.position_of(wal.last_lsn)
    await wal.aclose()
    dev2 = await FileDevice.open(tmp_path / "journal")
    wal2 = await WriteAheadLog.open(dev2, array, pos)
    got = [r.payload async for r in wal2.replay()]
    assert got == payloads
    await wal2.aclose()
