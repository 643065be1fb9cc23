"""The metadata store's state on pages: the faces ``MetadataStore`` uses, over tree items.

``MetadataStore`` reaches its state through ``self.inodes`` (inodes, each with a directory,
an extent map and xattrs) and ``self.allocator``. This module gives it the same faces over
the metadata tree (docs/metadata_format.md, "How MetadataStore moves onto pages"):

* ``PagedInodes`` — the inode table: ``get``, ``[]``, ``in``, ``pop``, ``[]=``, ``len``;
  decoded inodes are cached (bounded) and an inode changed by ``apply`` is written to the
  live memtable by ``flush_changes`` when the op ends;
* ``PagedInode`` with ``DirView``, ``ExtentView`` and ``XattrView`` — what ``Inode`` has
  with ``Directory``, ``ExtentMap`` and a dict;
* ``SpaceAllocator`` — ``Allocator``'s face over ``SpaceMap``, with the replay window's
  freed-block sets in RAM (proportional to the change since the older checkpoint).

Every read goes through ``PagedState.view`` and may raise ``PageMiss``; the store's
discipline (validation reads what ``apply`` will read) keeps ``apply`` from missing.
"""

from __future__ import annotations

import stat
import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fusenas.meta import dir_items, extent_items
from fusenas.meta.allocator import RunSet
from fusenas.meta.btree import PageSource, Tree
from fusenas.meta.extents import UNWRITTEN, Mapping, VolRun
from fusenas.meta.keys import (
    Kind,
    inode_key,
    name_hash,
    prefix,
    prefix_end,
    split_u64,
    symlink_key,
)
from fusenas.meta.memtable import LayeredView, Memtable
from fusenas.meta.model import FIRST_COOKIE
from fusenas.meta.records import DirEntry, InodeRecord
from fusenas.meta.space import GROUP_BLOCKS, SpaceMap, zero_runs

#: Decoded inodes kept (clean ones are dropped least recently used first).
INODE_CACHE = 4096
#: Bytes of an xattr value per item (values up to 64 KiB span several items).
XATTR_FRAGMENT = 1024

_NS = 1_000_000_000


class PagedState:
    """The live memtable, the frozen one while a checkpoint merges it, and the published
    tree; ``view`` reads through all three."""

    def __init__(self, src: PageSource, tree: Tree) -> None:
        self.src = src
        self.tree = tree
        self.live = Memtable()
        self.frozen: Memtable | None = None

    @property
    def view(self) -> LayeredView:
        layers = [self.live] if self.frozen is None else [self.live, self.frozen]
        return LayeredView(layers, self.src, self.tree)


def _ns(t: tuple[int, int]) -> int:
    return t[0] * _NS + t[1]


def _ts(ns: int) -> tuple[int, int]:
    return divmod(ns, _NS)


