"""The power-cut harness: run a workload on in-memory devices, cut the power anywhere, recover.

``PowerCutProvider`` is a ``DeviceProvider`` whose devices (members and journal alike) count
every write and flush. At chosen operation numbers it takes a *crash image* of every device —
every flushed write kept, and a random subset of the unflushed ones, in any order, possibly
torn at 4 KiB (``tests.devices.MemoryDevice.crash_image``) — without disturbing the run.

Each crash image is then booted on its own: the real ``open_volume`` recovers it (optionally
with one member lost for good), and three checks follow:

(a) the volume mounts;
(b) fsck (``meta.fsck.check`` plus a checksum read of every block) finds nothing;
(c) the namespace and every file's bytes equal the model after some operation at or after the
    last one whose ``fsync`` had returned when the power was cut: everything acknowledged is
    there, byte for byte, and nothing half-done is visible.
"""

from __future__ import annotations

import copy
import random
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fusenas.engine import Engine, create_volume, open_volume
from fusenas.engine.verify import verify_checksums
from fusenas.errors import VolumeError
from fusenas.fs.files import FileStore
from fusenas.meta.fsck import check
from fusenas.units import ByteData
from fusenas.volume.layout import Level
from tests.devices import MemoryDevice

#: path → (kind, content): kind "f" (content = file bytes) or "d" (content = b"").
Tree = dict[str, tuple[str, bytes]]


@dataclass
class Cut:
    """One crash image and what had been acknowledged when it was taken."""

    images: dict[Path, bytes]
    acked: int  # index into the model history: the last state fsync had made durable
    done: int  # index of the last state whose operation had returned at the cut


class CountingDevice:
    """Forwards to a ``MemoryDevice`` and records every write and flush with the provider."""

    def __init__(self, path: Path, dev: MemoryDevice, provider: PowerCutProvider) -> None:
        self.path = path
        self.dev = dev
        self.provider = provider

    @property
    def size(self) -> int:
        return self.dev.size

    @property
    def name(self) -> str:
        return self.dev.name

    async def read(self, offset: int, length: int) -> bytes:
        return await self.dev.read(offset, length)

    def read_nowait(self, offset: int, length: int) -> bytes | None:
        return self.dev.read_nowait(offset, length)

    async def write(self, offset: int, data: ByteData) -> None:
        await self.dev.write(offset, data)
        self.provider.log(self.path, offset, bytes(data))

    async def flush(self) -> None:
        await self.dev.flush()
        self.provider.log(self.path, -1, b"")

    async def aclose(self) -> None:
        await self.dev.aclose()


@dataclass
class PowerCutProvider:
    """Memory devices by path, recording every write and flush once ``record()`` was called.

    ``cut(n, rng)`` rebuilds the devices as they were after the first ``n`` recorded
    operations and takes their crash images: any point of the run can be cut afterwards.
    """

    rng: random.Random
    devices: dict[Path, MemoryDevice] = field(default_factory=dict)
    acked: int = 0
    done: int = 0
    events: list[tuple[Path, int, bytes]] = field(default_factory=list)  # offset -1 = flush
    marks: list[tuple[int, int]] = field(default_factory=list)  # (acked, done) per event
    base: dict[Path, MemoryDevice] | None = None

    async def open(self, path: Path, *, readonly: bool = False) -> CountingDevice:
        if path not in self.devices:
            raise VolumeError(f"{path}: no such device")
        dev = self.devices[path]
        dev.closed = False
        return CountingDevice(path, dev, self)

    async def create(self, path: Path, size: int, *, allocate: bool = False) -> None:
        self.devices[path] = MemoryDevice(size, str(path))

    def record(self) -> None:
        """Start recording: the devices as they are now are the base of every cut."""
        self.base = {p: d.copy() for p, d in self.devices.items()}
        self.events.clear()
        self.marks.clear()

    def log(self, path: Path, offset: int, data: bytes) -> None:
        if self.base is not None:
            self.events.append((path, offset, data))
            self.marks.append((self.acked, self.done))

    def cut(self, n: int, rng: random.Random) -> Cut:
        """The power cut right after recorded operation ``n`` (1-based)."""
        assert self.base is not None
        devices = {p: d.copy() for p, d in self.base.items()}
        for path, offset, data in self.events[:n]:
            if offset < 0:
                devices[path].apply_flush()
            else:
                devices[path].apply_write(offset, data)
        acked, done = self.marks[n - 1]
        return Cut({p: d.crash_image(rng) for p, d in devices.items()}, acked, done)

    @classmethod
    def booted(cls, images: dict[Path, bytes], lose: Iterable[Path] = ()) -> PowerCutProvider:
        """A provider whose devices hold ``images``; the paths in ``lose`` are gone."""
        p = cls(random.Random(0))
        gone = set(lose)
        for path, image in images.items():
            if path in gone:
                continue
            dev = MemoryDevice(len(image), str(path))
            dev.restore(image)
            p.devices[path] = dev
        return p


SMALL = dict(member_size=(1 << 20) + (2 << 20), journal_size=4 << 20, chunk=16384)


async def make_volume(voldir: Path, level: Level, members: int, provider: PowerCutProvider) -> None:
    await create_volume(
        voldir,
        level=level,
        chunk=SMALL["chunk"],
        member_count=members,
        member_size=SMALL["member_size"],
        journal_size=SMALL["journal_size"],
        checkpoint_region=256 << 10,
        provider=provider,
    )


