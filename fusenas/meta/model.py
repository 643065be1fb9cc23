"""Inodes and directories: the in-memory shape of the namespace.

Units: sizes in bytes, timestamps in nanoseconds since the epoch (signed), inode numbers are
``InodeNumber`` ints (root = 1), directory cookies are ints.

Inode invariants (fsck checks them):

* ``ino`` values come from ``MetadataStore.next_ino``, which never goes back, so
  ``(ino, generation)`` is never reused; ``generation`` is always 1 and is kept for NFS.
* exactly one of ``dir`` (S_IFDIR), ``target`` (S_IFLNK), ``extents`` (S_IFREG) is set,
  according to ``mode & S_IFMT``; devices, FIFOs and sockets have none.
* a directory has ``nlink == 2 + number of subdirectories`` while linked, 0 once removed, and
  ``parent`` = the inode its ".." names (the root is its own parent). A symlink's ``size`` is
  ``len(target)``.

Directory invariants:

* ``name -> (ino, cookie)`` in a dict: O(1) lookup whatever the size;
* every entry gets a cookie from ``next_cookie``, which only grows and starts at 3 (cookies 1
  and 2 are "." and "..", emitted by the FUSE layer). ``entries_after(c)`` yields entries with
  cookie > c in cookie order: a sorted list of cookies (removed ones stay as tombstones until
  more than half are dead, then the list is compacted) plus a dict cookie -> name. Starting a
  listing is a bisect (O(log n)); an entry present during the whole listing is yielded exactly
  once, whatever is added or removed meanwhile (new entries have larger cookies, removed ones
  are skipped, compaction is detected and the position re-found by bisect).
"""

from __future__ import annotations

import stat
from bisect import bisect_right
from collections.abc import Iterator

from fusenas.meta.extents import ExtentMap

#: The first cookie given to a directory entry; 1 and 2 are "." and "..".
FIRST_COOKIE = 3


class Directory:
    """The entries of one directory. See the module docstring."""

    __slots__ = ("_by_cookie", "_cookies", "_entries", "_epoch", "next_cookie")

    def __init__(self, next_cookie: int = FIRST_COOKIE) -> None:
        self._entries: dict[bytes, tuple[int, int]] = {}
        self._by_cookie: dict[int, bytes] = {}
        self._cookies: list[int] = []
        self._epoch = 0
        self.next_cookie = next_cookie

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: bytes) -> bool:
        return name in self._entries

    def is_empty(self) -> bool:
        return not self._entries

    def get(self, name: bytes) -> int | None:
        """The inode number ``name`` names, or None."""
        e = self._entries.get(name)
        return None if e is None else e[0]

    def entry(self, name: bytes) -> tuple[int, int] | None:
        """``(ino, cookie)`` of ``name``, or None."""
        return self._entries.get(name)

    def items(self) -> Iterator[tuple[bytes, int, int]]:
        """Every entry as (name, ino, cookie), in cookie order."""
        for c, name in self._by_cookie.items():
            yield name, self._entries[name][0], c

    def add(self, name: bytes, ino: int) -> int:
        """Add a new entry; return its cookie."""
        assert name not in self._entries
        c = self.next_cookie
        self.next_cookie += 1
        self.add_with_cookie(name, ino, c)
        return c

    def add_with_cookie(self, name: bytes, ino: int, cookie: int) -> None:
        """Add an entry with a known cookie, larger than every cookie so far (image load)."""
        assert not self._cookies or cookie > self._cookies[-1]
        self._entries[name] = (ino, cookie)
        self._by_cookie[cookie] = name
        self._cookies.append(cookie)
        if cookie >= self.next_cookie:
            self.next_cookie = cookie + 1

    def remove(self, name: bytes) -> int:
        """Remove an entry; return the inode it named."""
        ino, c = self._entries.pop(name)
        del self._by_cookie[c]
        if len(self._cookies) > 64 and len(self._by_cookie) * 2 < len(self._cookies):
            self._cookies = list(self._by_cookie)
            self._epoch += 1
        return ino

    def set_ino(self, name: bytes, ino: int) -> None:
        """Point an existing entry at another inode, keeping its cookie (RENAME_EXCHANGE)."""
        _, c = self._entries[name]
        self._entries[name] = (ino, c)

    def entries_after(self, cookie: int) -> Iterator[tuple[bytes, int, int]]:
        """Yield (name, ino, cookie) for every entry with a cookie > ``cookie``, in order."""
        cookies = self._cookies
        epoch = self._epoch
        i = bisect_right(cookies, cookie)
        last = cookie
        while True:
            if epoch != self._epoch:
                cookies = self._cookies
                epoch = self._epoch
                i = bisect_right(cookies, last)
            if i >= len(cookies):
                return
            c = cookies[i]
            i += 1
            name = self._by_cookie.get(c)
            if name is None:
                continue
            last = c
            yield name, self._entries[name][0], c


class Inode:
    """One inode. Callers outside ``fusenas.meta`` must treat it as read-only: every change
    goes through an op so it is journaled."""

    __slots__ = (
        "atime_ns",
        "ctime_ns",
        "dir",
        "extents",
        "generation",
        "gid",
        "ino",
        "mode",
        "mtime_ns",
        "nlink",
        "parent",
        "rdev",
        "size",
        "target",
        "uid",
        "xattrs",
    )

    def __init__(
        self,
        ino: int,
        mode: int,
        uid: int,
        gid: int,
        *,
        now_ns: int,
        rdev: int = 0,
        nlink: int = 1,
        generation: int = 1,
    ) -> None:
        self.ino = ino
        self.generation = generation
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = nlink
        self.size = 0
        self.atime_ns = now_ns
        self.mtime_ns = now_ns
        self.ctime_ns = now_ns
        self.rdev = rdev
        self.xattrs: dict[bytes, bytes] = {}
        self.dir: Directory | None = None
        self.target: bytes | None = None
        self.extents: ExtentMap | None = None
        self.parent = 0
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFDIR:
            self.dir = Directory()
        elif fmt == stat.S_IFLNK:
            self.target = b""
        elif fmt == stat.S_IFREG:
            self.extents = ExtentMap()

    def attributes(self) -> tuple[int, int, int, int, int, int, int, int, int, int]:
        """The fixed-size attributes, in the order the image stores them: generation, mode,
        uid, gid, nlink, size, atime_ns, mtime_ns, ctime_ns, rdev."""
        return (
            self.generation,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.size,
            self.atime_ns,
            self.mtime_ns,
            self.ctime_ns,
            self.rdev,
        )

    @property
    def is_dir(self) -> bool:
        return self.dir is not None

    @property
    def is_reg(self) -> bool:
        return self.extents is not None

    @property
    def is_symlink(self) -> bool:
        return self.target is not None

    @property
    def blocks(self) -> int:
        """Mapped 4 KiB blocks (``st_blocks`` is this times 8)."""
        return self.extents.blocks() if self.extents is not None else 0

    def __repr__(self) -> str:
        return f"Inode(ino={self.ino}, mode={self.mode:o}, nlink={self.nlink}, size={self.size})"