class PagedInode:
    """One inode, decoded; the same attributes as ``fusenas.meta.model.Inode``. Setting a
    persistent attribute marks it dirty in its table."""

    _FIELDS = frozenset(
        (
            "generation",
            "mode",
            "uid",
            "gid",
            "nlink",
            "size",
            "blocks",
            "atime_ns",
            "mtime_ns",
            "ctime_ns",
            "rdev",
            "parent",
            "next_cookie",
            "target",
        )
    )

    _table: PagedInodes
    ino: int
    generation: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    blocks: int
    rdev: int
    parent: int
    next_cookie: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    target: bytes | None
    dir: DirView | None
    extents: ExtentView | None
    xattrs: XattrView

    def __init__(
        self, table: PagedInodes, ino: int, rec: InodeRecord, target: bytes | None
    ) -> None:
        d = self.__dict__
        d["_table"] = table
        d["ino"] = ino
        d["generation"] = rec.generation
        d["mode"] = rec.mode
        d["uid"] = rec.uid
        d["gid"] = rec.gid
        d["nlink"] = rec.nlink
        d["size"] = rec.size
        d["blocks"] = rec.blocks
        d["rdev"] = rec.rdev
        d["parent"] = rec.parent
        d["next_cookie"] = rec.next_cookie
        d["atime_ns"] = _ns(rec.atime)
        d["mtime_ns"] = _ns(rec.mtime)
        d["ctime_ns"] = _ns(rec.ctime)
        d["target"] = target
        fmt = stat.S_IFMT(rec.mode)
        d["dir"] = DirView(table, self) if fmt == stat.S_IFDIR else None
        d["extents"] = ExtentView(table, self) if fmt == stat.S_IFREG else None
        d["xattrs"] = XattrView(table, ino)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._FIELDS:
            raise AttributeError(f"{name} is not a persistent inode attribute")
        self.__dict__[name] = value
        self._table._dirty[self.ino] = self

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def record(self) -> InodeRecord:
        return InodeRecord(
            self.generation,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.size,
            self.blocks,
            self.rdev,
            self.parent,
            self.next_cookie,
            0,
            _ts(self.atime_ns),
            _ts(self.mtime_ns),
            _ts(self.ctime_ns),
        )

    def attributes(self) -> tuple[int, int, int, int, int, int, int, int, int, int]:
        """As ``Inode.attributes``: generation, mode, uid, gid, nlink, size, atime_ns,
        mtime_ns, ctime_ns, rdev."""
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


class PagedInodes:
    """The inode table over ``INODE`` (and ``SYMLINK``) items; see the module docstring."""

    def __init__(self, state: PagedState, count: int) -> None:
        self.state = state
        self.count = count
        self._cache: OrderedDict[int, PagedInode] = OrderedDict()
        self._dirty: dict[int, PagedInode] = {}
        self._gone: set[int] = set()

    def _load(self, ino: int) -> PagedInode | None:
        node = self._cache.get(ino)
        if node is not None:
            self._cache.move_to_end(ino)
            return node
        if ino in self._gone:
            return None
        view = self.state.view
        raw = view.get_nowait(inode_key(ino))
        if raw is None:
            return None
        rec = InodeRecord.decode(raw)
        target = view.get_nowait(symlink_key(ino)) if stat.S_ISLNK(rec.mode) else None
        node = PagedInode(self, ino, rec, target)
        self._cache[ino] = node
        while len(self._cache) > INODE_CACHE:
            old, victim = next(iter(self._cache.items()))
            if old in self._dirty:
                break  # never drop a change before it is written
            del self._cache[old]
            del victim
        return node

    def get(self, ino: int) -> PagedInode | None:
        return self._load(ino)

    def __getitem__(self, ino: int) -> PagedInode:
        node = self._load(ino)
        if node is None:
            raise KeyError(ino)
        return node

    def __contains__(self, ino: object) -> bool:
        return isinstance(ino, int) and self._load(ino) is not None

    def __len__(self) -> int:
        return self.count

    def new(
        self, ino: int, mode: int, uid: int, gid: int, now_ns: int, rdev: int, nlink: int
    ) -> PagedInode:
        """A new inode in the table (``CreateInode``): dirty until the op ends."""
        t = _ts(now_ns)
        rec = InodeRecord(1, mode, uid, gid, nlink, 0, 0, rdev, 0, FIRST_COOKIE, 0, t, t, t)
        target = b"" if stat.S_ISLNK(mode) else None
        node = PagedInode(self, ino, rec, target)
        self._gone.discard(ino)
        self._cache[ino] = node
        self._dirty[ino] = node
        self.count += 1
        return node

    def pop(self, ino: int) -> PagedInode:
        """Remove inode ``ino`` (``Reclaim``: its blocks and entries are already gone)."""
        node = self[ino]
        mem = self.state.live
        mem.delete(inode_key(ino))
        if node.target is not None:
            mem.delete(symlink_key(ino))
        for key in node.xattrs.keys_nowait():
            mem.delete(key)
        self._cache.pop(ino, None)
        self._dirty.pop(ino, None)
        self._gone.add(ino)
        self.count -= 1
        return node

    def flush_changes(self) -> None:
        """Write every inode changed by the op that just ended to the live memtable."""
        mem = self.state.live
        for ino, node in self._dirty.items():
            mem.put(inode_key(ino), node.record().encode())
            if node.target is not None:
                mem.put(symlink_key(ino), node.target)
        self._dirty.clear()
        self._gone.clear()

    def __iter__(self) -> Iterator[int]:
        """Every inode number, in order (a scan: O(inodes); fsck and tests only)."""
        start = bytes((Kind.INODE,))
        end = bytes((Kind.INODE + 1,))
        at: bytes | None = start
        while at is not None:
            batch, at = self.state.view.items_nowait(at, end, 256)
            for key, _ in batch:
                yield split_u64(key, 1)

    def items(self) -> Iterator[tuple[int, PagedInode]]:
        for ino in list(self):
            yield ino, self[ino]


