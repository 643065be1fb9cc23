"""MetadataStore: the whole namespace in memory, changed only by journaled op records.

Pure and synchronous: no I/O, no trio. The caller serialises access (``meta/locks.py``).

How a mutation runs (every public method that changes state):

1. **validate** against the current state; a failure raises ``FsError(errno)`` and changes
   nothing (ext4's errno for each case);
2. **decide** everything ``apply`` needs and put it in the op: timestamps, the new inode
   number, the final mode/gid, the volume blocks;
3. **journal** ``journal(encode_op(op))`` (the WAL appends a META record);
4. **apply** ``self.apply(op)``: the same function replay calls with ``decode_op(payload)``.
   ``apply`` is deterministic and never fails on an op that passed validation.

Runtime-only state, never journaled nor in the image:

* open counts (``open``/``release``): an inode whose nlink drops to 0 while open is an
  orphan; the last ``release`` journals its ``Reclaim``. After load and replay,
  ``reclaim_orphans()`` drops every nlink-0 inode, since its opens died with the process.
* pending allocations (``plan_allocation``): blocks taken out of the allocator but not yet
  mapped; ``map_blocks`` maps them, ``release_allocation`` gives them back. A crash forgets
  them, which is right: the allocator is rebuilt from the extent maps, and a replayed
  ``MapBlocks`` marks its blocks used itself.

Units: sizes in bytes, file and volume positions in ``BLOCK_SIZE`` blocks, times in ns.

Errno choices where ext4 leaves room: xattr value > 64 KiB -> E2BIG; xattr name > 255 bytes
-> ERANGE; link count limit ``LINK_MAX`` (65000) -> EMLINK; file size limit
``MAX_FILE_SIZE`` (16 TiB, ext4 with 4 KiB blocks) -> EFBIG; symlink target > 4095 bytes ->
ENAMETOOLONG; empty symlink target -> ENOENT. Blocks mapped past the end of file are allowed
(fallocate KEEP_SIZE) but only unwritten ones (crc -1): fsck reports written ones.
"""

from __future__ import annotations

import errno
import hashlib
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from fusenas.errors import FsError, NoSpaceError
from fusenas.meta.allocator import Allocator, RunSet, VolRun
from fusenas.meta.extents import UNWRITTEN, Mapping
from fusenas.meta.model import Directory, Inode
from fusenas.meta.ops import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    CreateInode,
    Link,
    MapBlocks,
    Op,
    Punch,
    Reclaim,
    RemoveXattr,
    Rename,
    SetAttr,
    SetXattr,
    Unlink,
    encode_op,
)
from fusenas.meta.paged import PagedInode, PagedInodes, PagedState, SpaceAllocator
from fusenas.units import BLOCK_SIZE

ROOT_INO = 1
NAME_MAX = 255
LINK_MAX = 65000
SYMLINK_MAX = 4095
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_CREATE = 1
XATTR_REPLACE = 2
MAX_FILE_SIZE = 1 << 44
#: Metadata bytes per inode assumed by ``statfs`` on pages (``df -i``).
BYTES_PER_INODE_GUESS = 512

Journal = Callable[[bytes], object]


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    blocks: int
    free_blocks: int
    files: int
    free_files: int
    name_max: int = NAME_MAX


#: Operations that can make the image larger (MapBlocks grows it too, but by at most
#: 32 bytes per 4 KiB block mapped, which the data area's own size bounds).
_GROWING = (CreateInode, Link, Rename, SetXattr)
#: Bytes an op may add to the image beyond its own encoding (the fixed inode record).
_IMAGE_OVERHEAD = 160


def _fail(code: int, what: str = "") -> FsError:
    return FsError(code, what or errno.errorcode.get(code, str(code)))


