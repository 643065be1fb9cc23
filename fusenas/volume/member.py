"""One member of the array: a regular file (sparse is fine) or a block device.

``FileDevice`` implements the ``BlockDevice`` protocol of ``fusenas.volume.device`` with
``os.pread`` / ``os.pwrite`` / ``os.fdatasync``. All offsets and lengths are in bytes.

Invariants
----------
* ``size`` is fixed at ``open``: ``st_size`` of a regular file, ``BLKGETSIZE64`` of a block
  device. Every ``read``/``write`` must lie inside ``[0, size)``; anything else is a programming
  error and raises ``ValueError`` before any I/O.
* Blocking system calls never run on the event loop: each runs in
  ``trio.to_thread.run_sync(..., abandon_on_cancel=True)`` under this member's
  ``CapacityLimiter`` (4 threads unless the caller shares one), so one slow disk ties up at
  most its own threads.
* A block device is opened with ``O_EXCL``: Linux then refuses it while it is mounted, part of
  an md array or opened exclusively by anyone else, and keeps others out while we hold it.
* The file descriptor is closed only when no worker thread is using it (see ``aclose``). An
  abandoned thread therefore never sees its descriptor number reused by an unrelated
  ``open`` — which would let a stale ``pwrite`` land in some other file.

Cancellation
------------
Every ``async`` method may be cancelled. Cancellation while waiting for a thread slot means
the call never started. Cancellation once the thread runs *abandons* the thread: the call
returns ``Cancelled`` at once while the system call finishes in the background, so a
cancelled ``write`` or ``flush`` may or may not have taken effect, and the caller must treat
the range as unknown, exactly as after a power cut (the ``BlockDevice`` contract).

Crash behaviour
---------------
Nothing is buffered here: a returned ``write`` is in the kernel page cache (or on the device),
and becomes durable when a later ``flush`` (``fdatasync``) returns. A power cut before that
keeps any subset of the unflushed writes, torn at the device's sector/page granularity.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from fusenas.errors import VolumeError
from fusenas.units import ByteData

__all__ = ["DEFAULT_THREADS", "FileDevice"]

#: Worker threads per member when the caller passes no limiter. A few in flight let the
#: kernel merge and reorder requests; more only queue in the kernel.
DEFAULT_THREADS = 4

#: ``_IOR(0x12, 114, size_t)``: size of a block device in bytes.
_BLKGETSIZE64 = 0x80081272

_T = TypeVar("_T")


class _SharedFd:
    """A file descriptor that is closed only once no worker thread is using it.

    ``close`` marks it closing and closes at once if idle; otherwise the last ``release``
    closes it. The lock is a ``threading.Lock`` because users are worker threads.
    """

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._name = name
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    def acquire(self) -> int:
        with self._lock:
            if self._closing:
                raise OSError(errno.EBADF, f"{self._name}: device is closed")
            self._users += 1
            return self._fd

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            close_now = self._closing and self._users == 0
        if close_now:
            os.close(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            close_now = self._users == 0
        if close_now:
            os.close(self._fd)


def _refuse(path: str, what: str) -> VolumeError:
    return VolumeError(f"{path}: {what}")


def _open_member(path: str, readonly: bool) -> tuple[int, bool, int]:
    """Open ``path`` and return ``(fd, is_block_device, size)``. Runs in a worker thread."""
    # stat before open: opening a FIFO read-only blocks until a writer appears, and the flags
    # (O_EXCL) depend on the kind of file.
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _refuse(path, "no such file or directory") from None
    except PermissionError:
        raise _refuse(path, "permission denied") from None
    except OSError as e:
        raise _refuse(path, f"cannot stat: {e.strerror}") from e
    if stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "is a directory, not a regular file or block device")
    is_block = stat.S_ISBLK(st.st_mode)
    if not (is_block or stat.S_ISREG(st.st_mode)):
        raise _refuse(path, "is neither a regular file nor a block device")

    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
    if is_block:
        flags |= os.O_EXCL
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _refuse(path, "no such file or directory") from None
    except PermissionError:
        raise _refuse(path, "permission denied") from None
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise _refuse(path, "device is busy (mounted or in use elsewhere)") from None
        raise _refuse(path, f"cannot open: {e.strerror}") from e

    try:
        st2 = os.fstat(fd)
        if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
            # Renamed or replaced between stat and open: what we checked is not what we hold.
            raise _refuse(path, "changed while being opened")
        if is_block:
            try:
                raw = fcntl.ioctl(fd, _BLKGETSIZE64, b"\0" * 8)
                size = int(struct.unpack("=Q", raw)[0])
            except OSError:
                size = os.lseek(fd, 0, os.SEEK_END)
        else:
            size = st2.st_size
    except BaseException:
        os.close(fd)
        raise
    return fd, is_block, size


def _create_sparse(path: str, size: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise _refuse(path, "already exists (refusing to overwrite it)") from None
    except FileNotFoundError:
        raise _refuse(path, "parent directory does not exist") from None
    except PermissionError:
        raise _refuse(path, "permission denied") from None
    except OSError as e:
        raise _refuse(path, f"cannot create: {e.strerror}") from e
    try:
        # ftruncate allocates nothing: the file is one hole of ``size`` bytes.
        os.ftruncate(fd, size)
    except OSError as e:
        os.close(fd)
        os.unlink(path)
        raise _refuse(path, f"cannot size to {size} bytes: {e.strerror}") from e
    os.close(fd)


class FileDevice:
    """A ``BlockDevice`` over a regular file or a block device. See the module docstring.

    Create with ``await FileDevice.open(path)``; release with ``await dev.aclose()``.
    Methods called after ``aclose`` raise ``trio.ClosedResourceError``.
    """

    def __init__(
        self,
        path: Path,
        fd: int,
        *,
        size: int,
        is_block_device: bool,
        readonly: bool,
        limiter: trio.CapacityLimiter,
    ) -> None:
        """Wrap an already-open descriptor (which this object then owns). Prefer ``open``."""
        self._path = path
        self._name = str(path)
        self._fd = _SharedFd(fd, self._name)
        self._size = size
        self._is_block_device = is_block_device
        self._readonly = readonly
        self._limiter = limiter

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        limiter: trio.CapacityLimiter | None = None,
        readonly: bool = False,
    ) -> FileDevice:
        """Open a member: ``O_RDWR`` (``O_RDONLY`` if ``readonly``), plus ``O_EXCL`` for a block
        device.

        Raises ``VolumeError`` (one line, naming the path) for a missing path, a directory,
        anything that is neither a regular file nor a block device, permission denied, or a
        block device in use elsewhere. Cancellation abandons the opening thread; a descriptor
        it opens afterwards is leaked until process exit (rare, and only ever at startup).
        """
        name = os.fspath(path)
        fd, is_block, size = await trio.to_thread.run_sync(
            _open_member, name, readonly, abandon_on_cancel=True
        )
        if limiter is None:
            limiter = trio.CapacityLimiter(DEFAULT_THREADS)
        return cls(
            Path(name),
            fd,
            size=size,
            is_block_device=is_block,
            readonly=readonly,
            limiter=limiter,
        )

    @staticmethod
    async def create_file(path: str | os.PathLike[str], size: int) -> None:
        """Create a sparse regular file of exactly ``size`` bytes (``O_EXCL``: never clobbers).

        ``VolumeError`` if ``path`` exists or cannot be created. Cancellation abandons the
        thread: the file may or may not exist afterwards.
        """
        if size < 0:
            raise ValueError(f"negative size {size}")
        await trio.to_thread.run_sync(_create_sparse, os.fspath(path), size, abandon_on_cancel=True)

    @property
    def size(self) -> int:
        """Usable size in bytes, fixed while open."""
        return self._size

    @property
    def name(self) -> str:
        """The path as given to ``open``, for messages."""
        return self._name

    @property
    def path(self) -> Path:
        return self._path

    @property
    def is_block_device(self) -> bool:
        return self._is_block_device

    @property
    def readonly(self) -> bool:
        return self._readonly

    def _check_range(self, op: str, offset: int, length: int) -> None:
        if self._fd.closing:
            raise trio.ClosedResourceError(f"{self._name}: device is closed")
        if offset < 0 or length < 0 or offset + length > self._size:
            raise ValueError(
                f"{self._name}: {op} of {length} bytes at {offset} outside [0, {self._size})"
            )

    async def _run(self, fn: Callable[[int], _T]) -> _T:
        def in_thread() -> _T:
            # Acquire inside the thread, not before: a call cancelled while waiting for the
            # limiter never starts a thread and so must not hold the descriptor.
            fd = self._fd.acquire()
            try:
                return fn(fd)
            finally:
                self._fd.release()

        return await trio.to_thread.run_sync(
            in_thread, limiter=self._limiter, abandon_on_cancel=True
        )

    async def read(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes at ``offset``.

        Holes read as zeros; so does the range past the end of a regular file that shrank
        under us. ``ValueError`` if the range leaves ``[0, size)``; ``OSError`` on I/O errors.
        Cancellation abandons the thread (a read has no effect to worry about).
        """
        self._check_range("read", offset, length)
        if length == 0:
            return b""
        is_block = self._is_block_device
        name = self._name

        def do_read(fd: int) -> bytes:
            first = os.pread(fd, length, offset)
            if len(first) == length:
                return first
            buf = bytearray(first)
            while len(buf) < length:
                chunk = os.pread(fd, length - len(buf), offset + len(buf))
                if not chunk:
                    if is_block:
                        raise OSError(
                            errno.EIO, f"{name}: unexpected end of device at {offset + len(buf)}"
                        )
                    buf.extend(bytes(length - len(buf)))
                    break
                buf.extend(chunk)
            return bytes(buf)

        return await self._run(do_read)

    async def write(self, offset: int, data: ByteData) -> None:
        """Write all of ``data`` at ``offset`` (not durable until ``flush``).

        ``data`` is not copied; the caller must not modify it until the call returns (or, if
        cancelled, ever — the abandoned thread may still be reading it). ``ValueError`` if the
        range leaves ``[0, size)``; ``OSError`` on I/O errors (``EROFS`` if opened read-only).
        Cancellation abandons the thread: the write may or may not happen, wholly or in part.
        """
        view = memoryview(data).cast("B")
        self._check_range("write", offset, len(view))
        if self._readonly:
            raise OSError(errno.EROFS, f"{self._name}: opened read-only")
        if len(view) == 0:
            return

        def do_write(fd: int) -> None:
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], offset + done)

        await self._run(do_write)

    async def flush(self) -> None:
        """``fdatasync``: every write that returned before this call is durable when it returns.

        ``OSError`` on failure (after which nothing about unflushed writes is known).
        Cancellation abandons the thread: durability is then unknown, not refused.
        """
        if self._fd.closing:
            raise trio.ClosedResourceError(f"{self._name}: device is closed")
        await self._run(os.fdatasync)

    async def aclose(self) -> None:
        """Release the device without flushing. Idempotent; never blocks, never cancelled.

        Returns at once. The descriptor is closed now if no thread is using it, otherwise by
        the last in-flight (possibly abandoned) thread when its system call returns, so that
        call completes against this device, never against a reused descriptor number.
        Calls made after ``aclose`` raise ``trio.ClosedResourceError``.
        """
        self._fd.close()
        # A checkpoint, as every trio async call should have, but one that cannot raise
        # Cancelled: the device is already released either way.
        await trio.lowlevel.cancel_shielded_checkpoint()

    def __repr__(self) -> str:
        kind = "block device" if self._is_block_device else "file"
        return f"<FileDevice {self._name!r} {kind} size={self._size}>"


class FileDevices:
    """The production ``DeviceProvider``: ``FileDevice`` over files and block devices."""

    async def open(self, path: Path, *, readonly: bool = False) -> FileDevice:
        return await FileDevice.open(path, readonly=readonly)

    async def create(self, path: Path, size: int) -> None:
        await FileDevice.create_file(path, size)


FILES = FileDevices()
