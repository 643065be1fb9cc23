"""FusenasOperations: the pyfuse3 adapter. Translation and errno only.

Each handler checks its arguments, calls the metadata store (``vol.meta``) or the file store
(``FileStore``) and returns pyfuse3 types. Only ``pyfuse3.FUSEError`` leaves this class: every
request goes through the ``_boundary`` decorator (``_sync_boundary`` for ``getxattr_sync``),
and ``_fuse_error`` is the single place where errors become errno.

    FsError(e)                 → e.errno
    NoSpaceError               → ENOSPC
    DataLostError, OSError     → EIO (logged once per message)
    anything else              → EIO (logged with its traceback)

Kernel references (the lookup count)
    Every reply that hands the kernel an inode (lookup, create, mknod, mkdir, symlink, link,
    readdirplus entries other than "." and "..") adds one kernel reference; ``forget`` drops
    them. While an inode has references, or open file handles, it counts as open in the store
    (``meta.open``/``meta.release``): unlinking it then leaves an orphan that the last
    ``forget``/``release`` reclaims. So an unlinked file stays readable and writable through
    its open descriptors, and an inode the kernel still caches never disappears under it.
    The root is never forgotten and is not counted. Orphans left by a crash are reclaimed by
    the next mount.

Timeouts
    Entry and attribute timeouts are 1 s. Every change reaches the volume through this one
    kernel mount (there is no other client), and the kernel invalidates what it caches on its
    own changes, so staleness is not a correctness issue; the bound still limits how long a
    value the daemon changes on its own (st_blocks after a write, ctime, times of a reclaimed
    orphan) can be reported stale, at the cost of one getattr per second per hot inode.
    A missing name is answered with a negative entry (st_ino 0) under the same entry timeout:
    the kernel then answers repeated lookups of it (PATH and include-path searches, build
    tools probing for files) itself. Safe for the same reason: a name only ever appears
    through this mount, and the kernel turns its negative dentry into the new entry when it
    creates the name.

Page cache
    ``open`` returns ``keep_cache=True``: with writeback cache off, every write goes through
    this daemon and updates the kernel's page cache too, so cached pages never go stale.
    The writeback cache is off: O_APPEND and size decisions then stay with the daemon.

Locks
    Namespace handlers call the store without any await between validation and mutation
    (``await vol.reserve_meta()`` comes first), so they need no shard lock. Data handlers go
    through ``FileStore``, which takes the inode's shard itself. No handler holds a grant of
    ``vol.locks`` while calling ``FileStore`` (the table is not reentrant).

atime
    Reads do not update atime (as ``noatime``; the mount says so). Explicit ``utimensat`` and
    ``touch -a`` work.

The patched pyfuse3
    Built with patches/pyfuse3-3.5.0-fusenas.patch (scripts/setup.sh does it;
    docs/dependencies.md), which adds three things used here:
    * fallocate: unsupported modes answer EOPNOTSUPP, never ENOSYS (which would make the
      kernel stop sending fallocate for the rest of the mount);
    * ``getxattr_sync``: getxattr is answered synchronously in pyfuse3's FUSE callback. The
      kernel (libfuse 3.14 has no FUSE_CAP_HANDLE_KILLPRIV_V2) asks for
      ``security.capability`` before every write(2), and a synchronous answer skips the
      coroutine and its error boundary. The async ``getxattr`` remains for pyfuse3's
      XATTR_CREATE/XATTR_REPLACE checks of setxattr;
    * ``read_before_wait``: the session loop reads a queued request before it waits for the
      FUSE fd. Handlers then run back to back while requests are queued (the loop yields
      every 16), so no handler may block the event loop (none does: blocking I/O is in
      worker threads).

Not exposed by pyfuse3 3.5: copy_file_range, lseek SEEK_DATA/SEEK_HOLE, ioctl, poll on files,
file locks (the kernel handles flock/POSIX locks locally).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3

from fusenas.engine import Engine
from fusenas.errors import DataLostError, FsError, NoSpaceError
from fusenas.fs.files import FileStore
from fusenas.fs.stats import OperationStats
from fusenas.meta.model import Inode
from fusenas.meta.store import ROOT_INO

log = logging.getLogger(__name__)

ENTRY_TIMEOUT = 1.0
ATTR_TIMEOUT = 1.0

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Self = TypeVar("_Self", bound="FusenasOperations")

_logged: set[str] = set()


def _log_once(msg: str) -> None:
    if msg in _logged:
        return
    if len(_logged) < 10_000:
        _logged.add(msg)
    log.error("%s (returning EIO)", msg)


def _fuse_error(name: str, e: Exception) -> pyfuse3.FUSEError:
    """The errno translation of the module docstring: the ``FUSEError`` that handler ``name``
    answers for ``e``. Call it in the ``except`` block (it may log the traceback)."""
    if isinstance(e, pyfuse3.FUSEError):
        return e
    if isinstance(e, FsError):
        return pyfuse3.FUSEError(e.errno)
    if isinstance(e, NoSpaceError):
        return pyfuse3.FUSEError(errno.ENOSPC)
    if isinstance(e, DataLostError | OSError):
        _log_once(f"{name}: {type(e).__name__}: {e}")
        return pyfuse3.FUSEError(errno.EIO)
    log.exception("internal error in %s; returning EIO", name)
    return pyfuse3.FUSEError(errno.EIO)


def _failed(ops: Any, name: str, started: float, e: Exception) -> pyfuse3.FUSEError:
    """The ``FUSEError`` for a handler that raised ``e``, counted as a failed ``name``
    request (shared by ``_boundary`` and ``_sync_boundary``)."""
    err = _fuse_error(name, e)
    ops.op_stats.observe(name, time.perf_counter() - started, errno=err.errno)
    return err


def _boundary(
    fn: Callable[Concatenate[_Self, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_Self, _P], Coroutine[Any, Any, _R]]:
    """The one error boundary: only ``pyfuse3.FUSEError`` leaves a handler. Also the one
    place every request is counted and timed (``self.op_stats``, read by the observability
    floor).
    ``_sync_boundary`` is the same for the synchronous handlers."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: _Self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        started = time.perf_counter()
        try:
            result = await fn(self, *args, **kwargs)
        except Exception as e:
            raise _failed(self, name, started, e) from None
        self.op_stats.observe(name, time.perf_counter() - started, result)
        return result

    return wrapper  # type: ignore[return-value]  # functools._Wrapped


