"""FileDevice: sparse files, positional I/O, refusals, cancellation, a real loop device."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from fusenas.errors import VolumeError
from fusenas.volume.member import FileDevice

MiB = 1 << 20


async def make(
    tmp_path: Path, size: int = 4 * MiB, limiter: trio.CapacityLimiter | None = None
) -> FileDevice:
    path = tmp_path / "m0"
    await FileDevice.create_file(path, size)
    return await FileDevice.open(path, limiter=limiter)


async def test_create_file_is_sparse_and_reads_zeros(tmp_path: Path) -> None:
    path = tmp_path / "m0"
    await FileDevice.create_file(path, 64 * MiB)
    st = os.stat(path)
    assert st.st_size == 64 * MiB
    assert st.st_blocks * 512 < MiB  # a hole, not 64 MiB of zeros
    dev = await FileDevice.open(path)
    try:
        assert dev.size == 64 * MiB
        assert dev.name == str(path)
        assert dev.path == path
        assert not dev.is_block_device
        assert await dev.read(0, 8192) == bytes(8192)
        assert await dev.read(64 * MiB - 10, 10) == bytes(10)
        assert await dev.read(123, 0) == b""
    finally:
        await dev.aclose()


@pytest.mark.parametrize("offset", [0, 1, 4095, 4097, 12345, 4 * MiB - 7])
async def test_write_read_round_trip_odd_offsets(tmp_path: Path, offset: int) -> None:
    dev = await make(tmp_path)
    try:
        data = bytes((i * 7 + offset) % 251 for i in range(min(10_000, dev.size - offset)))
        await dev.write(offset, data)
        assert await dev.read(offset, len(data)) == data
        if offset:
            assert await dev.read(offset - 1, 1) == b"\0"
        await dev.flush()
    finally:
        await dev.aclose()
    assert os.stat(tmp_path / "m0").st_size == 4 * MiB  # writes never grow the file


async def test_write_accepts_memoryview_bytearray_and_non_byte_views(tmp_path: Path) -> None:
    dev = await make(tmp_path)
    try:
        buf = bytearray(b"abcdefghijklmnop" * 4)
        await dev.write(100, memoryview(buf)[3:11])
        assert await dev.read(100, 8) == bytes(buf[3:11])
        await dev.write(200, buf)
        assert await dev.read(200, len(buf)) == bytes(buf)
        ints = memoryview(bytearray(range(16))).cast("I")  # 4 items, 16 bytes
        await dev.write(300, ints)
        assert await dev.read(300, 16) == bytes(range(16))
        await dev.write(0, b"")
    finally:
        await dev.aclose()


async def test_range_errors_are_value_errors(tmp_path: Path) -> None:
    dev = await make(tmp_path, size=8192)
    try:
        with pytest.raises(ValueError):
            await dev.read(8000, 200)
        with pytest.raises(ValueError):
            await dev.read(-1, 1)
        with pytest.raises(ValueError):
            await dev.write(8192, b"x")
    finally:
        await dev.aclose()


async def test_read_past_eof_of_shrunk_file_is_zeros(tmp_path: Path) -> None:
    dev = await make(tmp_path, size=8192)
    try:
        await dev.write(0, b"\xff" * 8192)
        os.truncate(dev.path, 4096)  # someone shrank it under us
        got = await dev.read(4000, 192)
        assert got == b"\xff" * 96 + bytes(96)
    finally:
        await dev.aclose()


async def test_readonly(tmp_path: Path) -> None:
    path = tmp_path / "m0"
    await FileDevice.create_file(path, 8192)
    dev = await FileDevice.open(path, readonly=True)
    try:
        assert dev.readonly
        assert await dev.read(0, 4) == bytes(4)
        with pytest.raises(OSError, match="read-only"):
            await dev.write(0, b"x")
    finally:
        await dev.aclose()


async def test_closed_device_refuses_and_aclose_is_idempotent(tmp_path: Path) -> None:
    dev = await make(tmp_path)
    await dev.aclose()
    await dev.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await dev.read(0, 1)
    with pytest.raises(trio.ClosedResourceError):
        await dev.write(0, b"x")
    with pytest.raises(trio.ClosedResourceError):
        await dev.flush()


# -- refusals ----------------------------------------------------------------------------------


async def test_open_missing(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match=r"m9: no such file or directory$"):
        await FileDevice.open(tmp_path / "m9")


async def test_open_directory(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="is a directory"):
        await FileDevice.open(tmp_path)


async def test_open_fifo_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with trio.fail_after(5), pytest.raises(VolumeError, match="neither a regular file nor"):
        await FileDevice.open(fifo, readonly=True)


async def test_open_char_device_refused() -> None:
    with pytest.raises(VolumeError, match="/dev/null: is neither a regular file nor a block"):
        await FileDevice.open("/dev/null")


async def test_open_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # We run as root, for whom mode bits deny nothing; make open(2) say EACCES instead.
    path = tmp_path / "m0"
    await FileDevice.create_file(path, 4096)
    real_open = os.open

    def deny(p: str, flags: int, *args: int) -> int:
        if p == str(path):
            raise PermissionError(13, "Permission denied", p)
        return real_open(p, flags, *args)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(VolumeError, match=r"m0: permission denied$"):
        await FileDevice.open(path)


async def test_create_file_refuses_existing(tmp_path: Path) -> None:
    path = tmp_path / "m0"
    path.write_bytes(b"precious")
    with pytest.raises(VolumeError, match="already exists"):
        await FileDevice.create_file(path, 4096)
    assert path.read_bytes() == b"precious"


async def test_create_file_missing_parent(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="parent directory does not exist"):
        await FileDevice.create_file(tmp_path / "nope" / "m0", 4096)


async def test_errors_are_one_line(tmp_path: Path) -> None:
    for coro in (FileDevice.open(tmp_path / "x"), FileDevice.open("/dev/null")):
        with pytest.raises(VolumeError) as info:
            await coro
        assert "\n" not in str(info.value)


# -- cancellation ------------------------------------------------------------------------------


async def test_cancel_before_start_does_not_wedge(tmp_path: Path) -> None:
    dev = await make(tmp_path)
    try:
        for _ in range(20):
            with trio.move_on_after(0):
                await dev.write(0, b"a" * 4096)
            with trio.move_on_after(0):
                await dev.read(0, 4096)
            with trio.move_on_after(0):
                await dev.flush()
        await dev.write(0, b"b" * 4096)
        assert await dev.read(0, 4096) == b"b" * 4096
    finally:
        await dev.aclose()


async def test_cancel_while_waiting_for_limiter(tmp_path: Path) -> None:
    limiter = trio.CapacityLimiter(1)
    dev = await make(tmp_path, limiter=limiter)
    holder = object()
    try:
        await limiter.acquire_on_behalf_of(holder)
        with trio.move_on_after(0.05) as scope:
            await dev.read(0, 10)
        assert scope.cancelled_caught
        limiter.release_on_behalf_of(holder)
        assert limiter.borrowed_tokens == 0
        assert await dev.read(0, 10) == bytes(10)
    finally:
        await dev.aclose()


@dataclass
class Gate:
    """A patched os.pread that blocks until ``gate`` is set and records what it returned."""

    entered: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    outcomes: list[bytes | OSError] = field(default_factory=list)


@pytest.fixture
def gated_pread(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    real_pread = os.pread
    g = Gate()

    def pread(fd: int, n: int, off: int) -> bytes:
        g.entered.set()
        assert g.gate.wait(10)
        try:
            data = real_pread(fd, n, off)
            g.outcomes.append(data)
            return data
        except OSError as e:
            g.outcomes.append(e)
            raise
        finally:
            g.done.set()

    monkeypatch.setattr(os, "pread", pread)
    yield g
    g.gate.set()


async def test_cancel_abandons_thread_and_aclose_waits_for_it(
    tmp_path: Path, gated_pread: Gate
) -> None:
    g = gated_pread
    dev = await make(tmp_path)
    dev._nowait = False  # a hole is "cached": force the (gated) thread path under test
    fd = dev._fd._fd
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    await dev.read(0, 4096)

                nursery.start_soon(reader)
                await trio.to_thread.run_sync(g.entered.wait)
                scope.cancel()  # the thread is stuck in pread: it must be abandoned
        assert scope.cancelled_caught
        await dev.aclose()
        os.fstat(fd)  # still open: the abandoned pread is using it
        g.gate.set()
        await trio.to_thread.run_sync(g.done.wait)
        while True:  # the releasing thread closes it right after pread returns
            try:
                os.fstat(fd)
            except OSError:
                break
            await trio.sleep(0.001)
    assert g.outcomes == [bytes(4096)]  # completed against our file, no EBADF


# -- a real block device -----------------------------------------------------------------------


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    if shutil.which("losetup") is None:
        pytest.skip("losetup is not installed")
    backing = tmp_path / "loop.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    proc = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"losetup failed (need root and loop devices): {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


async def test_loop_device(loop_device: str) -> None:
    dev = await FileDevice.open(loop_device)
    try:
        assert dev.is_block_device
        assert dev.size == 64 * MiB
        data = bytes(range(256)) * 32
        await dev.write(MiB + 4096, data)
        await dev.flush()
        assert await dev.read(MiB + 4096, len(data)) == data
        assert await dev.read(dev.size - 4096, 4096) == bytes(4096)
        # O_EXCL: a second exclusive open of the same block device is refused.
        with pytest.raises(VolumeError, match="busy"):
            await FileDevice.open(loop_device)
    finally:
        await dev.aclose()


async def test_cached_read_serves_page_cache_and_falls_back(tmp_path: Path) -> None:
    """A read the page cache holds is served on the event loop (RWF_NOWAIT); the rest, and
    reads past the end of a sparse file, go through a thread with the same bytes."""
    dev = await make(tmp_path)
    payload = os.urandom(3 * 4096 + 100)
    await dev.write(8192, payload)
    if dev._nowait:
        assert dev.read_nowait(8192, len(payload)) == payload
        assert dev.read_nowait(0, 1 << 20) is None, "too long for the event loop"
        with pytest.raises(ValueError):
            dev.read_nowait(dev.size, 1)
    assert await dev.read(8192, len(payload)) == payload
    dev._nowait = False
    assert dev.read_nowait(8192, len(payload)) is None
    assert await dev.read(8192, len(payload)) == payload
    assert await dev.read(dev.size - 4096, 4096) == bytes(4096)
    await dev.aclose()


async def test_create_file_sparse_or_allocated(tmp_path: Path) -> None:
    """Members are created sparse; the journal allocated (zeros written, every block backed),
    so that its appends overwrite and each fdatasync has no allocation to commit."""
    size = 3 * (4 << 20) + 4096  # not a multiple of the zeroing chunk
    await FileDevice.create_file(tmp_path / "sparse", size)
    await FileDevice.create_file(tmp_path / "allocated", size, allocate=True)
    sparse, allocated = os.stat(tmp_path / "sparse"), os.stat(tmp_path / "allocated")
    assert sparse.st_size == allocated.st_size == size
    assert sparse.st_blocks == 0
    assert allocated.st_blocks * 512 >= size
    assert (tmp_path / "allocated").read_bytes() == bytes(size)
