"""SpaceMap: free space of the data area as bitmap items of the metadata tree. Synchronous.

The paged counterpart of ``fusenas.meta.allocator.Allocator`` (docs/metadata_format.md,
"Space"). Units: 4 KiB blocks of the data area, numbered from 0.

On the volume
    The data area is cut into groups of ``GROUP_BLOCKS`` blocks (32 MiB). Group ``g`` has one
    ``SPACE`` item: a bitmap, bit ``i`` (LSB first) set when block ``g*GROUP_BLOCKS + i`` is
    used. A group without an item is wholly free (a new volume writes no bitmaps). Free
    counts are kept 256 groups to a ``SPACESUM`` item, so mount reads 4 bytes per group
    (128 KiB per TiB), not the bitmaps.

In memory
    The free count of every group (``array('I')``, 4 bytes per 32 MiB) and the small-write
    cursor; bitmaps are read through the view when a group is searched or changed, so RAM does
    not grow with the data or its fragmentation.

Policy (that of ``Allocator``, one group at a time instead of over one global index of
free runs):

1. ``goal`` (the block after the file's previous one): take what is free from there, in
   open space only (free through the goal's stripe and the next), so files grow
   contiguously without filling holes that would make partial-stripe writes;
2. requests of a stripe or more: a stripe-aligned free run that holds them, in the first
   group from the cursor with enough free blocks;
3. smaller requests fill a *small-write stripe* (a wholly free, aligned stripe) from a cursor,
   so that copy-on-write overwrites reach the array as full stripes;
4. otherwise the smallest free run of a group that holds the request (best fit in the group);
5. otherwise the largest runs, group after group.

Every function reads all it needs before it changes anything, and raises ``PageMiss`` only
during the reads (the caller loads the page and runs it again).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from fusenas.errors import NoSpaceError
from fusenas.meta.allocator import RunSet
from fusenas.meta.keys import Kind, space_key
from fusenas.meta.memtable import LayeredView, Memtable

VolRun = tuple[int, int]

GROUP_BLOCKS = 8192
BITMAP_BYTES = GROUP_BLOCKS // 8
SUMMARY_GROUPS = 256
_U64 = struct.Struct(">Q")

Bits = npt.NDArray[np.uint8]


def summary_key(first_group: int) -> bytes:
    return bytes((Kind.SPACESUM,)) + _U64.pack(first_group)


def zero_runs(bits: Bits, lo: int = 0) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Starts and lengths of the runs of 0 in ``bits`` (offsets within ``bits``, plus
    ``lo``)."""
    padded = np.concatenate(([1], bits, [1])).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == -1)
    ends = np.flatnonzero(edges == 1)
    return starts + lo, ends - starts


