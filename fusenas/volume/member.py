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
  most its own threads. Plain ``write`` calls are batched instead (below): at most one worker
  thread per device writes them, outside the limiter. Reads try the page cache first with
  ``RWF_NOWAIT``, which cannot wait for the disk ("Cached reads").
* A block device is opened with ``O_EXCL``: Linux then refuses it while it is mounted, part of
  an md array or opened exclusively by anyone else, and keeps others out while we hold it.
* The file descriptor is closed only when no worker thread is using it (see ``aclose``). An
  abandoned thread therefore never sees its descriptor number reused by an unrelated
  ``open`` — which would let a stale ``pwrite`` land in some other file.

Write batching
--------------
A thread hand-off costs more than a ``pwrite`` into the page cache, and a stripe flush issues
one member write per member (several stripes flush at once). So ``write`` does not start a
thread itself: it queues the request, and the first write of a run-loop pass schedules a
submission for the next pass (``run_sync_soon``), which hands *every* queued write of this
device to one worker thread. Requests that continue the previous one on the device go into
one ``pwritev``. While that batch runs, new writes queue up and are submitted together when
it completes (like a group commit). Each request gets its own outcome (an ``OSError`` of one
never fails another); each caller waits for its own request only. Writes in one batch are
issued in queue order, so concurrent overlapping writes land as if issued one after the other
(no order between concurrent writes is promised anyway). ``write_many`` writes a list (and
optionally ``fdatasync``s) in one hand-off: the WAL's commit path.

Cached reads
------------
A read of at most 256 KiB first tries ``preadv(..., RWF_NOWAIT)`` on the event loop: the
kernel serves it from the page cache or fails with ``EAGAIN`` at once, never waiting for the
disk, so the "no blocking call on the event loop" rule holds. Only a miss (or a partial hit)
pays the thread hand-off, which costs far more than a page-cache copy. Recently written member
data (read-modify-write reads, reads of fresh files) is usually cached. A device that refuses
the flag (``EOPNOTSUPP``/``EINVAL``) always uses a thread from then on. While every thread
slot of the member is taken, reads queue for a slot as before (FIFO, no overtaking).

Cancellation
------------
Every ``async`` method may be cancelled. Cancellation while waiting for a thread slot means
the call never started. Cancellation once the thread runs *abandons* the thread: the call
returns ``Cancelled`` at once while the system call finishes in the background, so a
cancelled ``write`` or ``flush`` may or may not have taken effect, and the caller must treat
the range as unknown, exactly as after a power cut (the ``BlockDevice`` contract).
A ``write`` cancelled while still queued is dropped from the batch (it never starts).

Crash behaviour
---------------
Nothing is buffered here: a returned ``write`` is in the kernel page cache (or on the device),
and becomes durable when a later ``flush`` (``fdatasync``) returns. A power cut before that
keeps any subset of the unflushed writes, torn at the device's sector/page granularity.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import outcome
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


#: ``preadv2`` flag: fail with EAGAIN instead of waiting for the disk (0: not available).
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
#: Larger reads always go to a worker thread (a copy that long would stall the event loop).
_MAX_CACHED_READ = 256 << 10

#: At most this many queued writes go into one ``pwritev`` (well under ``IOV_MAX``).
_MAX_IOV = 64


class _WriteRequest:
    """One queued ``write``: filled by the worker thread, read back in the trio thread."""

    __slots__ = ("error", "offset", "skip", "started", "task", "view")

    def __init__(self, offset: int, view: memoryview, task: trio.lowlevel.Task) -> None:
        self.offset = offset
        self.view = view
        self.task: trio.lowlevel.Task | None = task  # None once woken or abandoned
        self.started = False  # handed to a worker thread (trio thread only)
        self.skip = False  # cancelled while queued: never written
        self.error: OSError | None = None


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _pwritev_all(fd: int, views: Sequence[memoryview], offset: int) -> None:
    """Write ``views`` back to back from ``offset``: ``pwritev`` calls of at most
    ``_MAX_IOV`` buffers, a short write finished buffer by buffer."""
    if len(views) == 1:
        _pwrite_all(fd, views[0], offset)
        return
    for i in range(0, len(views), _MAX_IOV):
        chunk = views[i : i + _MAX_IOV]
        done = os.pwritev(fd, chunk, offset)
        for v in chunk:
            n = len(v)
            if done < n:
                _pwrite_all(fd, v[done:], offset + done)
            done = max(0, done - n)
            offset += n


