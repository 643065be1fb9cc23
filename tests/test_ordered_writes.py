"""Ordered writes: whole stripes of fresh, replay-safe blocks go in place without a DATA record,
and the record mapping them is durable only after a member flush (``Engine.write_ordered``).

The power-cut harness (tests/crash) covers crash consistency with these writes in its
workloads; here: that they happen at all, when they must not, and the member-flush order.
"""

from __future__ import annotations

import random
import stat
import time
from pathlib import Path

import pytest

from fusenas.engine import Engine, create_volume, open_volume
from fusenas.fs.files import FileStore
from fusenas.stripe.plan import Strategy
from fusenas.stripe.writer import StripeWriter
from fusenas.units import BLOCK_SIZE
from fusenas.volume.layout import Level

MiB = 1 << 20


async def mkvol(path: Path, level: Level = Level.RAID5, members: int = 4) -> Path:
    await create_volume(
        path,
        level=level,
        chunk=16384,
        member_count=members,
        member_size=48 << 20,
        journal_size=16 << 20,
    )
    return path


def mkfile(v: Engine, name: bytes) -> int:
    return v.meta.mknod(1, name, stat.S_IFREG | 0o644, 0, 0, 0, time.time_ns()).ino


@pytest.mark.parametrize("level", [Level.RAID5, Level.RAID6, Level.RAID1, Level.RAID0])
async def test_sequential_writes_bypass_the_journal_and_read_back(
    tmp_path: Path, level: Level
) -> None:
    path = await mkvol(tmp_path / "v", level)
    data = random.Random(1).randbytes(8 * MiB)
    async with open_volume(path) as v:
        files = FileStore(v)
        ino = mkfile(v, b"f")
        before = v.wal.statistics().bytes_written
        for off in range(0, len(data), MiB):
            await files.write(ino, off, data[off : off + MiB])
        await files.fsync()
        journaled = v.wal.statistics().bytes_written - before
        # Without ordered writes every byte would be journaled once; only the partial stripes
        # at the edges of each write (and the metadata records) are.
        assert journaled < len(data) // 2, journaled
        assert await files.read(ino, 0, len(data)) == data
    async with open_volume(path) as v:
        assert await FileStore(v).read(v.meta.lookup(1, b"f").ino, 0, len(data)) == data


async def test_blocks_freed_recently_are_journaled(tmp_path: Path) -> None:
    """Blocks freed since the older of the two retained checkpoints may be named by records
    that replay would write again: they take the journaled path."""
    path = await mkvol(tmp_path / "v")
    async with open_volume(path, checkpointer=False) as v:
        files = FileStore(v)
        ino = mkfile(v, b"f")
        await files.write(ino, 0, bytes(4 * MiB))
        runs = list(v.meta.get(ino).extents.vol_runs())  # type: ignore[union-attr]
        await files.truncate(ino, 0)
        assert all(not v.blocks.ordered_span(s, n) for s, n in runs)
        v.meta.allocator.checkpoint_written(v.meta.allocator.start_checkpoint())
        assert all(
            not v.blocks.ordered_span(s, n) for s, n in runs
        )  # still in the older generation
        v.meta.allocator.checkpoint_written(v.meta.allocator.start_checkpoint())
        assert any(v.blocks.ordered_span(s, n) for s, n in runs)


async def test_mapping_commit_waits_for_a_member_flush(tmp_path: Path) -> None:
    """The commit that makes a mapping of ordered data durable flushes the members first,
    and a commit with no ordered write since the last flush does not."""
    path = await mkvol(tmp_path / "v")
    async with open_volume(path, checkpointer=False) as v:
        files = FileStore(v)
        ino = mkfile(v, b"f")
        flushes = 0
        array_flush = v.members.array.flush

        async def counting_flush() -> None:
            nonlocal flushes
            flushes += 1
            await array_flush()

        v.members.array.flush = counting_flush  # type: ignore[method-assign]
        await files.write(ino, 0, bytes(MiB))
        assert v.blocks.statistics().ordered_writes == 1 and flushes == 0
        await files.fsync()
        assert flushes == 1
        await v.reserve_meta()
        v.meta.mkdir(1, b"d", 0o755, 0, 0, time.time_ns())
        await files.fsync()
        assert flushes == 1


async def test_rows_with_free_blocks_are_never_patched(tmp_path: Path) -> None:
    """A partial write into a row that also holds free blocks recomputes parity (RCW) even
    where read-modify-write would need fewer reads: the free blocks' parity may be stale
    after a crash in an ordered write."""
    path = await mkvol(tmp_path / "v", members=6)  # 5 data blocks a row: RMW reads fewer
    async with open_volume(path, checkpointer=False) as v:
        array = v.members.array
        g = array.geometry
        stripe = v.blocks.data_start // g.stripe_data_size + 10
        one_block = [(stripe * g.stripe_data_size, bytes(BLOCK_SIZE))]
        plain = StripeWriter(array, suspect_parity=lambda s: False)
        assert await plain.write_stripe(stripe, one_block) is Strategy.RMW
        # The cache's writer asks the engine: every block of that row is free.
        assert await v.cache.writer.write_stripe(stripe, one_block) is Strategy.RCW


async def test_journaled_edges_do_not_pin_the_request_buffer(tmp_path: Path) -> None:
    """The partial stripes at a write's edges enter the cache as copies: views would keep each
    whole 1 MiB request alive while the cache counts only the edge blocks (RSS writing 4 GiB
    sequentially went 136 -> 420 MiB)."""
    path = await mkvol(tmp_path / "v")
    async with open_volume(path, checkpointer=False) as v:
        files = FileStore(v)
        ino = mkfile(v, b"f")
        for off in range(0, 4 * MiB, MiB):
            await files.write(ino, off, bytes(MiB))
        held = [memoryview(b).obj for st in v.cache._dirty.values() for b in st.blocks.values()]
        assert held and v.blocks.statistics().ordered_writes == 4
        assert all(len(obj) < MiB for obj in held)  # type: ignore[arg-type]


async def test_partial_write_into_a_torn_free_row_rewrites_its_whole_parity(
    tmp_path: Path,
) -> None:
    """The write hole of an ordered write: a crash left one member of a free row with new
    bytes and the parity with old ones. The first partial write into that row, even of a
    single block at another row offset, must leave the parity of the whole row right, or a
    member lost later would be rebuilt wrong where live data lands next."""
    from fusenas.volume import parity

    path = await mkvol(tmp_path / "v", members=6)
    async with open_volume(path, checkpointer=False) as v:
        array = v.members.array
        g = array.geometry
        stripe = v.blocks.data_start // g.stripe_data_size + 10
        row_off = array.data_offset + stripe * g.chunk
        dmembers = [g.data_copies(stripe, i)[0] for i in range(g.data_per_stripe)]
        pmember = g.parity_members(stripe)[0]
        await v.cache.writer.write_full_stripes(stripe, bytes(g.stripe_data_size))
        torn = dmembers[2]
        dev = array.devices[torn]
        assert dev is not None
        await dev.write(row_off, b"\x5a" * g.chunk)  # the cut write reached one member only
        # One block at the start of data chunk 0: RMW would patch [0, 4K) of the parity only.
        one_block = [(stripe * g.stripe_data_size, b"\x01" * 4096)]
        assert await v.cache.writer.write_stripe(stripe, one_block)
        got = await array._read_row_raw([*dmembers, pmember], stripe * g.chunk, g.chunk)
        assert got[torn] == b"\x5a" * g.chunk
        assert got[pmember] == parity.gen_p([got[m] for m in dmembers])