class DirView:
    """``Directory``'s face over ``DIRENT``/``DIRINDEX`` items of one directory."""

    def __init__(self, table: PagedInodes, node: PagedInode) -> None:
        self._table = table
        self._node = node

    def _view(self) -> LayeredView:
        return self._table.state.view

    def get(self, name: bytes) -> int | None:
        e = dir_items.lookup(self._view(), self._node.ino, name)
        return e.ino if e is not None else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, bytes) and self.get(name) is not None

    def is_empty(self) -> bool:
        return dir_items.is_empty(self._view(), self._node.ino)

    @property
    def next_cookie(self) -> int:
        return int(self._node.next_cookie)

    def _kind(self, ino: int) -> int:
        return int(self._table[ino].mode) >> 12

    def add(self, name: bytes, ino: int) -> int:
        cookie = self._node.next_cookie
        self._node.next_cookie = cookie + 1
        mem = self._table.state.live
        dir_items.add(mem, self._node.ino, name, DirEntry(ino, cookie, self._kind(ino)))
        return int(cookie)

    def remove(self, name: bytes) -> int:
        e = dir_items.lookup(self._view(), self._node.ino, name)
        assert e is not None, f"no entry {name!r}"
        dir_items.remove(self._table.state.live, self._node.ino, name, e)
        return e.ino

    def set_ino(self, name: bytes, ino: int) -> None:
        e = dir_items.lookup(self._view(), self._node.ino, name)
        assert e is not None, f"no entry {name!r}"
        mem = self._table.state.live
        dir_items.add(mem, self._node.ino, name, DirEntry(ino, e.cookie, self._kind(ino)))

    def entries_after(self, cookie: int) -> Iterator[tuple[bytes, int, int]]:
        while True:
            batch = dir_items.entries_after(self._view(), self._node.ino, cookie, 128)
            if not batch:
                return
            for name, ino, _kind, c in batch:
                yield name, ino, c
            cookie = batch[-1][3]

    def items(self) -> Iterator[tuple[bytes, int, int]]:
        return self.entries_after(0)


class _Run:
    """What ``ExtentMap.last_run`` returns: where the last mapped blocks are."""

    def __init__(self, vol_block: int, count: int) -> None:
        self.vol_block = vol_block
        self.count = count