def _write_run(fd: int, run: list[_WriteRequest]) -> None:
    """Requests that are contiguous on the device, in queue order: one ``pwritev``."""
    _pwritev_all(fd, [r.view for r in run], run[0].offset)


def _write_batch(fd: int, batch: list[_WriteRequest]) -> None:
    """Write every request of ``batch`` in queue order, merging requests that continue the
    previous one into one ``pwritev``. Errors are recorded per request, never raised: a
    failed merged run is retried request by request so that each gets its own outcome."""
    i = 0
    while i < len(batch):
        j = i + 1
        end = batch[i].offset + len(batch[i].view)
        while j < len(batch) and j - i < _MAX_IOV and batch[j].offset == end:
            end += len(batch[j].view)
            j += 1
        run = batch[i:j]
        try:
            _write_run(fd, run)
        except OSError as e:
            if len(run) == 1:
                run[0].error = e
            else:
                for r in run:
                    try:
                        _pwrite_all(fd, r.view, r.offset)
                    except OSError as e2:
                        r.error = e2
        i = j


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


def _create_file(path: str, size: int, allocate: bool) -> None:
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
        if allocate:
            zeros = bytes(min(size, 4 << 20))
            for pos in range(0, size, len(zeros)):
                os.pwrite(fd, zeros[: size - pos], pos)
            os.fdatasync(fd)
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
        self._queue: list[_WriteRequest] = []
        #: Try ``RWF_NOWAIT`` reads on the event loop first (see "Cached reads").
        self._nowait = _RWF_NOWAIT != 0
        self._batch_running = False
        self._submit_scheduled = False

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
    async def create_file(
        path: str | os.PathLike[str], size: int, *, allocate: bool = False
    ) -> None:
        """Create a regular file of exactly ``size`` bytes (``O_EXCL``: never clobbers),
        sparse, or with ``allocate`` written with zeros and fdatasync'ed (see
        ``DeviceProvider.create``; a file that does not fit is removed again).

        ``VolumeError`` if ``path`` exists or cannot be created. Cancellation abandons the
        thread: the file may or may not exist afterwards.
        """
        if size < 0:
            raise ValueError(f"negative size {size}")
        await trio.to_thread.run_sync(
            _create_file, os.fspath(path), size, allocate, abandon_on_cancel=True
        )

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
        cached = self.read_nowait(offset, length)
        if cached is not None:
            await trio.lowlevel.checkpoint()
            return cached
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

    def read_nowait(self, offset: int, length: int) -> bytes | None:
        """The bytes if the page cache holds all of them (``preadv`` with ``RWF_NOWAIT``,
        which never waits for the disk), else None. Runs on the event loop: only reads of at
        most ``_MAX_CACHED_READ`` bytes, and only while a worker thread is free (so a cached
        read does not overtake a queue of uncached ones forever). ``ValueError`` if the
        range leaves ``[0, size)``."""
        self._check_range("read", offset, length)
        if length == 0:
            return b""
        if not (self._nowait and length <= _MAX_CACHED_READ and self._limiter.available_tokens):
            return None
        try:
            fd = self._fd.acquire()
        except OSError:
            return None  # closing: the thread path reports it
        try:
            buf = bytearray(length)
            n = os.preadv(fd, [buf], offset, _RWF_NOWAIT)
        except BlockingIOError:
            return None  # not (all) cached
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self._nowait = False  # not supported here: always use a thread
            return None  # a real error: the thread path raises it
        finally:
            self._fd.release()
        return bytes(buf) if n == length else None

    async def write(self, offset: int, data: ByteData) -> None:
        """Write all of ``data`` at ``offset`` (not durable until ``flush``).

        ``data`` is not copied; the caller must not modify it until the call returns (or, if
        cancelled, ever — the abandoned thread may still be reading it). ``ValueError`` if the
        range leaves ``[0, size)``; ``OSError`` on I/O errors (``EROFS`` if opened read-only).
        Cancellation abandons the thread: the write may or may not happen, wholly or in part.
        A write cancelled while still queued (see "Write batching") never starts.
        """
        view = memoryview(data).cast("B")
        self._check_range("write", offset, len(view))
        if self._readonly:
            raise OSError(errno.EROFS, f"{self._name}: opened read-only")
        if len(view) == 0:
            await trio.lowlevel.checkpoint()
            return
        req = _WriteRequest(offset, view, trio.lowlevel.current_task())
        self._queue.append(req)
        if not self._batch_running and not self._submit_scheduled:
            # Submit on the next pass of the run loop, so that every write started in this
            # one (the member writes of a stripe flush, of several stripes) joins the batch.
            self._submit_scheduled = True
            trio.lowlevel.current_trio_token().run_sync_soon(self._submit)

        def abort(_: object) -> trio.lowlevel.Abort:
            req.task = None
            if not req.started:
                req.skip = True  # still queued: it will never start
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def write_many(
        self, writes: Sequence[tuple[int, Sequence[ByteData]]], *, flush: bool
    ) -> None:
        """For each ``(offset, buffers)`` in order, write the buffers back to back from
        ``offset``; then ``fdatasync`` if ``flush``: all in one worker thread (one hand-off
        instead of one per call), each run with ``pwritev`` (no joining copy). Same contract as
        that sequence of ``write`` calls followed by ``flush``: when it returns, every write
        is durable (``flush``) or in the page cache. Cancellation abandons the thread as
        ``write`` does. The WAL commits a batch through this.
        """
        runs = [(off, [memoryview(b).cast("B") for b in bufs]) for off, bufs in writes]
        for off, views in runs:
            self._check_range("write", off, sum(len(v) for v in views))
        if self._readonly and runs:
            raise OSError(errno.EROFS, f"{self._name}: opened read-only")

        def do(fd: int) -> None:
            for off, views in runs:
                _pwritev_all(fd, views, off)
            if flush:
                os.fdatasync(fd)

        await self._run(do)

    def _submit(self) -> None:
        """Start one worker thread for every queued write (runs in the trio thread)."""
        self._submit_scheduled = False
        if self._batch_running:
            return  # _complete submits what queued meanwhile
        batch = [r for r in self._queue if not r.skip]
        self._queue = []
        if not batch:
            return
        for r in batch:
            r.started = True
        self._batch_running = True
        token = trio.lowlevel.current_trio_token()
        shared = self._fd

        def in_thread() -> None:
            try:
                fd = shared.acquire()
            except OSError as e:
                for r in batch:
                    r.error = e
                return
            try:
                _write_batch(fd, batch)
            finally:
                shared.release()

        def deliver(_: object) -> None:
            # in_thread never raises (errors are per request); this runs in the worker.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._complete, batch)

        trio.lowlevel.start_thread_soon(in_thread, deliver)

    def _complete(self, batch: list[_WriteRequest]) -> None:
        """Wake the writers of a finished batch, then submit what queued meanwhile."""
        self._batch_running = False
        for r in batch:
            if r.task is not None:
                result: outcome.Outcome[None] = (
                    outcome.Value(None) if r.error is None else outcome.Error(r.error)
                )
                trio.lowlevel.reschedule(r.task, result)
                r.task = None
        if self._queue:
            self._submit()

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

    async def create(self, path: Path, size: int, *, allocate: bool = False) -> None:
        await FileDevice.create_file(path, size, allocate=allocate)


FILES = FileDevices()
