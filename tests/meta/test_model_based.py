"""Seeded random op sequences against a small reference model.

After every step: the errno (or success) matches the model, fsck is clean, the namespace,
link counts, xattrs and block maps match the model. At checkpoints and at the end: a second
store fed the journaled payloads through ``apply(decode_op(...))`` reaches exactly the same
state, and so does ``decode_image(encode_image(store))``. ENOSPC leaves the state unchanged.
"""

from __future__ import annotations

import errno
import random
import stat

import pytest

from fusenas.errors import FsError
from fusenas.meta.extents import UNWRITTEN
from fusenas.meta.fsck import check
from fusenas.meta.image import decode_image, encode_image
from fusenas.meta.ops import RENAME_EXCHANGE, RENAME_NOREPLACE, decode_op
from fusenas.meta.store import MetadataStore

DATA_BLOCKS = 200
MAX_INODES = 30
NAMES = [b"a", b"b", b"c", b"d", b"e"]
BS = 4096


class Ref:
    """What the namespace should look like."""

    def __init__(self) -> None:
        self.kind: dict[int, str] = {1: "d"}
        self.entries: dict[int, dict[bytes, int]] = {1: {}}
        self.parent: dict[int, int] = {1: 1}
        self.nlink: dict[int, int] = {1: 2}
        self.xattrs: dict[int, dict[bytes, bytes]] = {1: {}}
        self.size: dict[int, int] = {}
        self.data: dict[int, dict[int, int]] = {}
        self.opens: dict[int, int] = {}

    def used_blocks(self) -> int:
        return sum(len(d) for d in self.data.values())

    def is_ancestor(self, anc: int, ino: int) -> bool:
        while True:
            if ino == anc:
                return True
            if ino == 1:
                return False
            ino = self.parent[ino]

    def drop_link(self, parent: int, ino: int) -> None:
        if self.kind[ino] == "d":
            self.nlink[ino] = 0
            self.nlink[parent] -= 1
        else:
            self.nlink[ino] -= 1
        self.maybe_gone(ino)

    def maybe_gone(self, ino: int) -> None:
        if self.nlink[ino] == 0 and not self.opens.get(ino):
            for table in (
                self.kind,
                self.entries,
                self.parent,
                self.nlink,
                self.xattrs,
                self.size,
                self.data,
            ):
                table.pop(ino, None)  # type: ignore[attr-defined]

    def create(self, parent: int, name: bytes, kind: str, ino: int) -> int | None:
        if name in self.entries[parent]:
            return errno.EEXIST
        if len(self.kind) >= MAX_INODES:
            return errno.ENOSPC
        self.kind[ino] = kind
        self.entries[parent][name] = ino
        self.xattrs[ino] = {}
        if kind == "d":
            self.entries[ino] = {}
            self.parent[ino] = parent
            self.nlink[ino] = 2
            self.nlink[parent] += 1
        else:
            self.nlink[ino] = 1
        if kind == "f":
            self.size[ino] = 0
            self.data[ino] = {}
        return None

    def rename(self, op: int, on: bytes, np: int, nn: bytes, flags: int) -> int | None:
        src = self.entries[op].get(on)
        if src is None:
            return errno.ENOENT
        dst = self.entries[np].get(nn)
        if flags == RENAME_EXCHANGE and dst is None:
            return errno.ENOENT
        if flags == RENAME_NOREPLACE and dst is not None:
            return errno.EEXIST
        if dst == src:
            return None
        if self.kind[src] == "d" and self.is_ancestor(src, np):
            return errno.EINVAL
        if flags == RENAME_EXCHANGE:
            assert dst is not None
            if self.kind[dst] == "d" and self.is_ancestor(dst, op):
                return errno.EINVAL
            self.entries[op][on], self.entries[np][nn] = dst, src
            for ino, frm, to in ((src, op, np), (dst, np, op)):
                if self.kind[ino] == "d":
                    self.parent[ino] = to
                    self.nlink[frm] -= 1
                    self.nlink[to] += 1
            return None
        if dst is not None:
            if self.kind[src] == "d" and self.kind[dst] != "d":
                return errno.ENOTDIR
            if self.kind[src] != "d" and self.kind[dst] == "d":
                return errno.EISDIR
            if self.kind[dst] == "d" and self.entries[dst]:
                return errno.ENOTEMPTY
            del self.entries[np][nn]
            self.drop_link(np, dst)
        del self.entries[op][on]
        self.entries[np][nn] = src
        if self.kind[src] == "d":
            self.nlink[op] -= 1
            self.nlink[np] += 1
            self.parent[src] = np
        return None


