"""A tiny pyfuse3 file system for tests/mount/test_xattr_sync.py: ``python getxattr_sync_fs.py
MOUNTPOINT [--no-sync]`` mounts one empty directory in the foreground until unmounted;
``--no-sync`` sets ``getxattr_sync = None`` (pyfuse3 then awaits ``getxattr`` as unpatched).

Its ``getxattr_sync`` and async ``getxattr`` answer differently, so a test sees which path
pyfuse3 took (the patched build calls ``getxattr_sync``; patches/pyfuse3-3.5.0-fusenas.patch):

    user.value      b"sync"                 (the async getxattr would answer b"async")
    user.empty      b""
    user.raise      RuntimeError            → EIO, logged, the file system goes on
    user.notbytes   a str, not bytes        → EIO, logged
    user.interrupt  KeyboardInterrupt       → EIO, then the main loop ends with it
    anything else   FUSEError(ENODATA)
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
from typing import Any

import pyfuse3
import trio


class SyncXattrFs(pyfuse3.Operations):
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = stat.S_IFDIR | 0o755
        a.st_nlink = 2
        a.st_uid = os.getuid()
        a.st_gid = os.getgid()
        return a

    def getxattr_sync(self, inode: int, name: bytes) -> Any:
        if name == b"user.value":
            return b"sync"
        if name == b"user.empty":
            return b""
        if name == b"user.raise":
            raise RuntimeError("getxattr_sync failed on purpose")
        if name == b"user.notbytes":
            return "not bytes"
        if name == b"user.interrupt":
            raise KeyboardInterrupt
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        return b"async"


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    mnt = sys.argv[1]
    ops = SyncXattrFs()
    if "--no-sync" in sys.argv[2:]:
        ops.getxattr_sync = None  # type: ignore[assignment]
    pyfuse3.init(ops, mnt, {"fsname=getxattr_sync_fs"})
    code = 0
    try:
        trio.run(pyfuse3.main)
    except* KeyboardInterrupt:  # in the exception group of pyfuse3's nursery
        logging.getLogger("getxattr_sync_fs").info("main loop ended by KeyboardInterrupt")
        code = 3
    finally:
        pyfuse3.close(unmount=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
