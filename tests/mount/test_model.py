"""A seeded random mix of 10,000 operations through the mount against an in-memory model.

The model is a tree of paths over inodes (so hard links share bytes and xattrs): every
operation is predicted by the model (its outcome, including the errno of the operations that
must fail, as ext4 gives them) and then done through ``os.*`` on the mount; the two must agree.
Every ``CHECK_EVERY`` operations, and after each unmount + mount, the whole tree is compared:
the listing, every file's bytes, st_size and st_nlink, every directory's st_nlink, all xattrs,
and the link groups (names of one model inode share one st_ino, different inodes differ; the
numbers are stable across a remount).

The run is deterministic for a seed (``FUSENAS_MODEL_SEED`` overrides it); a mismatch reports
the seed and the last operations. Files stay at most 256 KiB.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.mount.conftest import Mounter, mkfs

pytestmark = [pytest.mark.mount, pytest.mark.slow]

OPS = 10_000
CHECK_EVERY = 1000
REMOUNT_AT = 5000  # an unmount + mount in the middle and one at the end
MAX_SIZE = 256 << 10
NAMES = [f"n{i}" for i in range(10)]
MAX_DEPTH = 3
XATTR_NAMES = [f"user.x{i}" for i in range(5)]
SEED = int(os.environ.get("FUSENAS_MODEL_SEED", "20240604"))

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@dataclass
class Node:
    is_dir: bool
    data: bytearray = field(default_factory=bytearray)
    xattrs: dict[str, bytes] = field(default_factory=dict)


class Model:
    """paths ('' is the root) → inode ids → nodes."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {0: Node(is_dir=True)}
        self.paths: dict[str, int] = {"": 0}
        self._next = 1

    def new(self, path: str, is_dir: bool) -> None:
        self.nodes[self._next] = Node(is_dir=is_dir)
        self.paths[path] = self._next
        self._next += 1

    def node(self, path: str) -> Node:
        return self.nodes[self.paths[path]]

    def children(self, path: str) -> list[str]:
        prefix = path + "/" if path else ""
        return [p for p in self.paths if p and p.startswith(prefix) and "/" not in p[len(prefix) :]]

    def nlink(self, path: str) -> int:
        ino = self.paths[path]
        if self.nodes[ino].is_dir:
            return 2 + sum(1 for c in self.children(path) if self.node(c).is_dir)
        return sum(1 for i in self.paths.values() if i == ino)

    def remove(self, path: str) -> None:
        ino = self.paths.pop(path)
        if ino not in self.paths.values():
            del self.nodes[ino]

    def move(self, src: str, dst: str) -> None:
        """Rename src (and, for a directory, everything under it) to dst; dst is free."""
        moved = {p: i for p, i in self.paths.items() if p == src or p.startswith(src + "/")}
        for p in moved:
            del self.paths[p]
        for p, i in moved.items():
            self.paths[dst + p[len(src) :]] = i

    def dirs(self) -> list[str]:
        return sorted(p for p, i in self.paths.items() if self.nodes[i].is_dir)

    def files(self) -> list[str]:
        return sorted(p for p, i in self.paths.items() if not self.nodes[i].is_dir)