def _check_new_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise _fail(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name:
        raise _fail(errno.EINVAL, f"invalid name {name!r}")
    if name in (b".", b".."):
        raise _fail(errno.EEXIST)


class MetadataStore:
    """Inodes, directories, xattrs, extent maps, the allocator. See the module docstring."""

    def __init__(
        self,
        *,
        data_blocks: int,
        stripe_blocks: int,
        max_inodes: int,
        journal: Journal,
        next_ino: int,
        inodes: dict[int, Inode],
        allocator: Allocator | None = None,
    ) -> None:
        """Low level (image loading); use ``create`` for a new filesystem."""
        self.data_blocks = data_blocks
        self.stripe_blocks = stripe_blocks
        self.max_inodes = max_inodes
        self.next_ino = next_ino
        self.inodes = inodes
        if allocator is None:
            allocator = Allocator.from_used(
                data_blocks,
                (r for i in inodes.values() if i.extents is not None for r in i.extents.vol_runs()),
            )
        self.allocator = allocator
        self._journal = journal
        self._open: dict[int, int] = {}
        self.pending = RunSet()
        #: Blocks in use that no file maps (metadata chunks on pages): fsck counts them.
        self.reserved: Callable[[], list[VolRun]] = list
        #: Upper bound of the image size in bytes (set by whoever writes checkpoints), and a
        #: running over-estimate of it: the last image's size plus every growing op since.
        self.image_limit: int | None = None
        self.image_estimate = 0

    @classmethod
    def create(
        cls,
        *,
        data_blocks: int,
        stripe_blocks: int,
        max_inodes: int,
        journal: Journal,
        now_ns: int,
        root_uid: int = 0,
        root_gid: int = 0,
        root_mode: int = 0o755,
    ) -> MetadataStore:
        """A new, empty filesystem (root directory only). Journals nothing: the caller writes
        the initial image."""
        root = Inode(
            ROOT_INO,
            stat.S_IFDIR | (root_mode & 0o7777),
            root_uid,
            root_gid,
            now_ns=now_ns,
            nlink=2,
        )
        root.parent = ROOT_INO
        return cls(
            data_blocks=data_blocks,
            stripe_blocks=stripe_blocks,
            max_inodes=max_inodes,
            journal=journal,
            next_ino=ROOT_INO + 1,
            inodes={ROOT_INO: root},
        )

    @classmethod
    def on_pages(
        cls,
        state: PagedState,
        *,
        space: SpaceAllocator,
        stripe_blocks: int,
        max_inodes: int,
        journal: Journal,
        next_ino: int,
        inode_count: int,
    ) -> MetadataStore:
        """The store over the metadata tree (``fusenas.meta.paged``). While both backends
        exist (the move to pages, docs/metadata_format.md), the paged table stands in for
        the dict of inodes: it has the same face."""
        store = cls(
            data_blocks=space.data_blocks,
            stripe_blocks=stripe_blocks,
            max_inodes=max_inodes,
            journal=journal,
            next_ino=next_ino,
            inodes=cast(dict[int, Inode], PagedInodes(state, inode_count)),
            allocator=cast(Allocator, space),
        )
        space.busy = store.pending  # allocated, not yet mapped: not free, not stored
        return store

    @classmethod
    def create_on_pages(
        cls,
        state: PagedState,
        *,
        space: SpaceAllocator,
        stripe_blocks: int,
        max_inodes: int,
        journal: Journal,
        now_ns: int,
        root_uid: int = 0,
        root_gid: int = 0,
        root_mode: int = 0o755,
    ) -> MetadataStore:
        """A new, empty filesystem on pages (the root directory in the live memtable)."""
        store = cls.on_pages(
            state,
            space=space,
            stripe_blocks=stripe_blocks,
            max_inodes=max_inodes,
            journal=journal,
            next_ino=ROOT_INO + 1,
            inode_count=0,
        )
        table = cast(PagedInodes, store.inodes)
        root = table.new(
            ROOT_INO, stat.S_IFDIR | (root_mode & 0o7777), root_uid, root_gid, now_ns, 0, 2
        )
        root.parent = ROOT_INO
        table.flush_changes()
        return store

    def set_journal(self, fn: Journal) -> None:
        self._journal = fn

    def _commit(self, op: Op) -> None:
        payload = encode_op(op)
        if isinstance(op, _GROWING):
            # The image must always fit its checkpoint region, or no checkpoint could ever be
            # written again: refuse growth (ENOSPC) well before, never shrinking operations.
            growth = len(payload) + _IMAGE_OVERHEAD
            if self.image_limit is not None and self.image_estimate + growth > self.image_limit:
                raise _fail(errno.ENOSPC, "metadata area full")
            self.image_estimate += growth
        self._journal(payload)
        self.apply(op)

    # -- reading -------------------------------------------------------------------------

    def get(self, ino: int) -> Inode:
        """The inode ``ino``; ENOENT if it does not exist (any more)."""
        node = self.inodes.get(ino)
        if node is None:
            raise _fail(errno.ENOENT, f"no inode {ino}")
        return node

    def exists(self, ino: int) -> bool:
        """Whether inode ``ino`` exists."""
        return ino in self.inodes

    def _dir(self, ino: int) -> tuple[Inode, Directory]:
        node = self.get(ino)
        if node.dir is None:
            raise _fail(errno.ENOTDIR)
        if node.nlink == 0:
            raise _fail(errno.ENOENT, "directory removed")
        return node, node.dir

    def _reg(self, ino: int) -> Inode:
        node = self.get(ino)
        if node.extents is None:
            raise _fail(errno.EISDIR if node.is_dir else errno.EINVAL)
        return node

    def lookup(self, parent: int, name: bytes) -> Inode:
        """The inode ``parent/name`` names ("." and ".." included); ENOENT, ENOTDIR."""
        pnode, d = self._dir(parent)
        if name == b".":
            return pnode
        if name == b"..":
            return self.get(pnode.parent)
        if len(name) > NAME_MAX:
            raise _fail(errno.ENAMETOOLONG)
        ino = d.get(name)
        if ino is None:
            raise _fail(errno.ENOENT)
        return self.inodes[ino]

    def readdir(self, ino: int, cookie: int) -> Iterator[tuple[bytes, Inode, int]]:
        """(name, inode, cookie) of each entry after ``cookie``; resume with the last cookie.
        "." and ".." (cookies 1 and 2) are the FUSE layer's."""
        _, d = self._dir(ino)
        inodes = self.inodes
        for name, child, c in d.entries_after(cookie):
            yield name, inodes[child], c

    def getxattr(self, ino: int, name: bytes) -> bytes:
        v = self.get(ino).xattrs.get(name)
        if v is None:
            raise _fail(errno.ENODATA)
        return v

    def listxattr(self, ino: int) -> list[bytes]:
        return sorted(self.get(ino).xattrs)

    def map(self, ino: int, first_block: int, count: int) -> list[Mapping]:
        """The mapping of file blocks ``[first_block, first_block+count)``, holes included."""
        ext = self._reg(ino).extents
        assert ext is not None
        return ext.lookup(first_block, count)

    def statfs(self) -> StatFs:
        if isinstance(self.inodes, PagedInodes):
            # No inode table on pages: inodes come from free space, so the free count is
            # what the free space would hold at ~512 bytes of metadata per inode (XFS and
            # btrfs answer df -i the same way).
            free_files = self.allocator.free_blocks * (BLOCK_SIZE // BYTES_PER_INODE_GUESS)
            return StatFs(
                block_size=BLOCK_SIZE,
                blocks=self.data_blocks,
                free_blocks=self.allocator.free_blocks,
                files=len(self.inodes) + free_files,
                free_files=free_files,
            )
        return StatFs(
            block_size=BLOCK_SIZE,
            blocks=self.data_blocks,
            free_blocks=self.allocator.free_blocks,
            files=self.max_inodes,
            free_files=max(self.max_inodes - len(self.inodes), 0),
        )

    def open_count(self, ino: int) -> int:
        return self._open.get(ino, 0)

    # -- namespace -----------------------------------------------------------------------

    def _create(
        self,
        parent: int,
        name: bytes,
        mode: int,
        rdev: int,
        uid: int,
        gid: int,
        target: bytes,
        now_ns: int,
    ) -> Inode:
        pnode, d = self._dir(parent)
        _check_new_name(name)
        if name in d:
            raise _fail(errno.EEXIST)
        is_dir = stat.S_ISDIR(mode)
        if is_dir and pnode.nlink >= LINK_MAX:
            raise _fail(errno.EMLINK)
        if len(self.inodes) >= self.max_inodes:
            raise _fail(errno.ENOSPC, "no free inodes")
        if pnode.mode & stat.S_ISGID:
            gid = pnode.gid
            if is_dir:
                mode |= stat.S_ISGID
        ino = self.next_ino
        self._commit(CreateInode(parent, name, ino, mode, uid, gid, rdev, target, now_ns))
        return self.inodes[ino]

    def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int, now_ns: int
    ) -> Inode:
        """A regular file, device, FIFO or socket (mode without type bits = regular)."""
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt not in (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise _fail(errno.EINVAL, "mknod of a directory or symlink")
        if fmt not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0
        return self._create(parent, name, fmt | (mode & 0o7777), rdev, uid, gid, b"", now_ns)

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int, now_ns: int) -> Inode:
        return self._create(parent, name, stat.S_IFDIR | (mode & 0o7777), 0, uid, gid, b"", now_ns)

    def symlink(
        self, parent: int, name: bytes, target: bytes, uid: int, gid: int, now_ns: int
    ) -> Inode:
        if not target:
            raise _fail(errno.ENOENT, "empty symlink target")
        if len(target) > SYMLINK_MAX:
            raise _fail(errno.ENAMETOOLONG)
        return self._create(parent, name, stat.S_IFLNK | 0o777, 0, uid, gid, target, now_ns)

    def link(self, ino: int, new_parent: int, new_name: bytes, now_ns: int) -> Inode:
        node = self.get(ino)
        if node.is_dir:
            raise _fail(errno.EPERM, "hard link to a directory")
        _, d = self._dir(new_parent)
        _check_new_name(new_name)
        if new_name in d:
            raise _fail(errno.EEXIST)
        if node.nlink == 0:
            raise _fail(errno.ENOENT, "inode has no links")
        if node.nlink >= LINK_MAX:
            raise _fail(errno.EMLINK)
        self._commit(Link(ino, new_parent, new_name, now_ns))
        return node

    def _maybe_reclaim(self, ino: int) -> None:
        node = self.inodes.get(ino)
        if node is not None and node.nlink == 0 and not self._open.get(ino):
            self._commit(Reclaim(ino))

    # -- reading ahead on pages (docs/metadata_format.md, "How MetadataStore moves onto
    # pages"): validation reads every page ``apply`` will read, so that ``apply`` never
    # misses one after its op was journaled. Nothing to do while the state is in memory.

    def _prefetch(
        self, ino: int, first: int = 0, count: int | None = None, runs: Sequence[VolRun] = ()
    ) -> None:
        """The extent items of file blocks ``[first, first+count)`` of ``ino`` (``count``
        None: to the end) and the free-space groups of their blocks and of ``runs``."""
        if not isinstance(self.inodes, PagedInodes):
            return
        node = self.inodes.get(ino)
        mapped: list[VolRun] = []
        if node is not None and node.extents is not None:
            end = node.extents.end_block() if count is None else first + count
            mapped = [
                (m.vol_block, m.count)
                for m in node.extents.lookup(first, max(end - first, 0))
                if m.vol_block is not None
            ]
        for s, n in (*mapped, *runs):
            self.allocator.overlap(s, n)

    def prefetch_op(self, op: Op) -> None:
        """Replay: read every page ``apply(op)`` will read (the live path's validation did
        it; a replayed op has none). Raises ``PageMiss`` and changes nothing; the caller
        loads the page and calls again, then applies."""
        if not isinstance(self.inodes, PagedInodes):
            return
        inodes = self.inodes
        if isinstance(op, CreateInode | Link):
            inodes.get(op.parent)
            inodes.get(op.ino)
            dnode = inodes.get(op.parent)
            if dnode is not None and dnode.dir is not None:
                dnode.dir.get(op.name)
        elif isinstance(op, Unlink):
            pnode = inodes.get(op.parent)
            if pnode is not None and pnode.dir is not None:
                child = pnode.dir.get(op.name)
                if child is not None:
                    inodes.get(child)
        elif isinstance(op, Rename):
            for parent, name in ((op.old_parent, op.old_name), (op.new_parent, op.new_name)):
                pnode = inodes.get(parent)
                if pnode is not None and pnode.dir is not None:
                    child = pnode.dir.get(name)
                    if child is not None:
                        inodes.get(child)
        elif isinstance(op, SetAttr):
            node = inodes.get(op.ino)
            if node is not None and op.size is not None and op.size < node.size:
                self._prefetch(op.ino, -(-op.size // BLOCK_SIZE))
        elif isinstance(op, SetXattr | RemoveXattr):
            node = inodes.get(op.ino)
            if node is not None:
                node.xattrs.get(op.name)
        elif isinstance(op, MapBlocks):
            self._prefetch(op.ino, op.first_block, len(op.crcs), op.runs)
        elif isinstance(op, Punch):
            self._prefetch(op.ino, op.first_block, op.count)
        elif isinstance(op, Reclaim):
            self._prefetch_reclaim(op.ino)

    def _prefetch_reclaim(self, ino: int) -> None:
        """What reclaiming ``ino`` reads: its blocks and its xattrs."""
        if isinstance(self.inodes, PagedInodes) and ino in self.inodes:
            self._prefetch(ino)
            self.inodes[ino].xattrs.keys_nowait()

    def unlink(self, parent: int, name: bytes, now_ns: int) -> None:
        _, d = self._dir(parent)
        if name in (b".", b".."):
            raise _fail(errno.EISDIR)
        ino = d.get(name)
        if ino is None:
            raise _fail(errno.ENAMETOOLONG if len(name) > NAME_MAX else errno.ENOENT)
        if self.inodes[ino].is_dir:
            raise _fail(errno.EISDIR)
        self._prefetch_reclaim(ino)
        self._commit(Unlink(parent, name, now_ns))
        self._maybe_reclaim(ino)

    def rmdir(self, parent: int, name: bytes, now_ns: int) -> None:
        _, d = self._dir(parent)
        if name == b".":
            raise _fail(errno.EINVAL)
        if name == b"..":
            raise _fail(errno.ENOTEMPTY)
        ino = d.get(name)
        if ino is None:
            raise _fail(errno.ENAMETOOLONG if len(name) > NAME_MAX else errno.ENOENT)
        child = self.inodes[ino].dir
        if child is None:
            raise _fail(errno.ENOTDIR)
        if not child.is_empty():
            raise _fail(errno.ENOTEMPTY)
        self._prefetch_reclaim(ino)
        self._commit(Unlink(parent, name, now_ns))
        self._maybe_reclaim(ino)

    def _is_ancestor(self, anc: int, ino: int) -> bool:
        """Whether directory ``anc`` is ``ino`` or one of its ancestors."""
        while True:
            if ino == anc:
                return True
            if ino == ROOT_INO:
                return False
            ino = self.inodes[ino].parent

    def rename(
        self,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int,
        now_ns: int,
    ) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise _fail(errno.EINVAL, f"rename flags {flags}")
        op_node, od = self._dir(old_parent)
        np_node, nd = self._dir(new_parent)
        if old_name in (b".", b"..") or new_name in (b".", b".."):
            raise _fail(errno.EINVAL, "rename of . or ..")
        if len(old_name) > NAME_MAX or len(new_name) > NAME_MAX:
            raise _fail(errno.ENAMETOOLONG)
        if not new_name or b"/" in new_name or b"\0" in new_name:
            raise _fail(errno.EINVAL)
        src_ino = od.get(old_name)
        if src_ino is None:
            raise _fail(errno.ENOENT)
        dst_ino = nd.get(new_name)
        src = self.inodes[src_ino]
        if flags & RENAME_EXCHANGE and dst_ino is None:
            raise _fail(errno.ENOENT)
        if flags & RENAME_NOREPLACE and dst_ino is not None:
            raise _fail(errno.EEXIST)
        if dst_ino == src_ino:
            return
        if src.is_dir and self._is_ancestor(src_ino, new_parent):
            raise _fail(errno.EINVAL, "directory into its own subtree")
        dst = None if dst_ino is None else self.inodes[dst_ino]
        if flags & RENAME_EXCHANGE:
            assert dst is not None
            if dst.is_dir and self._is_ancestor(dst.ino, old_parent):
                raise _fail(errno.EINVAL, "directory into its own subtree")
            if old_parent != new_parent:
                if src.is_dir and not dst.is_dir and np_node.nlink >= LINK_MAX:
                    raise _fail(errno.EMLINK)
                if dst.is_dir and not src.is_dir and op_node.nlink >= LINK_MAX:
                    raise _fail(errno.EMLINK)
        else:
            if dst is not None:
                if src.is_dir and not dst.is_dir:
                    raise _fail(errno.ENOTDIR)
                if not src.is_dir and dst.is_dir:
                    raise _fail(errno.EISDIR)
                if dst.dir is not None and not dst.dir.is_empty():
                    raise _fail(errno.ENOTEMPTY)
            if (
                src.is_dir
                and old_parent != new_parent
                and (dst is None or not dst.is_dir)
                and np_node.nlink >= LINK_MAX
            ):
                raise _fail(errno.EMLINK)
        if dst is not None and not flags & RENAME_EXCHANGE:
            self._prefetch_reclaim(dst.ino)
        self._commit(Rename(old_parent, old_name, new_parent, new_name, flags, now_ns))
        if dst is not None and not flags & RENAME_EXCHANGE:
            self._maybe_reclaim(dst.ino)

    # -- open counts and orphans ---------------------------------------------------------

    def open(self, ino: int) -> None:
        """Count one more open of ``ino`` (runtime only)."""
        self.get(ino)
        self._open[ino] = self._open.get(ino, 0) + 1

    def release(self, ino: int) -> None:
        """Count one open less; the last release of an unlinked inode reclaims it."""
        n = self._open.get(ino, 0)
        assert n > 0, f"release of inode {ino} that is not open"
        if n == 1:
            self._prefetch_reclaim(ino)
            del self._open[ino]
            self._maybe_reclaim(ino)
        else:
            self._open[ino] = n - 1

    def orphans(self) -> list[int]:
        """Inodes with no links (open or waiting for reclaim)."""
        return sorted(i for i, n in self.inodes.items() if n.nlink == 0)

    def reclaim_orphans(self) -> int:
        """After load and replay: reclaim every inode with no links (journaled). Returns how
        many were reclaimed."""
        victims = [i for i in self.orphans() if not self._open.get(i)]
        for ino in victims:
            self._prefetch_reclaim(ino)
            self._commit(Reclaim(ino))
        return len(victims)

    # -- attributes ----------------------------------------------------------------------

    def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        now_ns: int,
    ) -> Inode:
        """chmod (type bits kept), chown, truncate (regular files), utimens. ctime is always
        ``now_ns``; a size change also sets mtime unless ``mtime_ns`` is given."""
        node = self.get(ino)
        if size is not None:
            if node.is_dir:
                raise _fail(errno.EISDIR)
            if node.extents is None:
                raise _fail(errno.EINVAL)
            if size < 0:
                raise _fail(errno.EINVAL)
            if size > MAX_FILE_SIZE:
                raise _fail(errno.EFBIG)
            if size != node.size and mtime_ns is None:
                mtime_ns = now_ns
        if mode is not None:
            mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
        if size is not None and size < node.size:
            self._prefetch(ino, -(-size // BLOCK_SIZE))
        self._commit(SetAttr(ino, mode, uid, gid, size, atime_ns, mtime_ns, now_ns))
        return node

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int, now_ns: int) -> None:
        node = self.get(ino)
        if flags & ~(XATTR_CREATE | XATTR_REPLACE):
            raise _fail(errno.EINVAL, f"xattr flags {flags}")
        if not name:
            raise _fail(errno.EINVAL, "empty xattr name")
        if len(name) > XATTR_NAME_MAX:
            raise _fail(errno.ERANGE)
        if len(value) > XATTR_SIZE_MAX:
            raise _fail(errno.E2BIG)
        exists = name in node.xattrs
        if flags & XATTR_CREATE and exists:
            raise _fail(errno.EEXIST)
        if flags & XATTR_REPLACE and not exists:
            raise _fail(errno.ENODATA)
        self._commit(SetXattr(ino, bytes(name), bytes(value), now_ns))

    def removexattr(self, ino: int, name: bytes, now_ns: int) -> None:
        node = self.get(ino)
        if name not in node.xattrs:
            raise _fail(errno.ENODATA)
        self._commit(RemoveXattr(ino, name, now_ns))

    # -- file blocks ---------------------------------------------------------------------

    def plan_allocation(self, ino: int, first_block: int, count: int) -> list[VolRun]:
        """Take ``count`` volume blocks for file blocks ``first_block...`` out of free space
        without journaling (they stay pending until ``map_blocks`` or
        ``release_allocation``). Goal: the block after the one holding ``first_block - 1``,
        else after the file's last mapped block. ENOSPC if there are too few free blocks."""
        ext = self._reg(ino).extents
        assert ext is not None
        goal: int | None = None
        if first_block > 0:
            prev = ext.vol_block_of(first_block - 1)
            if prev is not None:
                goal = prev + 1
        last = ext.last_run()
        if goal is None and last is not None:
            goal = last.vol_block + last.count
        try:
            runs = self.allocator.allocate(count, goal=goal, stripe_blocks=self.stripe_blocks)
        except NoSpaceError as e:
            raise _fail(errno.ENOSPC, str(e)) from e
        for s, n in runs:
            self.pending.add(s, n)
        return runs

    def release_allocation(self, runs: Sequence[VolRun]) -> None:
        """Give back pending blocks that will not be mapped."""
        for s, n in runs:
            self.pending.remove(s, n)
        self.allocator.release(runs)

    def map_blocks(
        self,
        ino: int,
        first_block: int,
        runs: Sequence[VolRun],
        crcs: Sequence[int],
        new_size: int | None,
        now_ns: int,
    ) -> Inode:
        """Map file blocks from ``first_block`` to ``runs`` once their data is in the volume
        cache; ``crcs`` one per block (-1 = unwritten). Each block must be pending, free, or
        one this very call displaces (an in-place rewrite). Sets mtime/ctime, and the size if
        ``new_size`` is given."""
        node = self._reg(ino)
        ext = node.extents
        assert ext is not None
        total = sum(n for _, n in runs)
        if total != len(crcs) or any(n <= 0 for _, n in runs) or first_block < 0:
            raise _fail(errno.EINVAL, "runs and checksums disagree")
        if any(not (c == UNWRITTEN or 0 <= c < 2**32) for c in crcs):
            raise _fail(errno.EINVAL, "invalid checksum")
        if (first_block + total) * BLOCK_SIZE > MAX_FILE_SIZE + BLOCK_SIZE or (
            new_size is not None and not 0 <= new_size <= MAX_FILE_SIZE
        ):
            raise _fail(errno.EFBIG)
        seen = RunSet() if len(runs) > 1 else None
        displaced: RunSet | None = None
        for s, n in runs:
            if s < 0 or s + n > self.data_blocks:
                raise _fail(errno.EINVAL, f"run ({s}, {n}) outside the data area")
            if seen is not None:
                if seen.overlap(s, n):
                    raise _fail(errno.EINVAL, "runs overlap")
                seen.add(s, n)
            if self.pending.overlap(s, n) == n:
                continue  # the usual case: blocks planned by plan_allocation
            if displaced is None:
                displaced = RunSet()
                for m in ext.lookup(first_block, total):
                    if m.vol_block is not None:
                        displaced.add(m.vol_block, m.count)
            ok = self.pending.overlap(s, n) + self.allocator.overlap(s, n)
            ok += displaced.overlap(s, n)
            if ok != n:
                raise _fail(errno.EINVAL, f"run ({s}, {n}) belongs to someone else")
        self._prefetch(ino, first_block, total, runs)
        self._commit(
            MapBlocks(
                ino,
                first_block,
                tuple((s, n) for s, n in runs),
                tuple(crcs),
                new_size,
                now_ns,
                now_ns,
            )
        )
        return node

    def fallocate(
        self, ino: int, first_block: int, count: int, new_size: int | None, now_ns: int
    ) -> None:
        """Allocate the holes of file blocks ``[first_block, first_block+count)`` as unwritten
        blocks (plan_allocation + map_blocks with crc -1), then set the size if given
        (``None`` = KEEP_SIZE). ENOSPC before anything changes if the holes do not fit."""
        ext = self._reg(ino).extents
        assert ext is not None
        holes = [m for m in ext.lookup(first_block, count) if m.vol_block is None]
        if sum(m.count for m in holes) > self.allocator.free_blocks:
            raise _fail(errno.ENOSPC)
        for m in holes:
            runs = self.plan_allocation(ino, m.file_block, m.count)
            self.map_blocks(ino, m.file_block, runs, [UNWRITTEN] * m.count, None, now_ns)
        node = self.inodes[ino]
        if new_size is not None and new_size > node.size:
            self.setattr(ino, size=new_size, now_ns=now_ns)

    def punch(self, ino: int, first_block: int, count: int, now_ns: int) -> None:
        """Unmap and free file blocks ``[first_block, first_block+count)``; size unchanged."""
        self._reg(ino)
        if first_block < 0 or count < 0:
            raise _fail(errno.EINVAL)
        self._prefetch(ino, first_block, count)
        self._commit(Punch(ino, first_block, count, now_ns))

    # -- apply ---------------------------------------------------------------------------

    def apply(self, op: Op) -> None:
        """Apply one validated op (live, or replayed from the journal). Deterministic."""
        handler = _APPLY[type(op)]
        handler(self, op)
        if isinstance(self.inodes, PagedInodes):
            self.inodes.flush_changes()

    def _apply_create(self, op: CreateInode) -> None:
        pnode = self.inodes[op.parent]
        is_dir = stat.S_ISDIR(op.mode)
        nlink = 2 if is_dir else 1
        node: Inode | PagedInode
        if isinstance(self.inodes, PagedInodes):
            node = self.inodes.new(op.ino, op.mode, op.uid, op.gid, op.now_ns, op.rdev, nlink)
        else:
            node = Inode(
                op.ino, op.mode, op.uid, op.gid, now_ns=op.now_ns, rdev=op.rdev, nlink=nlink
            )
            self.inodes[op.ino] = node
        if is_dir:
            node.parent = op.parent
            pnode.nlink += 1
        if node.target is not None:
            node.target = op.target
            node.size = len(op.target)
        assert pnode.dir is not None
        pnode.dir.add(op.name, op.ino)
        pnode.mtime_ns = pnode.ctime_ns = op.now_ns
        self.next_ino = max(self.next_ino, op.ino + 1)

    def _apply_link(self, op: Link) -> None:
        node = self.inodes[op.ino]
        pnode = self.inodes[op.parent]
        assert pnode.dir is not None
        pnode.dir.add(op.name, op.ino)
        node.nlink += 1
        node.ctime_ns = op.now_ns
        pnode.mtime_ns = pnode.ctime_ns = op.now_ns

    def _drop_link(self, pnode: Inode, node: Inode, now_ns: int) -> None:
        if node.is_dir:
            node.nlink = 0
            pnode.nlink -= 1
        else:
            node.nlink -= 1
        node.ctime_ns = now_ns

    def _apply_unlink(self, op: Unlink) -> None:
        pnode = self.inodes[op.parent]
        assert pnode.dir is not None
        node = self.inodes[pnode.dir.remove(op.name)]
        self._drop_link(pnode, node, op.now_ns)
        pnode.mtime_ns = pnode.ctime_ns = op.now_ns

    def _apply_rename(self, op: Rename) -> None:
        opn = self.inodes[op.old_parent]
        npn = self.inodes[op.new_parent]
        od, nd = opn.dir, npn.dir
        assert od is not None and nd is not None
        src_ino = od.get(op.old_name)
        dst_ino = nd.get(op.new_name)
        assert src_ino is not None
        src = self.inodes[src_ino]
        moved = op.old_parent != op.new_parent
        if op.flags & RENAME_EXCHANGE:
            assert dst_ino is not None
            dst = self.inodes[dst_ino]
            od.set_ino(op.old_name, dst_ino)
            nd.set_ino(op.new_name, src_ino)
            if moved:
                if src.is_dir:
                    opn.nlink -= 1
                    npn.nlink += 1
                    src.parent = op.new_parent
                if dst.is_dir:
                    npn.nlink -= 1
                    opn.nlink += 1
                    dst.parent = op.old_parent
            dst.ctime_ns = op.now_ns
        else:
            if dst_ino is not None:
                nd.remove(op.new_name)
                self._drop_link(npn, self.inodes[dst_ino], op.now_ns)
            od.remove(op.old_name)
            nd.add(op.new_name, src_ino)
            if src.is_dir and moved:
                opn.nlink -= 1
                npn.nlink += 1
                src.parent = op.new_parent
        src.ctime_ns = op.now_ns
        opn.mtime_ns = opn.ctime_ns = op.now_ns
        npn.mtime_ns = npn.ctime_ns = op.now_ns

    def _apply_setattr(self, op: SetAttr) -> None:
        node = self.inodes[op.ino]
        if op.mode is not None:
            node.mode = op.mode
        if op.uid is not None:
            node.uid = op.uid
        if op.gid is not None:
            node.gid = op.gid
        if op.size is not None:
            if op.size < node.size and node.extents is not None:
                keep = -(-op.size // BLOCK_SIZE)
                self.allocator.free(node.extents.truncate(keep))
            node.size = op.size
        if op.atime_ns is not None:
            node.atime_ns = op.atime_ns
        if op.mtime_ns is not None:
            node.mtime_ns = op.mtime_ns
        node.ctime_ns = op.ctime_ns

    def _apply_setxattr(self, op: SetXattr) -> None:
        node = self.inodes[op.ino]
        node.xattrs[op.name] = op.value
        node.ctime_ns = op.now_ns

    def _apply_removexattr(self, op: RemoveXattr) -> None:
        node = self.inodes[op.ino]
        del node.xattrs[op.name]
        node.ctime_ns = op.now_ns

    def _apply_map(self, op: MapBlocks) -> None:
        node = self.inodes[op.ino]
        assert node.extents is not None
        displaced = node.extents.set(op.first_block, op.runs, op.crcs)
        self.allocator.free(displaced)
        self.allocator.ensure_used(op.runs)
        for s, n in op.runs:
            self.pending.remove_present(s, n)
        if op.new_size is not None:
            node.size = op.new_size
        node.mtime_ns = op.mtime_ns
        node.ctime_ns = op.ctime_ns

    def _apply_punch(self, op: Punch) -> None:
        node = self.inodes[op.ino]
        assert node.extents is not None
        self.allocator.free(node.extents.punch(op.first_block, op.count))
        node.mtime_ns = node.ctime_ns = op.now_ns

    def _apply_reclaim(self, op: Reclaim) -> None:
        node = self.inodes.pop(op.ino)
        if node.extents is not None:
            self.allocator.free(node.extents.vol_runs())
        self._open.pop(op.ino, None)

    # -- comparison (tests, fsck) --------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """The whole persistent state (and the allocator) as plain Python values."""
        inodes: dict[int, object] = {}
        for ino in sorted(self.inodes):
            n = self.inodes[ino]
            inodes[ino] = (
                *n.attributes(),
                n.parent,
                sorted(n.xattrs.items()),
                n.target,
                None if n.dir is None else (n.dir.next_cookie, list(n.dir.items())),
                None
                if n.extents is None
                else [(r.file_block, r.vol_block, r.count, list(r.crcs)) for r in n.extents],
            )
        return {
            "data_blocks": self.data_blocks,
            "stripe_blocks": self.stripe_blocks,
            "max_inodes": self.max_inodes,
            "next_ino": self.next_ino,
            "inodes": inodes,
            "free": self.allocator.runs(),
        }

    def state_digest(self) -> str:
        """A hash of ``snapshot()``: equal digests = equal persistent state."""
        return hashlib.sha256(repr(self.snapshot()).encode()).hexdigest()


_APPLY: dict[type, Callable[[MetadataStore, Op], None]] = {
    CreateInode: MetadataStore._apply_create,  # type: ignore[dict-item]
    Link: MetadataStore._apply_link,  # type: ignore[dict-item]
    Unlink: MetadataStore._apply_unlink,  # type: ignore[dict-item]
    Rename: MetadataStore._apply_rename,  # type: ignore[dict-item]
    SetAttr: MetadataStore._apply_setattr,  # type: ignore[dict-item]
    SetXattr: MetadataStore._apply_setxattr,  # type: ignore[dict-item]
    RemoveXattr: MetadataStore._apply_removexattr,  # type: ignore[dict-item]
    MapBlocks: MetadataStore._apply_map,  # type: ignore[dict-item]
    Punch: MetadataStore._apply_punch,  # type: ignore[dict-item]
    Reclaim: MetadataStore._apply_reclaim,  # type: ignore[dict-item]
}