class Workload:
    """A seeded random sequence of namespace and data operations, mirrored in a model."""

    def __init__(self, vol: Engine, rng: random.Random, provider: PowerCutProvider) -> None:
        self.vol = vol
        self.files = FileStore(vol)
        self.rng = rng
        self.provider = provider
        self.model: Tree = {"": ("d", b"")}
        self.history: list[Tree] = [copy.deepcopy(self.model)]

    def _ino(self, path: str) -> int:
        ino = 1
        for part in filter(None, path.split("/")):
            ino = self.vol.meta.lookup(ino, part.encode()).ino
        return ino

    def _split(self, path: str) -> tuple[int, bytes]:
        parent, _, name = path.rpartition("/")
        return self._ino(parent), name.encode()

    def _pick(self, kind: str) -> str | None:
        paths = [p for p, (k, _) in self.model.items() if k == kind and p]
        return self.rng.choice(sorted(paths)) if paths else None

    def _dir(self) -> str:
        dirs = [p for p, (k, _) in self.model.items() if k == "d"]
        return self.rng.choice(sorted(dirs))

    async def step(self) -> None:
        rng, meta, now = self.rng, self.vol.meta, time.time_ns()
        choice = rng.random()
        await self.vol.reserve_meta()
        f = self._pick("f")
        if choice < 0.15 or f is None:
            d = self._dir()
            path = f"{d}/f{rng.randrange(1000)}".lstrip("/")
            if path in self.model:
                return
            parent, name = self._split(path)
            meta.mknod(parent, name, stat.S_IFREG | 0o644, 0, 0, 0, now)
            self.model[path] = ("f", b"")
        elif choice < 0.55:
            content = bytearray(self.model[f][1])
            off = rng.randrange(len(content) + 8192)
            # 200000 bytes: several full stripes at once (runs), and logs holding more data
            # than the cache (max_dirty 64 KiB) at the cut.
            size = rng.choice([1, 100, 4096, 5000, 20000, 70000, 200000])
            data = rng.randbytes(size)
            await self.files.write(self._ino(f), off, data)
            if off > len(content):
                content.extend(bytes(off - len(content)))
            content[off : off + size] = data
            self.model[f] = ("f", bytes(content))
        elif choice < 0.65:
            size = rng.randrange(len(self.model[f][1]) + 10000)
            await self.files.truncate(self._ino(f), size)
            old = self.model[f][1]
            self.model[f] = ("f", old[:size] + bytes(max(0, size - len(old))))
        elif choice < 0.72:
            parent, name = self._split(f)
            meta.unlink(parent, name, now)
            del self.model[f]
        elif choice < 0.80:
            d = self._dir()
            new = f"{d}/r{rng.randrange(1000)}".lstrip("/")
            if new in self.model and self.model[new][0] != "f":
                return
            op, on = self._split(f)
            np_, nn = self._split(new)
            meta.rename(op, on, np_, nn, 0, now)
            self.model[new] = self.model.pop(f)
        elif choice < 0.85:
            d = self._dir()
            path = f"{d}/d{rng.randrange(100)}".lstrip("/")
            if path in self.model or path.count("/") > 2:
                return
            parent, name = self._split(path)
            meta.mkdir(parent, name, 0o755, 0, 0, now)
            self.model[path] = ("d", b"")
        else:
            await self.vol.sync()
            self.history.append(copy.deepcopy(self.model))
            self.provider.acked = self.provider.done = len(self.history) - 1
            return
        self.history.append(copy.deepcopy(self.model))
        self.provider.done = len(self.history) - 1


async def read_tree(vol: Engine) -> Tree:
    """The namespace and file contents of a recovered volume, as a ``Tree``."""
    files = FileStore(vol)
    tree: Tree = {}

    async def walk(ino: int, path: str) -> None:
        tree[path] = ("d", b"")
        for name, node, _cookie in list(vol.meta.readdir(ino, 0)):
            child = f"{path}/{name.decode()}".lstrip("/")
            if stat.S_ISDIR(node.mode):
                await walk(node.ino, child)
            else:
                tree[child] = ("f", await files.read(node.ino, 0, node.size))

    await walk(1, "")
    return tree


async def recover_and_check(
    voldir: Path, cut: Cut, history: list[Tree], lose: Iterable[Path] = ()
) -> None:
    """Boot one crash image and apply checks (a), (b), (c) of the module docstring."""
    provider = PowerCutProvider.booted(cut.images, lose)
    async with open_volume(voldir, provider=provider, checkpointer=False) as vol:  # (a)
        problems = check(vol.meta) + await verify_checksums(vol)  # (b)
        assert not problems, problems
        tree = await read_tree(vol)
    # The operation running at the cut may or may not have reached the journal.
    allowed = history[cut.acked : cut.done + 2]
    if tree not in allowed:  # (c)
        acked = history[cut.acked]
        missing = {p for p in acked if p not in tree}
        differ = {p for p in acked if p in tree and tree[p] != acked[p]}
        raise AssertionError(
            f"recovered state is not a state at or after the last fsync "
            f"(acked state #{cut.acked} of {len(history) - 1}): missing {sorted(missing)[:5]}, "
            f"different {sorted(differ)[:5]}"
        )
