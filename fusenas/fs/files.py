"""FileStore: the bytes of regular files over 4 KiB volume blocks.

Design note (read before the code)
==================================

Units
    Byte offsets and sizes in bytes; file blocks and volume blocks in ``BLOCK_SIZE`` (4 KiB)
    units. The file store sees the volume as data-area blocks (``Engine.blocks``, a
    ``DataBlocks``): it never sees stripes, parity or members.

Copy-on-write, always
    A write never overwrites a mapped block in place. Every written block goes to newly
    allocated volume blocks (``meta.plan_allocation``); partial first/last blocks are read
    (old bytes, or zeros for holes and unwritten blocks), merged and written whole. The order
    for one chunk is::

        plan_allocation → blocks.store (DATA records) → reserve_meta → map_blocks (META record)

    ``map_blocks`` maps the new blocks with their crc32c and frees the displaced ones in the
    same op record. Because the DATA records precede the META record in the log, a crash at
    any point leaves either the old mapping (old bytes, old checksums: the new blocks are free
    again since the allocator is rebuilt from the extent maps) or the new one (new bytes, new
    checksums). A block's bytes and its checksum can never disagree because of a crash.
    On any failure (or cancellation) between ``plan_allocation`` and ``map_blocks`` the
    pending blocks are given back with ``release_allocation``.

Ordered writes (whole stripes without a DATA record)
    The whole stripes of a fresh allocation that are replay-safe skip the journal:
    ``DataBlocks.store`` writes them in place, data and parity, before ``map_blocks``; the WAL
    flushes the members before the META record becomes durable (rules:
    ``fusenas.engine.blocks``). A crash before that leaves the old mapping and free blocks, as
    above; after it, the bytes are on the members. Sequential writes thus cost each byte once
    plus parity instead of twice (journal, then in place); only the partial stripes at a
    write's edges go through the cache and the journal.

Checksums
    One crc32c per mapped block; ``-1`` marks an unwritten block (fallocate), read as zeros.
    Every block read is verified. A mismatch is silent corruption: the block is re-read from
    redundancy (``DataBlocks.heal``: other copies, or the row reconstructed without the
    suspect member), the good bytes are returned and the bad member copy is rewritten in place
    (parity already agrees with the good bytes, so this is no CoW violation). Only when no
    combination of members passes the check: ``FsError(EIO)`` after one warning per
    (inode, block).

Locks (``vol.locks``, not reentrant)
    ``read`` takes the inode's shard shared; ``write``, ``truncate`` and ``fallocate`` take it
    exclusive for the whole operation, so a reader never sees a half-mapped write and two
    writers never both merge the same partial block. Callers must not hold a grant of
    ``vol.locks`` when they call these methods.

Cancellation
    A cancelled ``write`` has either mapped a whole chunk or nothing of it (chunks already
    mapped stay; the call's return value is lost, as with a signal-interrupted ``write(2)``).
    DATA records of an unmapped chunk may stay in the log; they name free blocks and are
    harmless. ``read`` holds no state.

Crash and size
    Blocks past EOF are only ever unwritten (crc -1) or zero-tailed: ``truncate`` down to a
    size inside a block first rewrites that block with its tail zeroed, so a later extension
    (truncate up, or a write past EOF) reads zeros there.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import crc32c
import trio

from fusenas.engine.blocks import DataBlocks
from fusenas.errors import FsError
from fusenas.meta.allocator import VolRun
from fusenas.meta.btree import PageMiss
from fusenas.meta.extents import UNWRITTEN
from fusenas.meta.locks import LockShardTable
from fusenas.meta.store import MAX_FILE_SIZE, MetadataStore
from fusenas.units import BLOCK_SIZE

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bytes of one write chunk: one ``map_blocks`` op and at most this much merged in memory.
WRITE_CHUNK = 1 << 20
#: Bytes read from the volume in one ``cache.read`` call at most.
READ_CHUNK = 4 << 20

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def _crc(block: bytes | bytearray | memoryview) -> int:
    return int(crc32c.crc32c(block))


def _place(out: bytearray, pos: int, raw: bytes, crcs: list[int]) -> list[int]:
    """Copy ``raw`` into ``out`` at ``pos``; return the indexes of its blocks whose crc32c
    differs from ``crcs``."""
    out[pos : pos + len(raw)] = raw
    view = memoryview(raw)
    return [
        i
        for i, want in enumerate(crcs)
        if _crc(view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]) != want
    ]


class Storage(Protocol):
    """What the file store needs of the open volume (``fusenas.engine.Engine`` is one): the
    namespace and its locks, the data area as blocks, and the two calls every change and
    every fsync make. Nothing about stripes, members or the journal."""

    meta: MetadataStore
    locks: LockShardTable
    blocks: DataBlocks

    async def reserve_meta(self) -> None: ...

    async def sync(self) -> None: ...

    async def run_meta(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T: ...


class FileStore:
    """File bytes on ``volume``. See the module docstring."""

    def __init__(self, volume: Storage) -> None:
        self.vol = volume
        self._reported: set[tuple[int, int]] = set()

    # -- reading -------------------------------------------------------------------------

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``, clipped at EOF. Holes read as zeros.

        Served at once, without a schedule point, when the inode's lock is free and every
        block is in memory or the members' page cache and passes its checksum
        (``_read_nowait``); otherwise through the cache and the array, healing mismatches.
        Raises FsError(EIO) on a checksum mismatch no redundancy repairs, FsError(EISDIR/EINVAL)
        for non-files. Cancellable at any await; holds nothing afterwards.
        """
        if offset < 0 or size < 0:
            raise FsError(errno.EINVAL)
        fast = self._read_nowait(ino, offset, size)
        if fast is not None:
            return fast
        async with self.vol.locks.shared(ino):
            span = await self.vol.run_meta(self._span, ino, offset, size)
            if span is None:
                return b""
            first, count, skip, length = span
            data = await self._read_blocks(ino, first, count)
        return bytes(data[skip : skip + length])

    def _read_nowait(self, ino: int, offset: int, size: int) -> bytes | None:
        try:
            grant = self.vol.locks.acquire_nowait(shared=(ino,))
        except trio.WouldBlock:
            return None
        try:
            try:
                span = self._span(ino, offset, size)
                if span is None:
                    return b""
                first, count, skip, length = span
                pieces = self._pieces(ino, first, count)
            except PageMiss:
                return None  # a metadata page to load: the async path
            out = bytearray(count * BLOCK_SIZE)
            for fb, vb, crcs in pieces:
                raw = self.vol.blocks.read_nowait(vb, len(crcs))
                if raw is None or _place(out, (fb - first) * BLOCK_SIZE, raw, crcs):
                    return None  # not cached, or a mismatch to heal: the async path
            return bytes(out[skip : skip + length])
        finally:
            self.vol.locks.release(grant)

    def _span(self, ino: int, offset: int, size: int) -> tuple[int, int, int, int] | None:
        """(first block, block count, skip, length) of a read clipped at EOF; None if empty."""
        node = self.vol.meta.get(ino)
        end = min(offset + size, node.size)
        if end <= offset:
            if node.extents is None:
                self.vol.meta.map(ino, 0, 0)  # EISDIR / EINVAL
            return None
        first = offset // BLOCK_SIZE
        last = (end - 1) // BLOCK_SIZE
        return first, last - first + 1, offset - first * BLOCK_SIZE, end - offset

    def _pieces(self, ino: int, first: int, count: int) -> list[tuple[int, int, list[int]]]:
        """(file block, volume block, crcs) of the written blocks of ``[first, first+count)``,
        each run contiguous in both spaces and at most ``READ_CHUNK`` long."""
        pieces: list[tuple[int, int, list[int]]] = []
        for m in self.vol.meta.map(ino, first, count):
            if m.vol_block is None:
                continue
            for i, c in enumerate(m.crcs):
                if c == UNWRITTEN:
                    continue
                fb, vb = m.file_block + i, m.vol_block + i
                if pieces:
                    pfb, pvb, pcrcs = pieces[-1]
                    n = len(pcrcs)
                    if pfb + n == fb and pvb + n == vb and n * BLOCK_SIZE < READ_CHUNK:
                        pcrcs.append(c)
                        continue
                pieces.append((fb, vb, [c]))
        return pieces

    async def _read_blocks(self, ino: int, first: int, count: int) -> bytearray:
        """Whole file blocks ``[first, first+count)``, verified. Caller holds the inode lock."""
        out = bytearray(count * BLOCK_SIZE)
        for fb, vb, crcs in await self.vol.run_meta(self._pieces, ino, first, count):
            raw = await self.vol.blocks.read(vb, len(crcs))
            pos = (fb - first) * BLOCK_SIZE
            for i in _place(out, pos, raw, crcs):
                good = await self._heal(
                    ino, fb + i, vb + i, crcs[i], _crc(raw[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
                )
                bpos = pos + i * BLOCK_SIZE
                out[bpos : bpos + BLOCK_SIZE] = good
        return out

    async def _heal(self, ino: int, fblock: int, vblock: int, want: int, got: int) -> bytes:
        """Silent corruption: the good bytes of one block from redundancy (the bad copy is
        rewritten by the array), or FsError(EIO) if no member combination has them."""
        result = await self.vol.blocks.heal(vblock, lambda b: _crc(b) == want)
        if result.data is not None:
            return result.data
        self._report(ino, fblock, vblock, want, got)
        raise FsError(errno.EIO, f"checksum mismatch in inode {ino} block {fblock}")

    def _report(self, ino: int, fblock: int, vblock: int, want: int, got: int) -> None:
        key = (ino, fblock)
        if key in self._reported:
            return
        if len(self._reported) < 100_000:
            self._reported.add(key)
        log.warning(
            "checksum mismatch: inode %d file block %d (volume block %d): "
            "stored crc32c %08x, data has %08x; returning EIO",
            ino,
            fblock,
            vblock,
            want,
            got,
        )

    # -- writing -------------------------------------------------------------------------

    async def write(self, ino: int, offset: int, data: bytes | memoryview) -> int:
        """Write ``data`` at ``offset`` (copy-on-write); return ``len(data)``.

        Extends the size if the write ends past EOF. Raises FsError(ENOSPC/EFBIG/...).
        """
        if offset < 0:
            raise FsError(errno.EINVAL)
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        view = memoryview(data)
        async with self.vol.locks.exclusive(ino):
            await self.vol.run_meta(self.vol.meta.get, ino)
            pos = 0
            while pos < len(view):
                # Chunks end on block boundaries, so only the first and last chunk of a
                # write may start or end inside a block.
                start = offset + pos
                stop = min(offset + len(view), (start // BLOCK_SIZE) * BLOCK_SIZE + WRITE_CHUNK)
                await self._write_locked(ino, start, view[pos : pos + stop - start], extend=True)
                pos += stop - start
        return len(view)

    async def _write_locked(
        self, ino: int, offset: int, data: memoryview | bytes, *, extend: bool
    ) -> None:
        """One chunk, CoW. The caller holds the inode's shard exclusive. ``extend=False``
        never changes the size (punch-hole edges)."""
        meta = self.vol.meta
        node = await self.vol.run_meta(meta.get, ino)
        end = offset + len(data)
        first = offset // BLOCK_SIZE
        last = (end - 1) // BLOCK_SIZE
        count = last - first + 1
        head = offset - first * BLOCK_SIZE
        tail = (last + 1) * BLOCK_SIZE - end
        view = memoryview(data)
        if head or tail or not isinstance(view.obj, bytes):
            # Merge with the old edge blocks into a fresh buffer. Whole blocks of immutable
            # bytes (every FUSE write) skip the copy: the cache and the log keep views.
            buf = bytearray(count * BLOCK_SIZE)
            if head:
                buf[:BLOCK_SIZE] = await self._read_blocks(ino, first, 1)
            if tail and (last != first or not head):
                buf[-BLOCK_SIZE:] = await self._read_blocks(ino, last, 1)
            buf[head : head + len(data)] = data
            view = memoryview(buf)
        crcs = [_crc(view[i : i + BLOCK_SIZE]) for i in range(0, len(view), BLOCK_SIZE)]
        new_size = end if extend and end > node.size else None
        await self._map_new(ino, first, view, crcs, new_size)

    async def _map_new(
        self,
        ino: int,
        first: int,
        blocks: memoryview,
        crcs: list[int],
        new_size: int | None,
        *,
        then_size: int | None = None,
    ) -> None:
        """Allocate, write (ordered stripes in place, the rest through the cache), map.
        ``then_size``: a truncate to apply right after the mapping, in the same uninterrupted
        step (no await between the ops)."""
        meta = self.vol.meta
        runs: list[VolRun] = await self.vol.run_meta(meta.plan_allocation, ino, first, len(crcs))
        try:
            pos = 0
            for vb, n in runs:
                await self.vol.blocks.store(vb, blocks[pos : pos + n * BLOCK_SIZE])
                pos += n * BLOCK_SIZE
            await self.vol.reserve_meta()
            now = time.time_ns()
            await self.vol.run_meta(meta.map_blocks, ino, first, runs, crcs, new_size, now)
        except BaseException:
            meta.release_allocation(runs)
            raise
        if then_size is not None:
            await self.vol.run_meta(meta.setattr, ino, size=then_size, now_ns=now)

    # -- size and allocation -------------------------------------------------------------

    async def truncate(self, ino: int, size: int) -> None:
        """Set the size. Shrinking inside a block rewrites that block with its tail zeroed
        (CoW) so that a later extension reads zeros; the rewrite and the size change are
        journaled back to back, with no await between them."""
        if size < 0:
            raise FsError(errno.EINVAL)
        meta = self.vol.meta
        async with self.vol.locks.exclusive(ino):
            node = await self.vol.run_meta(meta.get, ino)
            if node.extents is None:
                await self.vol.run_meta(
                    meta.setattr, ino, size=size, now_ns=time.time_ns()
                )  # EISDIR / EINVAL
            cut = size % BLOCK_SIZE
            if size < node.size and cut:
                block = size // BLOCK_SIZE
                mapping = (await self.vol.run_meta(meta.map, ino, block, 1))[0]
                if mapping.vol_block is not None and mapping.crcs[0] != UNWRITTEN:
                    data = await self._read_blocks(ino, block, 1)
                    data[cut:] = bytes(BLOCK_SIZE - cut)
                    await self._map_new(
                        ino, block, memoryview(data), [_crc(data)], None, then_size=size
                    )
                    return
            await self.vol.reserve_meta()
            await self.vol.run_meta(meta.setattr, ino, size=size, now_ns=time.time_ns())

    async def fallocate(self, ino: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2): mode 0 and KEEP_SIZE allocate unwritten blocks for the holes of the
        range (extending the size unless KEEP_SIZE); PUNCH_HOLE|KEEP_SIZE unmaps the whole
        blocks of the range and zeroes its partial edges (CoW). Other modes: EOPNOTSUPP."""
        if offset < 0 or length <= 0:
            raise FsError(errno.EINVAL)
        if offset + length > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        meta = self.vol.meta
        end = offset + length
        if mode in (0, FALLOC_FL_KEEP_SIZE):
            first = offset // BLOCK_SIZE
            last = (end - 1) // BLOCK_SIZE
            async with self.vol.locks.exclusive(ino):
                await self.vol.reserve_meta()
                new_size = None if mode & FALLOC_FL_KEEP_SIZE else end
                await self.vol.run_meta(
                    meta.fallocate, ino, first, last - first + 1, new_size, time.time_ns()
                )
            return
        if mode == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE:
            async with self.vol.locks.exclusive(ino):
                node = await self.vol.run_meta(meta.get, ino)
                whole_first = -(-offset // BLOCK_SIZE)
                whole_end = end // BLOCK_SIZE
                if whole_end > whole_first:
                    await self.vol.reserve_meta()
                    await self.vol.run_meta(
                        meta.punch, ino, whole_first, whole_end - whole_first, time.time_ns()
                    )
                # Partial edges, inside EOF only (past EOF there is nothing to zero).
                edges: list[tuple[int, int]] = []
                first_block, last_block = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
                if offset % BLOCK_SIZE:
                    edges.append((offset, min(end, (first_block + 1) * BLOCK_SIZE)))
                if end % BLOCK_SIZE and (last_block != first_block or not offset % BLOCK_SIZE):
                    edges.append((max(offset, last_block * BLOCK_SIZE), end))
                for lo, hi in edges:
                    hi = min(hi, node.size)
                    if hi <= lo:
                        continue
                    block = lo // BLOCK_SIZE
                    m = (await self.vol.run_meta(meta.map, ino, block, 1))[0]
                    if m.vol_block is None or m.crcs[0] == UNWRITTEN:
                        continue  # already reads as zeros
                    await self._write_locked(ino, lo, bytes(hi - lo), extend=False)
            return
        raise FsError(errno.EOPNOTSUPP, f"fallocate mode {mode:#x}")

    async def fsync(self) -> None:
        """Make every change so far durable (one group commit of the WAL)."""
        await self.vol.sync()


__all__ = ["FALLOC_FL_KEEP_SIZE", "FALLOC_FL_PUNCH_HOLE", "FileStore"]
