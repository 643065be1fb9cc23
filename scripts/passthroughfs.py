"""A minimal Python passthrough FUSE filesystem (pyfuse3 + trio), for ``make bench`` only.

It mirrors SOURCE at MOUNTPOINT, in the spirit of pyfuse3's ``examples/passthroughfs.py``:
one inode ⇄ path table, one backing descriptor per open inode, every request answered
synchronously on the trio event loop (``os.pread``/``os.pwrite`` straight from the handler).
It is the *peer* fusenas is measured against: the cost of a Python FUSE daemon that does no
work of its own. It is not part of fusenas and is not meant for anything but the benchmark.

FUSE settings are pyfuse3's defaults, except that it returns the same ``keep_cache`` and
entry/attribute timeouts as fusenas so that both peers let the kernel cache the same things:

* no writeback cache (``enable_writeback_cache = False``): every ``write(2)`` reaches the
  daemon (pass ``--writeback`` to turn it on);
* ``O_DIRECT`` is accepted and stripped from the backing open (the daemon's buffers are not
  aligned; the kernel already bypassed its page cache for the caller).

Usage: ``python scripts/passthroughfs.py SOURCE MOUNTPOINT [--writeback] [--debug]``; runs in
the foreground until unmounted (``fusermount3 -u MOUNTPOINT``) or SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import stat as stat_m
from collections import defaultdict
from typing import Any

import pyfuse3
import trio
from pyfuse3 import FUSEError

log = logging.getLogger("passthroughfs")

TIMEOUT = 1.0


def _err(exc: OSError) -> FUSEError:
    return FUSEError(exc.errno or errno.EIO)


class Passthrough(pyfuse3.Operations):  # type: ignore[misc]
    enable_writeback_cache = False

    def __init__(self, source: str) -> None:
        super().__init__()
        self._paths: dict[int, str | set[str]] = {pyfuse3.ROOT_INODE: source}
        self._lookups: dict[int, int] = defaultdict(int)
        self._fd_of: dict[int, int] = {}  # inode -> backing fd
        self._ino_of: dict[int, int] = {}  # fd -> inode
        self._opens: dict[int, int] = {}  # fd -> open count

    # -- inode table ---------------------------------------------------------------------

    def _path(self, ino: int) -> str:
        try:
            val = self._paths[ino]
        except KeyError:
            raise FUSEError(errno.ENOENT) from None
        return next(iter(val)) if isinstance(val, set) else val

    def _add(self, ino: int, path: str) -> None:
        self._lookups[ino] += 1
        val = self._paths.get(ino)
        if val is None:
            self._paths[ino] = path
        elif isinstance(val, set):
            val.add(path)
        elif val != path:
            self._paths[ino] = {path, val}

    def _drop_path(self, ino: int, path: str) -> None:
        val = self._paths.get(ino)
        if isinstance(val, set):
            val.discard(path)
            if len(val) == 1:
                self._paths[ino] = next(iter(val))
        elif val == path:
            del self._paths[ino]

    def _attr(self, path: str | None = None, fd: int | None = None) -> Any:
        try:
            st = os.lstat(path) if fd is None else os.fstat(fd)  # type: ignore[arg-type]
        except OSError as exc:
            raise _err(exc) from None
        e = pyfuse3.EntryAttributes()
        for name in (
            "st_ino",
            "st_mode",
            "st_nlink",
            "st_uid",
            "st_gid",
            "st_rdev",
            "st_size",
            "st_atime_ns",
            "st_mtime_ns",
            "st_ctime_ns",
            "st_blksize",
            "st_blocks",
        ):
            setattr(e, name, getattr(st, name))
        e.generation = 0
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        return e

    # -- namespace -----------------------------------------------------------------------

    async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> Any:
        path = os.path.join(self._path(parent), os.fsdecode(name))
        attr = self._attr(path=path)
        if name not in (b".", b".."):
            self._add(attr.st_ino, path)
        return attr

    async def forget(self, inode_list: Any) -> None:
        for ino, n in inode_list:
            if self._lookups[ino] > n:
                self._lookups[ino] -= n
                continue
            self._lookups.pop(ino, None)
            if ino not in self._fd_of:
                self._paths.pop(ino, None)

    async def getattr(self, ino: int, ctx: Any = None) -> Any:
        fd = self._fd_of.get(ino)
        return self._attr(fd=fd) if fd is not None else self._attr(path=self._path(ino))

    async def setattr(self, ino: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        target: int | str = fh if fh is not None else self._path(ino)
        try:
            if fields.update_size:
                os.truncate(target, attr.st_size)
            if fields.update_mode:
                os.chmod(target, stat_m.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else -1
                gid = attr.st_gid if fields.update_gid else -1
                os.chown(target, uid, gid)
            if fields.update_atime or fields.update_mtime:
                old = os.stat(target)
                a = attr.st_atime_ns if fields.update_atime else old.st_atime_ns
                m = attr.st_mtime_ns if fields.update_mtime else old.st_mtime_ns
                os.utime(target, ns=(a, m))
        except OSError as exc:
            raise _err(exc) from None
        return await self.getattr(ino)

    async def readlink(self, ino: int, ctx: Any) -> bytes:
        try:
            return os.fsencode(os.readlink(self._path(ino)))
        except OSError as exc:
            raise _err(exc) from None

    async def opendir(self, ino: int, ctx: Any) -> int:
        return ino

    async def readdir(self, ino: int, off: int, token: Any) -> None:
        path = self._path(ino)
        entries = []
        for name in os.listdir(path):
            attr = self._attr(path=os.path.join(path, name))
            entries.append((attr.st_ino, name, attr))
        for child, name, attr in sorted(entries):
            if child <= off:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, child):
                break
            self._add(child, os.path.join(path, name))

    async def _remove(self, parent: int, name: bytes, fn: Any) -> None:
        path = os.path.join(self._path(parent), os.fsdecode(name))
        try:
            ino = os.lstat(path).st_ino
            fn(path)
        except OSError as exc:
            raise _err(exc) from None
        if ino in self._lookups:
            self._drop_path(ino, path)

    async def unlink(self, parent: int, name: bytes, ctx: Any) -> None:
        await self._remove(parent, name, os.unlink)

    async def rmdir(self, parent: int, name: bytes, ctx: Any) -> None:
        await self._remove(parent, name, os.rmdir)

    async def symlink(self, parent: int, name: bytes, target: bytes, ctx: Any) -> Any:
        path = os.path.join(self._path(parent), os.fsdecode(name))
        try:
            os.symlink(os.fsdecode(target), path)
            os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
        except OSError as exc:
            raise _err(exc) from None
        attr = self._attr(path=path)
        self._add(attr.st_ino, path)
        return attr

    async def rename(
        self, p_old: int, n_old: bytes, p_new: int, n_new: bytes, flags: int, ctx: Any
    ) -> None:
        if flags:
            raise FUSEError(errno.EINVAL)
        old = os.path.join(self._path(p_old), os.fsdecode(n_old))
        new = os.path.join(self._path(p_new), os.fsdecode(n_new))
        try:
            os.rename(old, new)
            ino = os.lstat(new).st_ino
        except OSError as exc:
            raise _err(exc) from None
        if ino in self._lookups:
            self._drop_path(ino, old)
            self._add(ino, new)
            self._lookups[ino] -= 1

    async def link(self, ino: int, parent: int, name: bytes, ctx: Any) -> Any:
        path = os.path.join(self._path(parent), os.fsdecode(name))
        try:
            os.link(self._path(ino), path, follow_symlinks=False)
        except OSError as exc:
            raise _err(exc) from None
        self._add(ino, path)
        return await self.getattr(ino)

    async def _make(self, parent: int, name: bytes, ctx: Any, fn: Any) -> Any:
        path = os.path.join(self._path(parent), os.fsdecode(name))
        try:
            fn(path)
            os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
        except OSError as exc:
            raise _err(exc) from None
        attr = self._attr(path=path)
        self._add(attr.st_ino, path)
        return attr

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        return await self._make(parent, name, ctx, lambda p: os.mknod(p, mode & ~ctx.umask, rdev))

    async def mkdir(self, parent: int, name: bytes, mode: int, ctx: Any) -> Any:
        return await self._make(parent, name, ctx, lambda p: os.mkdir(p, mode & ~ctx.umask))

    async def statfs(self, ctx: Any) -> Any:
        root = self._path(pyfuse3.ROOT_INODE)
        out = pyfuse3.StatvfsData()
        try:
            st = os.statvfs(root)
        except OSError as exc:
            raise _err(exc) from None
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files"):
            setattr(out, name, getattr(st, name))
        out.f_ffree = st.f_ffree
        out.f_favail = st.f_favail
        out.f_namemax = st.f_namemax
        return out

    # -- files ---------------------------------------------------------------------------

    @staticmethod
    def _flags(flags: int) -> int:
        return flags & ~(os.O_DIRECT | os.O_CREAT | os.O_EXCL | os.O_NOCTTY)

    def _opened(self, ino: int, fd: int) -> Any:
        self._fd_of[ino] = fd
        self._ino_of[fd] = ino
        self._opens[fd] = 1
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def open(self, ino: int, flags: int, ctx: Any) -> Any:
        fd = self._fd_of.get(ino)
        if fd is not None:
            self._opens[fd] += 1
            if flags & os.O_TRUNC:
                os.ftruncate(fd, 0)
            return pyfuse3.FileInfo(fh=fd, keep_cache=True)
        # One descriptor per inode, shared by every open: always read-write.
        acc = self._flags(flags) & ~(os.O_ACCMODE | os.O_APPEND)
        try:
            fd = os.open(self._path(ino), acc | os.O_RDWR)
        except OSError as exc:
            raise _err(exc) from None
        return self._opened(ino, fd)

    async def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        path = os.path.join(self._path(parent), os.fsdecode(name))
        acc = self._flags(flags) & ~(os.O_ACCMODE | os.O_APPEND)
        try:
            fd = os.open(path, acc | os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode & ~ctx.umask)
            os.fchown(fd, ctx.uid, ctx.gid)
        except OSError as exc:
            raise _err(exc) from None
        attr = self._attr(fd=fd)
        self._add(attr.st_ino, path)
        return self._opened(attr.st_ino, fd), attr

    async def read(self, fd: int, off: int, size: int) -> bytes:
        try:
            return os.pread(fd, size, off)
        except OSError as exc:
            raise _err(exc) from None

    async def write(self, fd: int, off: int, buf: bytes) -> int:
        try:
            return os.pwrite(fd, buf, off)
        except OSError as exc:
            raise _err(exc) from None

    async def flush(self, fd: int) -> None:
        pass

    async def fsync(self, fd: int, datasync: bool) -> None:
        try:
            (os.fdatasync if datasync else os.fsync)(fd)
        except OSError as exc:
            raise _err(exc) from None

    async def release(self, fd: int) -> None:
        if self._opens[fd] > 1:
            self._opens[fd] -= 1
            return
        del self._opens[fd]
        ino = self._ino_of.pop(fd)
        del self._fd_of[ino]
        if ino not in self._lookups:
            self._paths.pop(ino, None)
        os.close(fd)


async def _serve(writeback: bool) -> None:
    async with trio.open_nursery() as nursery:

        async def stop() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                async for _ in sigs:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(stop)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("mountpoint")
    p.add_argument("--writeback", action="store_true", help="enable the FUSE writeback cache")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO)
    Passthrough.enable_writeback_cache = args.writeback
    ops = Passthrough(os.path.abspath(args.source))
    opts = set(pyfuse3.default_options)
    opts.add("fsname=passthroughfs")
    opts.add("default_permissions")
    pyfuse3.init(ops, args.mountpoint, opts)
    try:
        trio.run(_serve, args.writeback)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