class ExtentView:
    """``ExtentMap``'s face over one file's ``EXTENT`` items; keeps the inode's ``blocks``
    count up to date as blocks are mapped and unmapped."""

    def __init__(self, table: PagedInodes, node: PagedInode) -> None:
        self._table = table
        self._node = node
        self._ino = node.ino

    def blocks(self) -> int:
        return int(self._node.blocks)

    def _unmapped(self, runs: list[VolRun]) -> list[VolRun]:
        self._node.blocks -= sum(n for _, n in runs)
        return runs

    def _view(self) -> LayeredView:
        return self._table.state.view

    def lookup(self, first: int, count: int) -> list[Mapping]:
        return extent_items.lookup(self._view(), self._ino, first, count)

    def vol_block_of(self, file_block: int) -> int | None:
        [m] = self.lookup(file_block, 1)
        return m.vol_block

    def end_block(self) -> int:
        return extent_items.end_block(self._view(), self._ino)

    def check_invariants(self) -> list[str]:
        return extent_items.check(self._view(), self._ino)

    def last_run(self) -> _Run | None:
        end = self.end_block()
        if end == 0:
            return None
        m = self.lookup(end - 1, 1)[0]
        assert m.vol_block is not None
        return _Run(m.vol_block - (m.count - 1), m.count)

    def vol_runs(self) -> Iterator[VolRun]:
        for m in self.lookup(0, self.end_block()):
            if m.vol_block is not None:
                yield (m.vol_block, m.count)

    def __iter__(self) -> Iterator[Mapping]:
        return (m for m in self.lookup(0, self.end_block()) if m.vol_block is not None)

    def punch(self, first: int, count: int) -> list[VolRun]:
        mem = self._table.state.live
        return self._unmapped(extent_items.punch(self._view(), mem, self._ino, first, count))

    def truncate(self, keep_below: int) -> list[VolRun]:
        mem = self._table.state.live
        return self._unmapped(extent_items.truncate(self._view(), mem, self._ino, keep_below))

    def set(self, first: int, vol_runs: Sequence[VolRun], crcs: Sequence[int]) -> list[VolRun]:
        """As ``ExtentMap.set``; a run of ``UNWRITTEN`` crcs becomes unwritten items."""
        freed = self.punch(first, sum(n for _, n in vol_runs))
        mem = self._table.state.live
        pos, at = first, 0
        for vol, n in vol_runs:
            # Cut the run where written and unwritten blocks meet.
            k = 0
            while k < n:
                unwritten = crcs[at + k] == UNWRITTEN
                j = k
                while j < n and (crcs[at + j] == UNWRITTEN) == unwritten:
                    j += 1
                part = None if unwritten else crcs[at + k : at + j]
                extent_items.put_blocks(mem, self._ino, pos + k, vol + k, j - k, part)
                k = j
            pos += n
            at += n
        self._node.blocks += sum(n for _, n in vol_runs)
        return freed


def _xattr_key(ino: int, name: bytes, fragment: int) -> bytes:
    """``XATTR | ino | hash(name) | name | 0 | fragment``: a name holds no NUL, so the
    fragments of one value sort together and apart from every other name."""
    return (
        prefix(Kind.XATTR, ino)
        + struct.pack(">Q", name_hash(name))
        + name
        + b"\0"
        + struct.pack(">H", fragment)
    )