class InMemory:
    """The in-memory backend: the store as it always was."""

    fsck = True
    image = True

    def new(self, journal) -> MetadataStore:  # type: ignore[no-untyped-def]
        return MetadataStore.create(
            data_blocks=DATA_BLOCKS,
            stripe_blocks=8,
            max_inodes=MAX_INODES,
            journal=journal,
            now_ns=1,
        )

    def call(self, store: MetadataStore, fn, *args, **kw):  # type: ignore[no-untyped-def]
        return fn(*args, **kw)

    def warm(self, fn):  # type: ignore[no-untyped-def]
        return fn()

    def checkpoint(self, store: MetadataStore) -> None:
        pass

    def replay(self, store: MetadataStore, op) -> None:  # type: ignore[no-untyped-def]
        store.apply(op)


def _errno(backend, store, fn, *args, **kw) -> int | None:  # type: ignore[no-untyped-def]
    try:
        backend.call(store, fn, *args, **kw)
    except FsError as e:
        return e.errno
    return None


def _compare(store: MetadataStore, ref: Ref) -> None:
    assert set(store.inodes) == set(ref.kind)
    for ino, kind in ref.kind.items():
        node = store.inodes[ino]
        assert node.nlink == ref.nlink[ino], ino
        assert {"d": stat.S_IFDIR, "f": stat.S_IFREG, "l": stat.S_IFLNK}[kind] == stat.S_IFMT(
            node.mode
        )
        assert node.xattrs == ref.xattrs[ino]
        if kind == "d":
            assert node.dir is not None
            assert {n: i for n, i, _c in node.dir.items()} == ref.entries[ino]
            assert node.parent == ref.parent[ino]
        if kind == "f":
            assert node.size == ref.size[ino]
            got = {}
            for m in store.map(ino, 0, 64):
                for i in range(m.count):
                    if m.vol_block is not None:
                        got[m.file_block + i] = m.crcs[i]
            assert got == ref.data[ino]
            assert node.blocks == len(ref.data[ino])  # st_blocks / 8
    assert store.allocator.free_blocks == DATA_BLOCKS - ref.used_blocks()


def _replay(backend, log: list[bytes]) -> MetadataStore:  # type: ignore[no-untyped-def]
    other = backend.new(lambda b: None)
    for i, payload in enumerate(log):
        backend.replay(other, decode_op(payload))
        if i % 10 == 9:
            backend.checkpoint(other)  # on pages: the next ops read what this one wrote
    return other