def depth(path: str) -> int:
    return path.count("/") + 1 if path else 0


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class Runner:
    def __init__(self, mnt: Path, seed: int) -> None:
        self.mnt = mnt
        self.rng = random.Random(seed)
        self.model = Model()
        self.history: list[str] = []
        self.counts: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        #: model inode id → st_ino, kept across remounts.
        self.inos: dict[int, int] = {}
        self.replaced = 0  # renames that replaced another name
        self.sparse = 0  # writes past EOF
        self.ops: list[tuple[int, Callable[[], None]]] = [
            (12, self.op_create),
            (26, self.op_write),
            (7, self.op_truncate),
            (10, self.op_rename),
            (6, self.op_unlink),
            (5, self.op_link),
            (5, self.op_mkdir),
            (3, self.op_rmdir),
            (9, self.op_setxattr),
            (4, self.op_removexattr),
            (2, self.op_fsync),
            (4, self.op_read),
        ]
        self._weights = [w for w, _ in self.ops]

    def p(self, path: str) -> Path:
        return self.mnt / path if path else self.mnt

    def fail(self, msg: str) -> None:
        tail = "\n".join(self.history[-25:])
        pytest.fail(f"seed {SEED}, op {len(self.history)}: {msg}\nlast operations:\n{tail}")

    def do(self, desc: str, expect: int | None, fn: Callable[[], object]) -> bool:
        """Run ``fn``; it must fail with ``expect`` (an errno) or succeed when None."""
        self.history.append(f"{desc} -> {errno.errorcode[expect] if expect else 'ok'}")
        kind = desc.split()[0]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        try:
            fn()
        except OSError as e:
            if e.errno != expect:
                self.fail(f"{desc}: expected {expect and errno.errorcode[expect]}, got {e!r}")
            self.failures[kind] = self.failures.get(kind, 0) + 1
            return False
        if expect is not None:
            self.fail(f"{desc}: expected {errno.errorcode[expect]}, it succeeded")
        return True

    # -- picking ---------------------------------------------------------------------------

    def any_dir(self) -> str:
        return self.rng.choice(self.model.dirs())

    def new_path(self) -> str:
        """A name in an existing directory (it may exist already)."""
        return join(self.any_dir(), self.rng.choice(NAMES))

    def any_file(self) -> str | None:
        files = self.model.files()
        return self.rng.choice(files) if files else None

    def any_path(self) -> str | None:
        paths = sorted(p for p in self.model.paths if p)
        return self.rng.choice(paths) if paths else None

    def data(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    # -- operations ------------------------------------------------------------------------

    def step(self) -> None:
        _, op = self.rng.choices(self.ops, weights=self._weights)[0]
        op()

    def op_create(self) -> None:
        path = self.new_path()
        expect = errno.EEXIST if path in self.model.paths else None

        def go() -> None:
            os.close(os.open(self.p(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

        if self.do(f"create {path}", expect, go):
            self.model.new(path, is_dir=False)

    def op_write(self) -> None:
        path = self.any_file()
        if path is None:
            return self.op_create()
        node = self.model.node(path)
        size = len(node.data)
        r = self.rng.random()
        n = self.rng.randint(1, 8192) if self.rng.random() < 0.8 else self.rng.randint(1, 65536)
        if r < 0.35:
            off = self.rng.randint(0, size)
        elif r < 0.6:
            off = size  # append
        elif r < 0.8:
            off = size + self.rng.randint(1, 96 << 10)  # past EOF: a hole
        else:
            off = self.rng.randint(0, MAX_SIZE)
        off = min(off, MAX_SIZE - 1)
        n = min(n, MAX_SIZE - off)
        data = self.data(n)
        sync = self.rng.random() < 0.03

        def go() -> None:
            fd = os.open(self.p(path), os.O_WRONLY)
            try:
                assert os.pwrite(fd, data, off) == n
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)

        if self.do(f"write {path} off={off} n={n}{' fsync' if sync else ''}", None, go):
            if off > size:
                self.sparse += 1
                node.data.extend(bytes(off - size))
            node.data[off : off + n] = data

    def op_truncate(self) -> None:
        path = self.any_file()
        if path is None:
            return self.op_create()
        node = self.model.node(path)
        r = self.rng.random()
        if r < 0.4:
            size = self.rng.randint(0, len(node.data))
        elif r < 0.5:
            size = 0
        else:
            size = self.rng.randint(0, MAX_SIZE)
        if self.do(f"truncate {path} {size}", None, lambda: os.truncate(self.p(path), size)):
            if size < len(node.data):
                del node.data[size:]
            else:
                node.data.extend(bytes(size - len(node.data)))

    def op_rename(self) -> None:
        m = self.model
        src = self.any_path()
        if src is None:
            return self.op_create()
        dst = self.new_path()
        if m.node(src).is_dir:
            height = max(depth(p) for p in m.paths if p.startswith(src + "/") or p == src)
            if depth(dst) + height - depth(src) > MAX_DEPTH:
                dst = self.rng.choice(NAMES)  # keep the tree shallow
        noreplace = self.rng.random() < 0.15
        src_ino = m.paths[src]
        dst_ino = m.paths.get(dst)
        expect: int | None = None
        if noreplace and dst_ino is not None:
            expect = errno.EEXIST
        elif dst.startswith(src + "/"):
            expect = errno.EINVAL  # into its own subtree
        elif src.startswith(dst + "/"):
            expect = errno.ENOTEMPTY  # onto its own ancestor
        elif dst_ino == src_ino:
            expect = None  # the same file (same name or another hard link): nothing happens
        elif dst_ino is not None:
            s, d = m.nodes[src_ino], m.nodes[dst_ino]
            if s.is_dir and not d.is_dir:
                expect = errno.ENOTDIR
            elif not s.is_dir and d.is_dir:
                expect = errno.EISDIR
            elif d.is_dir and m.children(dst):
                expect = errno.ENOTEMPTY

        def go() -> None:
            if noreplace:
                renameat2(self.p(src), self.p(dst), RENAME_NOREPLACE)
            else:
                os.rename(self.p(src), self.p(dst))

        desc = f"rename {src} {dst}{' noreplace' if noreplace else ''}"
        if self.do(desc, expect, go) and dst_ino != src_ino:
            if dst_ino is not None:
                self.replaced += 1
                m.remove(dst)
            m.move(src, dst)

    def op_unlink(self) -> None:
        path = self.any_file() if self.rng.random() < 0.9 else self.any_path()
        if path is None:
            return self.op_create()
        expect = errno.EISDIR if self.model.node(path).is_dir else None
        if self.do(f"unlink {path}", expect, lambda: os.unlink(self.p(path))):
            self.model.remove(path)

    def op_link(self) -> None:
        src = self.any_file()
        if src is None:
            return self.op_create()
        dst = self.new_path()
        expect = errno.EEXIST if dst in self.model.paths else None
        if self.do(f"link {src} {dst}", expect, lambda: os.link(self.p(src), self.p(dst))):
            self.model.paths[dst] = self.model.paths[src]

    def op_mkdir(self) -> None:
        dirs = [d for d in self.model.dirs() if depth(d) < MAX_DEPTH]
        path = join(self.rng.choice(dirs), self.rng.choice(NAMES))
        expect = errno.EEXIST if path in self.model.paths else None
        if self.do(f"mkdir {path}", expect, lambda: os.mkdir(self.p(path), 0o755)):
            self.model.new(path, is_dir=True)

    def op_rmdir(self) -> None:
        r = self.rng.random()
        empty = [d for d in self.model.dirs() if d and not self.model.children(d)]
        if r < 0.5 and empty:
            path = self.rng.choice(empty)
        elif r < 0.9:
            dirs = [d for d in self.model.dirs() if d]
            if not dirs:
                return self.op_mkdir()
            path = self.rng.choice(dirs)
        else:
            maybe = self.any_path()
            if maybe is None:
                return self.op_mkdir()
            path = maybe
        if not self.model.node(path).is_dir:
            expect: int | None = errno.ENOTDIR
        elif self.model.children(path):
            expect = errno.ENOTEMPTY
        else:
            expect = None
        if self.do(f"rmdir {path}", expect, lambda: os.rmdir(self.p(path))):
            self.model.remove(path)

    def op_setxattr(self) -> None:
        path = self.rng.choice(sorted(self.model.paths))
        node = self.model.node(path)
        name = self.rng.choice(XATTR_NAMES)
        value = self.data(self.rng.randint(0, 200))
        r = self.rng.random()
        flags = os.XATTR_CREATE if r < 0.15 else os.XATTR_REPLACE if r < 0.3 else 0
        expect = None
        if flags == os.XATTR_CREATE and name in node.xattrs:
            expect = errno.EEXIST
        elif flags == os.XATTR_REPLACE and name not in node.xattrs:
            expect = errno.ENODATA
        desc = f"setxattr {path or '/'} {name} n={len(value)} flags={flags}"
        if self.do(desc, expect, lambda: os.setxattr(self.p(path), name, value, flags)):
            node.xattrs[name] = value

    def op_removexattr(self) -> None:
        path = self.rng.choice(sorted(self.model.paths))
        node = self.model.node(path)
        name = self.rng.choice(XATTR_NAMES)
        expect = None if name in node.xattrs else errno.ENODATA
        desc = f"removexattr {path or '/'} {name}"
        if self.do(desc, expect, lambda: os.removexattr(self.p(path), name)):
            del node.xattrs[name]

    def op_fsync(self) -> None:
        path = self.any_file()
        if path is None:
            return self.op_create()

        def go() -> None:
            fd = os.open(self.p(path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        self.do(f"fsync {path}", None, go)

    def op_read(self) -> None:
        path = self.any_file()
        if path is None:
            return self.op_create()
        want = bytes(self.model.node(path).data)
        got: list[bytes] = []
        self.do(f"read {path}", None, lambda: got.append(self.p(path).read_bytes()))
        if got[0] != want:
            self.fail(f"read {path}: {len(got[0])} bytes differ from the model's {len(want)}")

    # -- the full comparison ---------------------------------------------------------------

    def compare(self, when: str) -> None:
        m = self.model
        real: dict[str, os.stat_result] = {"": os.lstat(self.mnt)}
        stack = [""]
        while stack:
            d = stack.pop()
            for entry in os.scandir(self.p(d)):
                rel = join(d, entry.name)
                st = entry.stat(follow_symlinks=False)
                real[rel] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(rel)
        if set(real) != set(m.paths):
            extra = sorted(set(real) - set(m.paths))
            missing = sorted(set(m.paths) - set(real))
            self.fail(f"{when}: tree differs: not in the model {extra}, missing {missing}")
        seen: dict[int, int] = {}  # st_ino → model id
        for path, ino in sorted(m.paths.items()):
            st, node = real[path], m.nodes[ino]
            what = f"{when}: {path or '/'}"
            if node.is_dir != stat.S_ISDIR(st.st_mode) or (
                not node.is_dir and not stat.S_ISREG(st.st_mode)
            ):
                self.fail(f"{what}: type {st.st_mode:o}, model is_dir={node.is_dir}")
            if st.st_nlink != m.nlink(path):
                self.fail(f"{what}: st_nlink {st.st_nlink}, model {m.nlink(path)}")
            if seen.setdefault(st.st_ino, ino) != ino:
                self.fail(f"{what}: st_ino {st.st_ino} also belongs to another file")
            if self.inos.setdefault(ino, st.st_ino) != st.st_ino:
                self.fail(f"{what}: st_ino {st.st_ino}, before {self.inos[ino]}")
            if not node.is_dir:
                if st.st_size != len(node.data):
                    self.fail(f"{what}: st_size {st.st_size}, model {len(node.data)}")
                data = self.p(path).read_bytes()
                if data != node.data:
                    at = next(
                        (
                            i
                            for i, (a, b) in enumerate(zip(data, node.data, strict=False))
                            if a != b
                        ),
                        min(len(data), len(node.data)),
                    )
                    self.fail(f"{what}: bytes differ from offset {at}")
            xattrs = {k: os.getxattr(self.p(path), k) for k in os.listxattr(self.p(path))}
            if xattrs != node.xattrs:
                self.fail(f"{what}: xattrs {sorted(xattrs)} != model {sorted(node.xattrs)}")
        # Forget st_ino of inodes that are gone (numbers may be reused).
        self.inos = {i: n for i, n in self.inos.items() if i in m.nodes}


def test_random_operations_against_a_model(tmp_path: Path, mounter: Mounter) -> None:
    vol = mkfs(tmp_path / "vol")
    m = mounter.mount(vol)
    runner = Runner(m.mnt, SEED)
    t0 = time.monotonic()
    checks = 0
    for i in range(1, OPS + 1):
        runner.step()
        if i % CHECK_EVERY == 0:
            runner.compare(f"after {i} operations")
            checks += 1
        if i in (REMOUNT_AT, OPS):
            assert mounter.unmount(m) == 0, m.log()
            m = mounter.mount(vol, m.mnt)
            runner.mnt = m.mnt
            runner.compare(f"after {i} operations and a remount")
            checks += 1
    assert len(runner.history) == OPS
    assert checks == OPS // CHECK_EVERY + 2
    # The mix really exercised the cases it claims to.
    for kind in ("create", "write", "truncate", "rename", "unlink", "link", "mkdir", "rmdir"):
        assert runner.counts.get(kind, 0) - runner.failures.get(kind, 0) > 50, (
            kind,
            runner.counts,
            runner.failures,
        )
    for kind in ("setxattr", "removexattr", "fsync"):
        assert runner.counts.get(kind, 0) > 50, (kind, runner.counts)
    for kind in ("create", "rename", "link", "rmdir", "setxattr", "removexattr"):
        assert runner.failures.get(kind, 0) > 5, (kind, runner.failures)
    assert runner.replaced > 50 and runner.sparse > 100, (runner.replaced, runner.sparse)
    assert mounter.unmount(m) == 0, m.log()
    print(
        f"seed {SEED}: {OPS} operations in {time.monotonic() - t0:.1f} s; "
        f"{runner.counts}; failures {runner.failures}; "
        f"{runner.replaced} replacing renames, {runner.sparse} sparse writes; "
        f"{len(runner.model.files())} files, {len(runner.model.dirs())} directories at the end"
    )