class XattrView:
    """The dict of one inode's xattrs over ``XATTR`` items (values in fragments)."""

    def __init__(self, table: PagedInodes, ino: int) -> None:
        self._table = table
        self._ino = ino

    def _scan(self, start: bytes, end: bytes) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        at: bytes | None = start
        while at is not None:
            batch, at = self._table.state.view.items_nowait(at, end, 128)
            out += batch
        return out

    def _fragments(self, name: bytes) -> list[tuple[bytes, bytes]]:
        return self._scan(_xattr_key(self._ino, name, 0), _xattr_key(self._ino, name, 0xFFFF))

    def get(self, name: bytes) -> bytes | None:
        frags = self._fragments(name)
        return b"".join(v for _, v in frags) if frags else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, bytes) and bool(self._fragments(name))

    def __setitem__(self, name: bytes, value: bytes) -> None:
        mem = self._table.state.live
        for key, _ in self._fragments(name):
            mem.delete(key)
        parts = [value[i : i + XATTR_FRAGMENT] for i in range(0, len(value), XATTR_FRAGMENT)]
        for i, part in enumerate(parts or [b""]):
            mem.put(_xattr_key(self._ino, name, i), part)

    def __delitem__(self, name: bytes) -> None:
        frags = self._fragments(name)
        if not frags:
            raise KeyError(name)
        for key, _ in frags:
            self._table.state.live.delete(key)

    def keys_nowait(self) -> list[bytes]:
        """The keys of every fragment (reclaim deletes them)."""
        p = prefix(Kind.XATTR, self._ino)
        return [k for k, _ in self._scan(p, prefix_end(p))]

    def items(self) -> list[tuple[bytes, bytes]]:
        p = prefix(Kind.XATTR, self._ino)
        values: dict[bytes, list[bytes]] = {}
        for key, v in self._scan(p, prefix_end(p)):
            name = key[17:-3]
            values.setdefault(name, []).append(v)
        return sorted((n, b"".join(vs)) for n, vs in values.items())

    def __iter__(self) -> Iterator[bytes]:
        return iter([n for n, _ in self.items()])

    def __len__(self) -> int:
        return len(self.items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return dict(self.items()) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class SpaceAllocator:
    """``Allocator``'s face over a ``SpaceMap``, for ``MetadataStore``."""

    def __init__(self, state: PagedState, space: SpaceMap) -> None:
        self.state = state
        self.space = space
        self.data_blocks = space.data_blocks
        self._freed = RunSet()
        self._freed_before = RunSet()
        self._checkpoints = 0
        #: Blocks allocated and not yet mapped (the store's ``pending``): never stored as
        #: used, so a crash (or a checkpoint) before their mapping leaks nothing.
        self.busy = RunSet()

    @property
    def free_blocks(self) -> int:
        return self.space.free_blocks - self.busy.total

    def allocate(
        self, count: int, *, goal: int | None = None, stripe_blocks: int = 1
    ) -> list[VolRun]:
        return self.space.allocate(self.state.view, count, goal=goal, busy=self.busy)

    def free(self, runs: Iterable[VolRun]) -> None:
        runs = list(runs)
        self.space.free(self.state.view, self.state.live, runs)
        for s, n in runs:
            self._freed.union(s, n)

    def release(self, runs: Iterable[VolRun]) -> None:
        """Blocks ``allocate`` chose that will not be mapped: they were never stored as
        used (only busy), so only the replay window hears of them."""
        for s, n in runs:
            self._freed.union(s, n)

    def mark_used(self, runs: Iterable[VolRun]) -> None:
        self.space.mark_used(self.state.view, self.state.live, runs)

    def overlap(self, start: int, n: int) -> int:
        """How many blocks of ``[start, start+n)`` are free (busy ones included, as in
        ``Allocator``, where pending blocks are out of the free set: the caller adds
        ``pending`` itself)."""
        return self._free_in(start, n) - self.busy.overlap(start, n)

    def _free_in(self, start: int, n: int) -> int:
        view = self.state.view
        got = 0
        while n > 0:
            g = start // GROUP_BLOCKS
            k = min(n, (g + 1) * GROUP_BLOCKS - start)
            bits = self.space.bits(view, g)
            off = start - g * GROUP_BLOCKS
            got += int(k - bits[off : off + k].sum())
            start, n = start + k, n - k
        return got

    def ensure_used(self, runs: Iterable[VolRun]) -> None:
        """Mark used whatever part of ``runs`` is free (replay)."""
        self.space.ensure_used(self.state.view, self.state.live, runs)

    # -- the replay window (``Allocator``'s rules) -------------------------------------------

    def start_checkpoint(self) -> RunSet:
        token, self._freed = self._freed, RunSet()
        return token

    def checkpoint_written(self, token: RunSet) -> None:
        self._freed_before = token
        self._checkpoints += 1

    def checkpoint_failed(self, token: RunSet) -> None:
        for s, n in token:
            self._freed.union(s, n)

    def replay_safe(self, start: int, n: int) -> bool:
        return (
            self._checkpoints >= 2
            and not self._freed.overlap(start, n)
            and not self._freed_before.overlap(start, n)
        )

    def runs(self) -> list[VolRun]:
        """Every free run, in order (a scan of every group: tests and fsck only)."""
        out: list[VolRun] = []
        view = self.state.view
        for g in range(self.space.groups):
            starts, lens = zero_runs(self.space.bits(view, g), g * GROUP_BLOCKS)
            for s, n in zip(starts.tolist(), lens.tolist(), strict=True):
                if out and out[-1][0] + out[-1][1] == s:
                    out[-1] = (out[-1][0], out[-1][1] + n)
                else:
                    out.append((s, n))
        return out