def _sync_boundary(
    fn: Callable[Concatenate[_Self, _P], _R],
) -> Callable[Concatenate[_Self, _P], _R]:
    """``_boundary`` for a synchronous handler that pyfuse3 calls in its FUSE callback
    (``getxattr_sync``); counted under the operation's name without the ``_sync`` suffix."""
    name = fn.__name__.removesuffix("_sync")

    @functools.wraps(fn)
    def wrapper(self: _Self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        started = time.perf_counter()
        try:
            result = fn(self, *args, **kwargs)
        except Exception as e:
            raise _failed(self, name, started, e) from None
        self.op_stats.observe(name, time.perf_counter() - started, result)
        return result

    return wrapper  # type: ignore[return-value]  # functools._Wrapped


def _killpriv(mode: int) -> int | None:
    """The mode without set-user-ID and (for group-executable files) set-group-ID, or None
    if nothing is to be cleared (directories keep theirs)."""
    if stat.S_ISDIR(mode):
        return None
    kill = stat.S_ISUID
    if mode & stat.S_IXGRP:
        kill |= stat.S_ISGID
    return mode & ~kill if mode & kill else None


def _check_name(name: bytes) -> None:
    if len(name) > 255:
        raise FsError(errno.ENAMETOOLONG)


#: Directory entries read per metadata call of a readdir (between two, others may run).
READDIR_BATCH = 256


class FusenasOperations(pyfuse3.Operations):
    """The FUSE request handlers over one open ``Volume``. See the module docstring."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False
    #: The patched pyfuse3's session loop reads a queued request before it waits for the
    #: FUSE fd (docs/dependencies.md); handlers here never block the loop, so it is safe.
    read_before_wait = True

    def __init__(self, volume: Engine) -> None:
        super().__init__()
        self.vol = volume
        self.meta = volume.meta
        #: Every metadata call goes through here: on pages it loads the page a call missed
        #: and runs the call again (``Engine.run_meta``); in memory it is one call.
        self._meta = volume.run_meta
        if volume.metadata_tree is not None:
            # getxattr_sync answers from memory in pyfuse3's callback, where nothing may
            # wait: on pages an xattr may need a page read, so getxattr takes the async way.
            self.getxattr_sync = None  # type: ignore[assignment]
        self.files = FileStore(volume)
        #: inode → kernel lookup count (root excluded).
        self._lookups: dict[int, int] = {}
        #: file handle → inode.
        self._handles: dict[int, int] = {}
        self._next_fh = 1
        #: Request counts, errors and latencies per operation (see ``_boundary``).
        self.op_stats = OperationStats()

    # -- helpers -------------------------------------------------------------------------

    def _attr(self, node: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = node.generation
        a.entry_timeout = ENTRY_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_mode = node.mode
        a.st_nlink = node.nlink
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = node.rdev
        a.st_size = node.size
        a.st_blksize = 4096
        a.st_blocks = node.blocks * 8
        a.st_atime_ns = node.atime_ns
        a.st_mtime_ns = node.mtime_ns
        a.st_ctime_ns = node.ctime_ns
        return a

    async def _ref(self, node: Inode) -> pyfuse3.EntryAttributes:
        """Count one kernel reference to ``node`` and return its attributes."""
        ino = node.ino
        if ino != ROOT_INO:
            # Counted before the open, which may wait for a page: a request meanwhile sees
            # the reference and does not open the inode a second time.
            n = self._lookups.get(ino, 0)
            self._lookups[ino] = n + 1
            if n == 0:
                try:
                    await self._meta(self.meta.open, ino)
                except BaseException:
                    self._drop_lookup(ino)
                    raise
        return self._attr(node)

    def _drop_lookup(self, ino: int) -> None:
        n = self._lookups.get(ino, 0)
        if n <= 1:
            self._lookups.pop(ino, None)
        else:
            self._lookups[ino] = n - 1

    @staticmethod
    def _mode(mode: int, ctx: pyfuse3.RequestContext) -> int:
        return stat.S_IFMT(mode) | (mode & 0o7777 & ~ctx.umask)

    # -- lookups and attributes ----------------------------------------------------------

    @_boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name == b".":
            # Export support (open_by_handle_at, NFS): a handle is (nodeid, generation); once
            # the kernel has evicted the inode it sends LOOKUP(nodeid, ".") whatever the
            # inode's type, so "." must resolve for files and symlinks too, not only
            # directories. An inode that no longer exists answers ENOENT (the kernel: ESTALE).
            return await self._ref(await self._meta(self.meta.get, parent_inode))
        try:
            return await self._ref(await self._meta(self.meta.lookup, parent_inode, name))
        except FsError as e:
            # ENOENT for a gone parent (or its "..") stays an error: ESTALE for the kernel.
            if (
                e.errno != errno.ENOENT
                or name == b".."
                or not await self._meta(self.meta.exists, parent_inode)
            ):
                raise
        negative = pyfuse3.EntryAttributes()  # st_ino 0: cached as absent
        negative.entry_timeout = ENTRY_TIMEOUT
        return negative

    @_boundary
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # forget must not fail: unknown inodes are ignored.
        await self.vol.reserve_meta()
        for ino, nlookup in inode_list:
            n = self._lookups.get(ino)
            if n is None:
                continue
            if n > nlookup:
                self._lookups[ino] = n - nlookup
                continue
            del self._lookups[ino]
            with contextlib.suppress(FsError):
                await self._meta(self.meta.release, ino)

    @_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(await self._meta(self.meta.get, inode))

    @_boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if fields.update_size:
            await self.files.truncate(inode, attr.st_size)
        changes: dict[str, Any] = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode
        elif fields.update_uid or fields.update_gid or (fields.update_size and ctx.uid != 0):
            # libfuse enables FUSE_CAP_HANDLE_KILLPRIV: chown, and truncate by a non-root
            # caller, clear set-user-ID (and set-group-ID of group-executable files) here.
            killed = _killpriv((await self._meta(self.meta.get, inode)).mode)
            if killed is not None:
                changes["mode"] = killed
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        if changes or not fields.update_size:
            await self.vol.reserve_meta()
            await self._meta(self.meta.setattr, inode, now_ns=time.time_ns(), **changes)
        return self._attr(await self._meta(self.meta.get, inode))

    @_boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = await self._meta(self.meta.get, inode)
        if node.target is None:
            raise FsError(errno.EINVAL)
        return node.target

    @_boundary
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        """Only called without ``default_permissions``: the classic owner/group/other check
        (root may read and write anything and execute what has any x bit)."""
        node = await self._meta(self.meta.get, inode)
        if mode == os.F_OK:
            return True
        if ctx.uid == 0:
            return not (mode & os.X_OK) or node.is_dir or bool(node.mode & 0o111)
        if ctx.uid == node.uid:
            bits = (node.mode >> 6) & 7
        else:
            groups = {ctx.gid}
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                groups |= pyfuse3.get_sup_groups(ctx.pid)
            bits = (node.mode >> 3) & 7 if node.gid in groups else node.mode & 7
        return (mode & 7) & ~bits == 0

    # -- namespace -----------------------------------------------------------------------

    @_boundary
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        _check_name(name)
        await self.vol.reserve_meta()
        node = await self._meta(
            self.meta.mknod,
            parent_inode,
            name,
            self._mode(mode, ctx),
            rdev,
            ctx.uid,
            ctx.gid,
            time.time_ns(),
        )
        return await self._ref(node)

    @_boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        _check_name(name)
        await self.vol.reserve_meta()
        node = await self._meta(
            self.meta.mkdir,
            parent_inode,
            name,
            self._mode(mode, ctx),
            ctx.uid,
            ctx.gid,
            time.time_ns(),
        )
        return await self._ref(node)

    @_boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        _check_name(name)
        await self.vol.reserve_meta()
        node = await self._meta(
            self.meta.symlink, parent_inode, name, target, ctx.uid, ctx.gid, time.time_ns()
        )
        return await self._ref(node)

    @_boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        _check_name(new_name)
        await self.vol.reserve_meta()
        node = await self._meta(self.meta.link, inode, new_parent_inode, new_name, time.time_ns())
        return await self._ref(node)

    @_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vol.reserve_meta()
        await self._meta(self.meta.unlink, parent_inode, name, time.time_ns())

    @_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vol.reserve_meta()
        await self._meta(self.meta.rmdir, parent_inode, name, time.time_ns())

    @_boundary
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await self.vol.reserve_meta()
        await self._meta(
            self.meta.rename,
            parent_inode_old,
            name_old,
            parent_inode_new,
            name_new,
            flags,
            time.time_ns(),
        )

    # -- files ---------------------------------------------------------------------------

    async def _new_handle(self, ino: int) -> int:
        await self._meta(self.meta.open, ino)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = ino
        return fh

    def _ino(self, fh: int) -> int:
        ino = self._handles.get(fh)
        if ino is None:
            raise FsError(errno.EBADF)
        return ino

    @_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = await self._meta(self.meta.get, inode)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        if node.extents is None:
            raise FsError(errno.EINVAL)  # devices and FIFOs are opened by the kernel
        if flags & os.O_TRUNC:
            # libfuse enables FUSE_CAP_ATOMIC_O_TRUNC: the truncate comes with the open.
            await self.files.truncate(inode, 0)
        return pyfuse3.FileInfo(fh=await self._new_handle(inode), keep_cache=True)

    @_boundary
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        _check_name(name)
        await self.vol.reserve_meta()
        node = await self._meta(
            self.meta.mknod,
            parent_inode,
            name,
            stat.S_IFREG | (mode & 0o7777 & ~ctx.umask),
            0,
            ctx.uid,
            ctx.gid,
            time.time_ns(),
        )
        attr = await self._ref(node)
        return pyfuse3.FileInfo(fh=await self._new_handle(node.ino), keep_cache=True), attr

    @_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.files.read(self._ino(fh), off, size)

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        ino = self._ino(fh)
        killed = _killpriv((await self._meta(self.meta.get, ino)).mode)
        if killed is not None:  # FUSE_CAP_HANDLE_KILLPRIV: a write drops set-ID bits
            await self.vol.reserve_meta()
            await self._meta(self.meta.setattr, ino, mode=killed, now_ns=time.time_ns())
        return await self.files.write(ino, off, buf)

    @_boundary
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """Default mode, KEEP_SIZE and PUNCH_HOLE|KEEP_SIZE (FileStore.fallocate); any other
        mode: EOPNOTSUPP."""
        await self.files.fallocate(self._ino(fh), mode, offset, length)

    @_boundary
    async def flush(self, fh: int) -> None:
        """close(2) has nothing to do here: it does not imply durability (as on ext4), and
        without the writeback cache every write error was already returned by write(2).
        ENOSYS tells the kernel so once: it then stops sending FLUSH for the rest of the
        mount and close(2) returns 0, one round trip less per close."""
        raise FsError(errno.ENOSYS)

    @_boundary
    async def release(self, fh: int) -> None:
        ino = self._handles.pop(fh, None)
        if ino is None:
            return
        await self.vol.reserve_meta()
        await self._meta(self.meta.release, ino)

    @_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        self._ino(fh)
        await self.files.fsync()

    # -- directories ---------------------------------------------------------------------

    @_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = await self._meta(self.meta.get, inode)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        return inode

    @_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Offsets: 1 = ".", 2 = "..", then the store's stable per-entry cookies (>= 3),
        read in batches: an entry present during the whole listing is returned once."""
        node = await self._meta(self.meta.get, fh)
        if node.dir is None:
            raise FsError(errno.ENOTDIR)
        if start_id < 1 and not pyfuse3.readdir_reply(token, b".", self._attr(node), 1):
            return
        if start_id < 2:
            parent = await self._meta(self.meta.get, node.parent) if node.parent else node
            if not pyfuse3.readdir_reply(token, b"..", self._attr(parent), 2):
                return
        cookie = max(start_id, 2)
        while True:
            batch = await self._meta(self._readdir_batch, fh, cookie)
            if not batch:
                return
            for name, child, cookie in batch:
                if not pyfuse3.readdir_reply(token, name, self._attr(child), cookie):
                    return
                await self._ref(child)  # readdirplus: the kernel counts a lookup per entry

    def _readdir_batch(self, ino: int, cookie: int) -> list[tuple[bytes, Inode, int]]:
        """Up to ``READDIR_BATCH`` entries after ``cookie`` (a synchronous metadata call:
        ``_meta`` runs it again if it misses a page)."""
        return list(itertools.islice(self.meta.readdir(ino, cookie), READDIR_BATCH))

    @_boundary
    async def releasedir(self, fh: int) -> None:
        pass

    @_boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.vol.sync()

    @_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = await self._meta(
            self.meta.statfs,
        )
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.block_size
        out.f_frsize = s.block_size
        out.f_blocks = s.blocks
        out.f_bfree = s.free_blocks
        out.f_bavail = s.free_blocks
        out.f_files = s.files
        out.f_ffree = s.free_files
        out.f_favail = s.free_files
        out.f_namemax = s.name_max
        return out

    # -- extended attributes -------------------------------------------------------------

    @_boundary
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        """pyfuse3 implements XATTR_CREATE/XATTR_REPLACE itself (through getxattr) and does
        not pass the flags on."""
        await self.vol.reserve_meta()
        await self._meta(self.meta.setxattr, inode, name, value, 0, time.time_ns())

    @_sync_boundary
    def getxattr_sync(self, inode: int, name: bytes) -> bytes:
        """Every getxattr request: the patched pyfuse3 calls this in its FUSE callback, with
        no coroutine (the kernel asks for ``security.capability`` before every write). It
        must not await anything: the value is in memory. pyfuse3 answers size probes and
        ERANGE from the value returned here."""
        return self.meta.getxattr(inode, name)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """Only pyfuse3's own XATTR_CREATE/XATTR_REPLACE checks inside a setxattr request
        call this (getxattr requests go to ``getxattr_sync``), so it is not counted as a
        request; tests/mount/test_xattr_sync.py relies on that."""
        try:
            return await self._meta(self.meta.getxattr, inode, name)
        except Exception as e:
            raise _fuse_error("getxattr", e) from None

    @_boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return await self._meta(self.meta.listxattr, inode)

    @_boundary
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.vol.reserve_meta()
        await self._meta(self.meta.removexattr, inode, name, time.time_ns())
