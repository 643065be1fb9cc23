"""Extent maps: file block number -> (volume block number, crc32c) for one regular file.

Units: every number here is a **block** number or a block count (``BLOCK_SIZE`` = 4096
bytes). File blocks count from the start of the file; volume blocks count from the start of
the data area (``Allocator`` hands them out).

Representation: a list of ``Run`` sorted by ``file_block``, plus a parallel list of the start
blocks for ``bisect``. A run maps ``count`` consecutive file blocks to ``count`` consecutive
volume blocks and carries one checksum per block in an ``array('q')``: a crc32c in
``[0, 2**32)``, or ``UNWRITTEN`` (-1) for a block that is allocated (fallocate) but was never
written; it reads as zeros.

Invariants (``check_invariants`` asserts them; fsck relies on them):

* runs are sorted, never overlap in file blocks, and have ``count >= 1`` and
  ``len(crcs) == count``;
* two neighbouring runs that are contiguous in both file and volume blocks are merged, so the
  representation of a given mapping is canonical (equal maps compare equal);
* ``set``/``punch``/``truncate`` return the volume block runs they displaced, in file order;
  the caller (the store) frees them in the allocator. The map itself never allocates or frees.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

#: The checksum of a block that is allocated but was never written (reads as zeros).
UNWRITTEN = -1

#: A run of volume blocks: (first volume block, count).
VolRun = tuple[int, int]


class Run:
    """``count`` file blocks from ``file_block`` on, stored at ``vol_block`` on; mutable."""

    __slots__ = ("count", "crcs", "file_block", "vol_block")

    def __init__(self, file_block: int, vol_block: int, count: int, crcs: array[int]) -> None:
        self.file_block = file_block
        self.vol_block = vol_block
        self.count = count
        self.crcs = crcs

    @property
    def file_end(self) -> int:
        return self.file_block + self.count

    def __repr__(self) -> str:
        return f"Run(file={self.file_block}, vol={self.vol_block}, n={self.count})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Run):
            return NotImplemented
        return (self.file_block, self.vol_block, self.count, self.crcs) == (
            other.file_block,
            other.vol_block,
            other.count,
            other.crcs,
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Mapping:
    """One piece of a ``lookup`` answer. ``vol_block is None`` is a hole (reads as zeros,
    ``crcs`` empty); otherwise ``crcs[i]`` belongs to file block ``file_block + i``."""

    file_block: int
    count: int
    vol_block: int | None
    crcs: tuple[int, ...]

    @property
    def file_end(self) -> int:
        return self.file_block + self.count


class ExtentMap:
    """The block map of one regular file. See the module docstring for the invariants."""

    __slots__ = ("_blocks", "_runs", "_starts")

    def __init__(self) -> None:
        self._runs: list[Run] = []
        self._starts: list[int] = []
        self._blocks = 0  # sum of the runs' counts, kept so that getattr is O(1)

    # -- reading -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Run]:
        return iter(self._runs)

    def __len__(self) -> int:
        """The number of runs (not blocks)."""
        return len(self._runs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExtentMap):
            return NotImplemented
        return self._runs == other._runs

    __hash__ = None  # type: ignore[assignment]

    def blocks(self) -> int:
        """The number of mapped file blocks (unwritten ones included)."""
        return self._blocks

    def last_run(self) -> Run | None:
        """The run with the highest file blocks, or None for an empty map."""
        return self._runs[-1] if self._runs else None

    def end_block(self) -> int:
        """One past the last mapped file block; 0 for an empty map."""
        return self._runs[-1].file_end if self._runs else 0

    def vol_runs(self) -> Iterator[VolRun]:
        """Every mapped volume run, in file order."""
        for r in self._runs:
            yield (r.vol_block, r.count)

    def vol_block_of(self, file_block: int) -> int | None:
        """The volume block that holds ``file_block``, or None for a hole."""
        i = bisect_right(self._starts, file_block) - 1
        if i >= 0:
            r = self._runs[i]
            if file_block < r.file_end:
                return r.vol_block + file_block - r.file_block
        return None

    def lookup(self, first: int, count: int) -> list[Mapping]:
        """Cover file blocks ``[first, first+count)`` exactly, holes included, in order."""
        out: list[Mapping] = []
        end = first + count
        pos = first
        i = max(bisect_right(self._starts, first) - 1, 0)
        runs = self._runs
        while pos < end and i < len(runs):
            r = runs[i]
            if r.file_end <= pos:
                i += 1
                continue
            if r.file_block >= end:
                break
            if r.file_block > pos:
                out.append(Mapping(pos, r.file_block - pos, None, ()))
                pos = r.file_block
            stop = min(end, r.file_end)
            off = pos - r.file_block
            out.append(
                Mapping(pos, stop - pos, r.vol_block + off, tuple(r.crcs[off : off + stop - pos]))
            )
            pos = stop
            i += 1
        if pos < end:
            out.append(Mapping(pos, end - pos, None, ()))
        return out

    # -- changing ------------------------------------------------------------------------

    def punch(self, first: int, count: int) -> list[VolRun]:
        """Unmap file blocks ``[first, first+count)``; return the displaced volume runs."""
        if count <= 0 or not self._runs:
            return []
        end = first + count
        runs = self._runs
        i = max(bisect_right(self._starts, first) - 1, 0)
        j = i
        keep: list[Run] = []
        freed: list[VolRun] = []
        while j < len(runs) and runs[j].file_block < end:
            r = runs[j]
            j += 1
            if r.file_end <= first:
                keep.append(r)
                continue
            if r.file_block < first:
                k = first - r.file_block
                keep.append(Run(r.file_block, r.vol_block, k, r.crcs[:k]))
            lo = max(first, r.file_block)
            hi = min(end, r.file_end)
            freed.append((r.vol_block + lo - r.file_block, hi - lo))
            if r.file_end > end:
                k = end - r.file_block
                keep.append(Run(end, r.vol_block + k, r.file_end - end, r.crcs[k:]))
        if freed:
            runs[i:j] = keep
            self._starts[i:j] = [r.file_block for r in keep]
            self._blocks -= sum(n for _, n in freed)
        return freed

    def truncate(self, keep_below: int) -> list[VolRun]:
        """Unmap every file block ``>= keep_below``; return the displaced volume runs."""
        end = self.end_block()
        return self.punch(keep_below, end - keep_below) if end > keep_below else []

    def set(self, first: int, vol_runs: Sequence[VolRun], crcs: Sequence[int]) -> list[VolRun]:
        """Map file blocks from ``first`` on to ``vol_runs`` (consecutive), with one crc per
        block (``len(crcs) == sum of counts``), replacing whatever was mapped there. Returns the
        displaced volume runs."""
        total = sum(n for _, n in vol_runs)
        assert total == len(crcs), (total, len(crcs))
        freed = self.punch(first, total)
        pos = first
        at = 0
        i = bisect_left(self._starts, first)
        new: list[Run] = []
        for vol, n in vol_runs:
            if n <= 0:
                continue
            new.append(Run(pos, vol, n, array("q", crcs[at : at + n])))
            pos += n
            at += n
        self._runs[i:i] = new
        self._starts[i:i] = [r.file_block for r in new]
        self._blocks += pos - first
        # Merge inside the new runs and at both edges, right to left so indexes stay valid.
        for k in range(i + len(new), i - 1, -1):
            self._merge_with_next(k - 1)
        return freed

    def _merge_with_next(self, k: int) -> None:
        runs = self._runs
        if k < 0 or k + 1 >= len(runs):
            return
        a, b = runs[k], runs[k + 1]
        if a.file_end == b.file_block and a.vol_block + a.count == b.vol_block:
            a.crcs.extend(b.crcs)  # in place: a sequential file grows one run (O(n) total)
            a.count += b.count
            del runs[k + 1]
            del self._starts[k + 1]

    # -- loading and checking ------------------------------------------------------------

    def append_run(self, file_block: int, vol_block: int, crcs: array[int]) -> None:
        """Add a run after every existing one (image loading); merges like ``set``."""
        assert not self._runs or file_block >= self._runs[-1].file_end
        self._runs.append(Run(file_block, vol_block, len(crcs), crcs))
        self._starts.append(file_block)
        self._blocks += len(crcs)
        self._merge_with_next(len(self._runs) - 2)

    def check_invariants(self) -> list[str]:
        """Plain-words violations of the representation invariants (empty = fine)."""
        problems: list[str] = []
        prev: Run | None = None
        if self._starts != [r.file_block for r in self._runs]:
            problems.append("start index out of sync with runs")
        if self._blocks != sum(r.count for r in self._runs):
            problems.append(f"block count {self._blocks} out of sync with runs")
        for r in self._runs:
            if r.count < 1 or len(r.crcs) != r.count:
                problems.append(f"{r!r} has a bad count or {len(r.crcs)} checksums")
            if prev is not None:
                if r.file_block < prev.file_end:
                    problems.append(f"{prev!r} and {r!r} overlap or are out of order")
                elif r.file_block == prev.file_end and prev.vol_block + prev.count == r.vol_block:
                    problems.append(f"{prev!r} and {r!r} are contiguous but not merged")
            for c in r.crcs:
                if not (c == UNWRITTEN or 0 <= c < 2**32):
                    problems.append(f"{r!r} has an invalid checksum {c}")
                    break
            prev = r
        return problems