class SpaceMap:
    """See the module docstring."""

    def __init__(self, data_blocks: int, stripe_blocks: int, counts: array[int]) -> None:
        self.data_blocks = data_blocks
        self.stripe = max(stripe_blocks, 1)
        self.groups = -(-data_blocks // GROUP_BLOCKS)
        if len(counts) != self.groups:
            raise ValueError(f"{len(counts)} group counts for {self.groups} groups")
        self.counts = counts
        self.free_blocks = sum(counts)
        self._cursor = 0  # the small-write stripe: [_cursor, _cursor_end)
        self._cursor_end = 0
        self._group_cursor = 0  # where searches for a group start

    @classmethod
    def empty(cls, data_blocks: int, stripe_blocks: int) -> SpaceMap:
        """A wholly free data area (a new volume): no item is needed."""
        groups = -(-data_blocks // GROUP_BLOCKS)
        counts = array("I", [GROUP_BLOCKS] * groups)
        if groups:
            counts[-1] = data_blocks - (groups - 1) * GROUP_BLOCKS
        return cls(data_blocks, stripe_blocks, counts)

    # -- bitmaps ------------------------------------------------------------------------------

    def _size(self, g: int) -> int:
        return min(GROUP_BLOCKS, self.data_blocks - g * GROUP_BLOCKS)

    def bits(self, view: LayeredView, g: int) -> Bits:
        """Group ``g``'s bitmap as one byte per block (1 = used); a copy."""
        raw = view.get_nowait(space_key(g * GROUP_BLOCKS))
        if raw is None:
            bits = np.zeros(GROUP_BLOCKS, dtype=np.uint8)
        else:
            bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
        bits[self._size(g) :] = 1  # past the end of the data area: never free
        return bits

    def _store(self, mem: Memtable, g: int, bits: Bits) -> None:
        size = self._size(g)
        free = size - int(bits[:size].sum())
        self.free_blocks += free - self.counts[g]
        self.counts[g] = free
        mem.put(space_key(g * GROUP_BLOCKS), np.packbits(bits, bitorder="little").tobytes())
        first = g // SUMMARY_GROUPS * SUMMARY_GROUPS
        mem.put(summary_key(first), self.counts[first : first + SUMMARY_GROUPS].tobytes())

    def _set(
        self,
        view: LayeredView,
        mem: Memtable,
        runs: Iterable[VolRun],
        used: bool,
        *,
        strict: bool = True,
    ) -> None:
        by_group: dict[int, list[VolRun]] = {}
        for s, n in runs:
            if s < 0 or n < 0 or s + n > self.data_blocks:
                raise ValueError(f"run ({s}, {n}) outside the data area")
            while n > 0:
                g = s // GROUP_BLOCKS
                k = min(n, (g + 1) * GROUP_BLOCKS - s)
                by_group.setdefault(g, []).append((s - g * GROUP_BLOCKS, k))
                s, n = s + k, n - k
        loaded = {g: self.bits(view, g) for g in by_group}  # every read first
        for g, pieces in by_group.items():
            bits = loaded[g]
            before = bits.copy()
            for off, k in pieces:
                want = 0 if used else 1
                assert not strict or not (bits[off : off + k] != want).any(), (
                    f"blocks [{g * GROUP_BLOCKS + off}, +{k}) are not "
                    + ("free" if used else "used")
                )
                bits[off : off + k] = 1 if used else 0
            if strict or (bits != before).any():
                self._store(mem, g, bits)

    def free(self, view: LayeredView, mem: Memtable, runs: Iterable[VolRun]) -> None:
        """Return ``runs`` to free space; every block must be in use."""
        self._set(view, mem, runs, used=False)

    def mark_used(self, view: LayeredView, mem: Memtable, runs: Iterable[VolRun]) -> None:
        """Take ``runs`` out of free space; every block must be free."""
        self._set(view, mem, runs, used=True)

    def ensure_used(self, view: LayeredView, mem: Memtable, runs: Iterable[VolRun]) -> None:
        """Take whatever part of ``runs`` is free out of free space (replay, and the
        metadata chunks at mount)."""
        self._set(view, mem, runs, used=True, strict=False)

    def any_free(self, view: LayeredView, start: int, n: int) -> bool:
        """Whether a block of ``[start, start+n)`` (inside one group) is free."""
        g = start // GROUP_BLOCKS
        off = start - g * GROUP_BLOCKS
        return bool((self.bits(view, g)[off : off + n] == 0).any())

    # -- allocation ---------------------------------------------------------------------------

    def allocate(
        self,
        view: LayeredView,
        count: int,
        *,
        goal: int | None = None,
        busy: RunSet | None = None,
    ) -> list[VolRun]:
        """Choose ``count`` free blocks that are not ``busy`` (allocated, not yet marked
        used); return them as runs in the order to use them. Nothing is stored: the caller
        holds them busy until it marks them used (``mark_used``, when the mapping that names
        them is applied), so a checkpoint never records blocks that a crash would leave
        unmapped. ``NoSpaceError`` if fewer are free."""
        if count <= 0:
            return []
        free = self.free_blocks - (busy.total if busy is not None else 0)
        if count > free:
            raise NoSpaceError(f"need {count} blocks, {free} free")
        plan = _Plan(self, view, busy)
        need = count
        if goal is not None and 0 <= goal < self.data_blocks:
            need -= plan.at_goal(goal, need)
        if need and need >= self.stripe > 1:
            need -= plan.aligned(need)
        elif need and self.stripe > 1:
            need -= plan.from_cursor(need)
        if need:
            need -= plan.best_fit(need)
        while need:
            need -= plan.largest(need)
        self._cursor, self._cursor_end = plan.cursor
        return _merged(plan.out)


class _Plan:
    """One allocation's choices, on copies of the bitmaps it read (nothing is stored until
    it is complete, so a ``PageMiss`` midway changes nothing)."""

    def __init__(self, space: SpaceMap, view: LayeredView, busy: RunSet | None) -> None:
        self.space = space
        self.view = view
        self.busy = busy
        self.changed: dict[int, Bits] = {}
        self.out: list[VolRun] = []
        self.cursor = (space._cursor, space._cursor_end)

    def bits(self, g: int) -> Bits:
        b = self.changed.get(g)
        if b is None:
            b = self.changed[g] = self.space.bits(self.view, g)
            if self.busy is not None:
                lo = g * GROUP_BLOCKS
                for s, n in self.busy.runs_within(lo, GROUP_BLOCKS):
                    b[s - lo : s - lo + n] = 1
        return b

    def free_in(self, g: int) -> int:
        b = self.changed.get(g)
        if b is None:
            busy = self.busy.overlap(g * GROUP_BLOCKS, GROUP_BLOCKS) if self.busy else 0
            return self.space.counts[g] - busy
        size = self.space._size(g)
        return size - int(b[:size].sum())

    def take(self, start: int, n: int) -> None:
        g = start // GROUP_BLOCKS
        off = start - g * GROUP_BLOCKS
        bits = self.bits(g)
        assert not bits[off : off + n].any(), "taking used blocks"
        bits[off : off + n] = 1
        self.out.append((start, n))

    def groups(self, need: int) -> Iterable[int]:
        """Groups with at least ``need`` free blocks, from the group cursor on, round."""
        sp = self.space
        for k in range(sp.groups):
            g = (sp._group_cursor + k) % sp.groups
            if self.free_in(g) >= need:
                yield g

    def at_goal(self, goal: int, need: int) -> int:
        stripe = self.space.stripe
        g = goal // GROUP_BLOCKS
        bits = self.bits(g)
        off = goal - g * GROUP_BLOCKS
        if bits[off]:
            return 0
        used = np.flatnonzero(bits[off:])
        avail = int(used[0]) if len(used) else GROUP_BLOCKS - off
        open_end = (goal // stripe + 2) * stripe
        cur, cur_end = self.cursor
        if goal + avail < min(open_end, (g + 1) * GROUP_BLOCKS) and not cur <= goal < cur_end:
            return 0
        n = min(avail, need)
        self.take(goal, n)
        return n

    def _aligned_start(self, g: int, need: int) -> int | None:
        stripe = self.space.stripe
        starts, lens = zero_runs(self.bits(g))
        best: tuple[int, int] | None = None
        for s, ln in zip(starts.tolist(), lens.tolist(), strict=True):
            a = -(-(g * GROUP_BLOCKS + s) // stripe) * stripe - g * GROUP_BLOCKS
            if a + need <= s + ln and (best is None or ln < best[0]):
                best = (ln, a)
        return None if best is None else g * GROUP_BLOCKS + best[1]

    def aligned(self, need: int) -> int:
        for g in self.groups(need):
            a = self._aligned_start(g, need)
            if a is not None:
                self.take(a, need)
                self.space._group_cursor = g
                return need
        return 0

    def from_cursor(self, need: int) -> int:
        stripe = self.space.stripe
        got = 0
        while got < need:
            cur, cur_end = self.cursor
            if cur >= cur_end:
                for g in self.groups(stripe):
                    a = self._aligned_start(g, stripe)
                    if a is not None:
                        self.cursor = (a, a + stripe)
                        self.space._group_cursor = g
                        break
                else:
                    return got
                continue
            g = cur // GROUP_BLOCKS
            bits = self.bits(g)
            off = cur - g * GROUP_BLOCKS
            end_off = cur_end - g * GROUP_BLOCKS
            free = np.flatnonzero(bits[off:end_off] == 0)
            if not len(free):
                self.cursor = (cur_end, cur_end)
                continue
            start = off + int(free[0])
            used_after = np.flatnonzero(bits[start:end_off])
            avail = int(used_after[0]) if len(used_after) else end_off - start
            n = min(need - got, avail)
            self.take(g * GROUP_BLOCKS + start, n)
            self.cursor = (g * GROUP_BLOCKS + start + n, cur_end)
            got += n
        return got

    def best_fit(self, need: int) -> int:
        for g in self.groups(need):
            starts, lens = zero_runs(self.bits(g))
            fits = np.flatnonzero(lens >= need)
            if len(fits):
                k = fits[np.argmin(lens[fits])]
                self.take(g * GROUP_BLOCKS + int(starts[k]), need)
                return need
        return 0

    def largest(self, need: int) -> int:
        for g in self.groups(1):
            starts, lens = zero_runs(self.bits(g))
            k = int(np.argmax(lens))
            n = min(int(lens[k]), need)
            self.take(g * GROUP_BLOCKS + int(starts[k]), n)
            return n
        raise AssertionError("the free count said there was room")


def _merged(runs: list[VolRun]) -> list[VolRun]:
    out: list[VolRun] = []
    for s, n in runs:
        if out and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((s, n))
    return out