def run_sequence(seed: int, steps: int, backend=None) -> None:  # type: ignore[no-untyped-def]
    """Random steps against the model; ``backend``: where the store keeps its state
    (``InMemory`` by default; the paged backend lives in test_paged_store.py)."""
    backend = backend or InMemory()
    rng = random.Random(seed)
    log: list[bytes] = []
    store = backend.new(log.append)
    ref = Ref()
    now = 10
    for step in range(steps):
        now += 1
        dirs = sorted(i for i, k in ref.kind.items() if k == "d" and ref.nlink[i])
        files = sorted(i for i, k in ref.kind.items() if k == "f")
        linked_files = [i for i in files if ref.nlink[i]]
        d1, d2 = rng.choice(dirs), rng.choice(dirs)
        n1, n2 = rng.choice(NAMES), rng.choice(NAMES)
        action = rng.choice(
            [
                "create",
                "create",
                "mkdir",
                "mkdir",
                "symlink",
                "link",
                "unlink",
                "rmdir",
                "rename",
                "rename",
                "truncate",
                "xattr",
                "rmxattr",
                "write",
                "write",
                "punch",
                "fallocate",
                "open",
                "release",
            ]
        )
        before = backend.warm(store.state_digest)
        if action in ("create", "mkdir", "symlink"):
            ino = store.next_ino
            kind = {"create": "f", "mkdir": "d", "symlink": "l"}[action]
            want = ref.create(d1, n1, kind, ino)
            if action == "create":
                got = _errno(
                    backend, store, store.mknod, d1, n1, stat.S_IFREG | 0o644, 0, 1, 1, now
                )
            elif action == "mkdir":
                got = _errno(backend, store, store.mkdir, d1, n1, 0o755, 1, 1, now)
            else:
                got = _errno(backend, store, store.symlink, d1, n1, b"target", 1, 1, now)
        elif action == "link":
            if not linked_files:
                continue
            f = rng.choice(linked_files)
            want = errno.EEXIST if n1 in ref.entries[d1] else None
            if want is None:
                ref.entries[d1][n1] = f
                ref.nlink[f] += 1
            got = _errno(backend, store, store.link, f, d1, n1, now)
        elif action in ("unlink", "rmdir"):
            target = ref.entries[d1].get(n1)
            if target is None:
                want = errno.ENOENT
            elif action == "unlink":
                want = errno.EISDIR if ref.kind[target] == "d" else None
            else:
                want = (
                    errno.ENOTDIR
                    if ref.kind[target] != "d"
                    else errno.ENOTEMPTY
                    if ref.entries[target]
                    else None
                )
            if want is None:
                assert target is not None
                del ref.entries[d1][n1]
                ref.drop_link(d1, target)
            fn = store.unlink if action == "unlink" else store.rmdir
            got = _errno(backend, store, fn, d1, n1, now)
        elif action == "rename":
            flags = rng.choice([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])
            want = ref.rename(d1, n1, d2, n2, flags)
            got = _errno(backend, store, store.rename, d1, n1, d2, n2, flags, now)
        elif action in ("truncate", "write", "punch", "fallocate"):
            if not files:
                continue
            f = rng.choice(files)
            first, count = rng.randrange(0, 40), rng.randint(1, 12)
            if action == "truncate":
                size = rng.randrange(0, 40 * BS)
                if size < ref.size[f]:
                    keep = -(-size // BS)
                    ref.data[f] = {b: c for b, c in ref.data[f].items() if b < keep}
                ref.size[f] = size
                want = None
                got = _errno(backend, store, store.setattr, f, size=size, now_ns=now)
            elif action == "punch":
                for b in range(first, first + count):
                    ref.data[f].pop(b, None)
                want = None
                got = _errno(backend, store, store.punch, f, first, count, now)
            elif action == "write":
                free = DATA_BLOCKS - ref.used_blocks()
                want = errno.ENOSPC if count > free else None
                crcs = [rng.randrange(2**32) for _ in range(count)]
                if want is None:
                    runs = backend.call(store, store.plan_allocation, f, first, count)
                    if rng.random() < 0.2:
                        backend.call(store, store.release_allocation, runs)
                        runs = backend.call(store, store.plan_allocation, f, first, count)
                    for i in range(count):
                        ref.data[f][first + i] = crcs[i]
                    new_size = max(ref.size[f], (first + count) * BS - rng.randrange(BS))
                    ref.size[f] = new_size
                    got = _errno(
                        backend, store, store.map_blocks, f, first, runs, crcs, new_size, now
                    )
                else:
                    got = _errno(backend, store, store.plan_allocation, f, first, count)
            else:
                holes = [b for b in range(first, first + count) if b not in ref.data[f]]
                want = errno.ENOSPC if len(holes) > DATA_BLOCKS - ref.used_blocks() else None
                if want is None:
                    for b in holes:
                        ref.data[f][b] = UNWRITTEN
                got = _errno(backend, store, store.fallocate, f, first, count, None, now)
        elif action in ("xattr", "rmxattr"):
            ino = rng.choice(sorted(ref.kind))
            name = rng.choice([b"user.a", b"user.b", b"trusted.c"])
            if action == "xattr":
                flags = rng.choice([0, 1, 2])
                exists = name in ref.xattrs[ino]
                want = (
                    errno.EEXIST
                    if flags == 1 and exists
                    else errno.ENODATA
                    if flags == 2 and not exists
                    else None
                )
                value = bytes([rng.randrange(256)]) * rng.randrange(0, 50)
                if want is None:
                    ref.xattrs[ino][name] = value
                got = _errno(backend, store, store.setxattr, ino, name, value, flags, now)
            else:
                want = None if name in ref.xattrs[ino] else errno.ENODATA
                ref.xattrs[ino].pop(name, None)
                got = _errno(backend, store, store.removexattr, ino, name, now)
        elif action == "open":
            if not files:
                continue
            f = rng.choice(files)
            backend.call(store, store.open, f)
            ref.opens[f] = ref.opens.get(f, 0) + 1
            want = got = None
        else:
            opened = sorted(i for i, n in ref.opens.items() if n)
            if not opened:
                continue
            f = rng.choice(opened)
            backend.call(store, store.release, f)
            ref.opens[f] -= 1
            ref.maybe_gone(f)
            want = got = None
        assert got == want, (seed, step, action, got, want)
        if got is not None:
            assert backend.warm(store.state_digest) == before, (seed, step, action)
        if backend.fsck:
            assert check(store) == [], (seed, step, action)
        backend.warm(lambda: _compare(store, ref))
        if step % 50 == 49:
            digest = backend.warm(store.state_digest)
            assert backend.warm(_replay(backend, log).state_digest) == digest
            if backend.image:
                assert decode_image(encode_image(store), journal=log.append).state_digest() == (
                    digest
                )
        if step % 17 == 16:
            backend.checkpoint(store)
    replayed = _replay(backend, log)
    assert backend.warm(replayed.state_digest) == backend.warm(store.state_digest)
    if backend.fsck:
        assert check(replayed) == []
    # a crash now: open counts are gone, so every orphan is reclaimed after replay
    backend.call(replayed, replayed.reclaim_orphans)
    if backend.fsck:
        assert check(replayed) == []
    assert backend.warm(replayed.orphans) == []


@pytest.mark.parametrize("seed", range(40))
def test_random_sequences(seed: int) -> None:
    run_sequence(seed, 200)
