"""Free-space allocation for the data area, in 4 KiB blocks.

Units: blocks of ``BLOCK_SIZE`` bytes, numbered from 0 at the start of the data area;
``data_blocks`` is one past the last. Runs are ``(first_block, count)`` with ``count >= 1``.

``RunSet`` is a set of blocks kept as sorted, disjoint, maximally merged runs (a list of
starts for ``bisect`` plus a dict start -> length). ``Allocator`` is a ``RunSet`` of *free*
blocks with an extra index ``(length, start)`` sorted by length for best fit.

Invariants:

* the allocator is derived state: ``Allocator.from_used`` rebuilds it from the extent maps
  (and the metadata image never stores it), so it can never disagree with them after a load;
* freeing a block that is already free, or marking used a block that is not free, is an
  ``AssertionError``: it is always a bug in the caller;
* ``allocate`` checks the total free count first and raises ``NoSpaceError`` before changing
  anything.

Policy of ``allocate(count, goal=, stripe_blocks=)``, in order:

1. ``goal`` (the block after the file's previous block): take as much as is free from there,
   so files grow contiguously — unless the free blocks there are a hole (they end before the
   stripe after the goal's does) left by an overwrite: filling it would be a partial-stripe
   update;
2. requests of at least ``stripe_blocks`` prefer the smallest free run that holds the request
   starting on a stripe boundary (full-stripe writes need no read-modify-write);
3. smaller requests fill a *small-write stripe* — a wholly free, aligned stripe, the
   smallest free run that holds one — from a cursor, block after block, then the next such
   stripe. Copy-on-write turns every overwrite into an allocation; if each took the best-fit
   hole (the block some earlier overwrite freed), every 4 KiB write would land in a different
   stripe and cost a parity read-modify-write. Consecutive small allocations instead fill
   whole stripes, which the stripe cache writes as full stripes (WAFL's and ZFS's answer);
4. otherwise (no wholly free stripe left, or ``stripe_blocks`` 1) the smallest free run that
   holds the whole request (best fit; small pieces pack into holes, big runs stay whole);
5. otherwise several runs, largest first (fewest pieces).

The cursor is a hint, not state: allocations are never replayed (the journal records the
chosen blocks), so it need not survive a restart.

The replay window (``replay_safe``): the journal keeps every record since the *older* of the
two checkpoints (replay falls back to it when the newest slot is corrupt), so a block freed
since then may still be the target of ``DATA``/``STRIPE`` records that replay would write
again. Every ``free`` is remembered in two generations, rotated by the checkpoint
(``start_checkpoint`` at the instant the checkpoint takes its log position, then
``checkpoint_written`` or ``checkpoint_failed``): blocks freed in neither generation, after at
least two checkpoints since this allocator was built, cannot be named by any replayable
record. Only such blocks may be written in place without a journal record (ordered writes,
``fusenas.fs.files``).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator

from fusenas.errors import NoSpaceError

VolRun = tuple[int, int]


class RunSet:
    """A set of blocks as sorted, disjoint, merged runs. Subclasses hear about every run
    that appears or disappears through ``_added``/``_removed``."""

    __slots__ = ("_lens", "_starts", "_total")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._lens: dict[int, int] = {}
        self._total = 0

    # hooks
    def _added(self, start: int, n: int) -> None:
        pass

    def _removed(self, start: int, n: int) -> None:
        pass

    def _put(self, start: int, n: int) -> None:
        insort(self._starts, start)
        self._lens[start] = n
        self._added(start, n)

    def _drop(self, start: int) -> int:
        n = self._lens.pop(start)
        del self._starts[bisect_left(self._starts, start)]
        self._removed(start, n)
        return n

    @property
    def total(self) -> int:
        """The number of blocks in the set."""
        return self._total

    def __iter__(self) -> Iterator[VolRun]:
        lens = self._lens
        for s in self._starts:
            yield (s, lens[s])

    def __len__(self) -> int:
        """The number of runs."""
        return len(self._starts)

    def runs(self) -> list[VolRun]:
        return list(self)

    def overlap(self, start: int, n: int) -> int:
        """How many blocks of ``[start, start+n)`` are in the set."""
        end = start + n
        i = max(bisect_right(self._starts, start) - 1, 0)
        got = 0
        starts = self._starts
        while i < len(starts) and starts[i] < end:
            s = starts[i]
            e = s + self._lens[s]
            got += max(0, min(e, end) - max(s, start))
            i += 1
        return got

    def runs_within(self, start: int, n: int) -> list[VolRun]:
        """The parts of the set's runs inside ``[start, start+n)``."""
        end = start + n
        out: list[VolRun] = []
        i = max(bisect_right(self._starts, start) - 1, 0)
        while i < len(self._starts) and self._starts[i] < end:
            s = self._starts[i]
            lo, hi = max(s, start), min(s + self._lens[s], end)
            if lo < hi:
                out.append((lo, hi - lo))
            i += 1
        return out

    def contains(self, start: int, n: int) -> bool:
        return self.overlap(start, n) == n

    def add(self, start: int, n: int) -> None:
        """Add ``[start, start+n)``; none of it may be in the set already."""
        if n <= 0:
            return
        assert self.overlap(start, n) == 0, f"blocks [{start}, {start + n}) already in the set"
        end = start + n
        i = bisect_right(self._starts, start) - 1
        if i >= 0:
            ps = self._starts[i]
            if ps + self._lens[ps] == start:
                start = ps
                self._drop(ps)
        if end in self._lens:
            end += self._drop(end)
        self._put(start, end - start)
        self._total += n

    def union(self, start: int, n: int) -> None:
        """Add ``[start, start+n)``, whatever part of it is in the set already."""
        self.remove_present(start, n)
        self.add(start, n)

    def remove(self, start: int, n: int) -> None:
        """Remove ``[start, start+n)``; all of it must be in the set, inside one run."""
        if n <= 0:
            return
        i = bisect_right(self._starts, start) - 1
        assert i >= 0, f"blocks [{start}, {start + n}) not in the set"
        s = self._starts[i]
        ln = self._lens[s]
        assert start + n <= s + ln, f"blocks [{start}, {start + n}) not in the set"
        self._drop(s)
        if start > s:
            self._put(s, start - s)
        if start + n < s + ln:
            self._put(start + n, s + ln - start - n)
        self._total -= n

    def remove_present(self, start: int, n: int) -> int:
        """Remove whatever part of ``[start, start+n)`` is in the set; return how much."""
        pieces = self.runs_within(start, n)
        for lo, ln in pieces:
            self.remove(lo, ln)
        return sum(ln for _, ln in pieces)


class Allocator(RunSet):
    """The free blocks of the data area ``[0, data_blocks)``. See the module docstring."""

    __slots__ = (
        "_by_size",
        "_checkpoints",
        "_cursor",
        "_cursor_end",
        "_freed",
        "_freed_before",
        "data_blocks",
    )

    def __init__(self, data_blocks: int, *, all_free: bool = True) -> None:
        self._by_size: list[tuple[int, int]] = []
        super().__init__()
        self.data_blocks = data_blocks
        # The small-write stripe: blocks [_cursor, _cursor_end) are where the next small
        # allocation looks first (an empty range: choose a new stripe).
        self._cursor = 0
        self._cursor_end = 0
        # The replay window (module docstring): freed since the newest checkpoint's log
        # position, and between the two retained checkpoints' positions.
        self._freed = RunSet()
        self._freed_before = RunSet()
        self._checkpoints = 0
        if all_free and data_blocks > 0:
            self.add(0, data_blocks)

    @classmethod
    def from_used(cls, data_blocks: int, used_runs: Iterable[VolRun]) -> Allocator:
        """The allocator whose free blocks are exactly those of ``[0, data_blocks)`` not in
        ``used_runs``. Overlapping used runs are tolerated here (fsck reports them)."""
        alloc = cls(data_blocks, all_free=False)
        pos = 0
        for s, n in sorted(used_runs):
            s = max(s, 0)
            if s > pos:
                gap_end = min(s, data_blocks)
                if gap_end > pos:
                    alloc.add(pos, gap_end - pos)
            pos = max(pos, s + n)
        if pos < data_blocks:
            alloc.add(pos, data_blocks - pos)
        return alloc

    def _added(self, start: int, n: int) -> None:
        insort(self._by_size, (n, start))

    def _removed(self, start: int, n: int) -> None:
        i = bisect_left(self._by_size, (n, start))
        del self._by_size[i]

    @property
    def free_blocks(self) -> int:
        return self.total

    def free(self, runs: Iterable[VolRun]) -> None:
        """Return ``runs`` to free space. Each block must be in use and inside the data area."""
        for s, n in runs:
            assert s >= 0 and s + n <= self.data_blocks, f"run ({s}, {n}) outside the data area"
            self.add(s, n)
            self._freed.union(s, n)  # a block may be freed twice in one generation

    def release(self, runs: Iterable[VolRun]) -> None:
        """Give back blocks ``allocate`` returned that were never mapped (their ``DATA``
        records may be in the log: they enter the replay window like any freed block)."""
        self.free(runs)

    # -- the replay window ------------------------------------------------------------------

    def start_checkpoint(self) -> RunSet:
        """A checkpoint took its log position: frees from now on belong to the new window.
        Returns the generation to hand to ``checkpoint_written``/``checkpoint_failed``."""
        token, self._freed = self._freed, RunSet()
        return token

    def checkpoint_written(self, token: RunSet) -> None:
        """The checkpoint of ``token`` is durable: replay starts at it or at the one before,
        so frees older than ``token`` can no longer be replayed."""
        self._freed_before = token
        self._checkpoints += 1

    def checkpoint_failed(self, token: RunSet) -> None:
        """The checkpoint of ``token`` was not written: its frees stay in the window."""
        for s, n in token:
            self._freed.union(s, n)

    def replay_safe(self, start: int, n: int) -> bool:
        """Whether no record replay could write (``DATA``/``STRIPE``) names a block of
        ``[start, start+n)``: true once two checkpoints were written since this allocator was
        built and none of the blocks was freed since the older of the two."""
        return (
            self._checkpoints >= 2
            and not self._freed.overlap(start, n)
            and not self._freed_before.overlap(start, n)
        )

    def mark_used(self, runs: Iterable[VolRun]) -> None:
        """Take ``runs`` out of free space; every block must be free."""
        for s, n in runs:
            assert self.contains(s, n), f"run ({s}, {n}) is not free"
            self._take(s, n)

    def ensure_used(self, runs: Iterable[VolRun]) -> None:
        """Take whatever part of ``runs`` is free out of free space (replay of a mapping that
        arrives without its allocation)."""
        for s, n in runs:
            self.remove_present(s, n)

    def _take(self, start: int, n: int) -> None:
        # [start, start+n) may span several free runs only through ensure_used.
        self.remove_present(start, n)

    def allocate(
        self, count: int, *, goal: int | None = None, stripe_blocks: int = 1
    ) -> list[VolRun]:
        """Take ``count`` free blocks; return them as runs in the order to use them."""
        if count <= 0:
            return []
        if count > self.total:
            raise NoSpaceError(f"need {count} blocks, {self.total} free")
        out: list[VolRun] = []
        need = count
        stripe = max(stripe_blocks, 1)
        if goal is not None and 0 <= goal < self.data_blocks:
            i = bisect_right(self._starts, goal) - 1
            if i >= 0:
                s = self._starts[i]
                avail = s + self._lens[s] - goal
                if avail > 0 and self._goal_fills_stripe(goal, avail, stripe):
                    n = min(avail, need)
                    self.remove(goal, n)
                    out.append((goal, n))
                    need -= n
        if need == 0:
            return out
        if need >= stripe > 1:
            a = self._aligned_fit(need, stripe)
            if a is not None:
                self.remove(a, need)
                out.append((a, need))
                return _merged(out)
        elif stripe > 1:
            need = self._from_cursor(need, stripe, out)
            if need == 0:
                return _merged(out)
        k = bisect_left(self._by_size, (need, -1))
        if k < len(self._by_size):
            _ln, s = self._by_size[k]
            self.remove(s, need)
            out.append((s, need))
            return _merged(out)
        while need > 0:
            ln, s = self._by_size[-1]
            n = min(ln, need)
            self.remove(s, n)
            out.append((s, n))
            need -= n
        return _merged(out)

    def _goal_fills_stripe(self, goal: int, avail: int, stripe: int) -> bool:
        """Whether to take blocks at ``goal`` (``avail`` free from there): only in open space
        (free through the goal's stripe and the whole next one) or in the small-write
        stripe. A hole some overwrite left — where policy 1 would put the file's next block
        — would make the write a partial-stripe update."""
        open_end = (goal // stripe + 2) * stripe
        return goal + avail >= open_end or self._cursor <= goal < self._cursor_end

    def _aligned_fit(self, need: int, stripe: int) -> int | None:
        """The stripe-aligned start of ``need`` free blocks in the smallest free run that has
        room for them, or None."""
        for ln, s in self._by_size[bisect_left(self._by_size, (need, -1)) :]:
            a = -(-s // stripe) * stripe
            if a + need <= s + ln:
                return a
        return None

    def _from_cursor(self, need: int, stripe: int, out: list[VolRun]) -> int:
        """Take up to ``need`` blocks from small-write stripes (policy 3), appending them to
        ``out``; return how many are still needed (more than 0 only when no wholly free
        stripe is left)."""
        while need > 0:
            if self._cursor >= self._cursor_end:
                a = self._aligned_fit(stripe, stripe)
                if a is None:
                    return need
                self._cursor, self._cursor_end = a, a + stripe
            # A goal allocation may have taken blocks of the stripe: skip to a free one.
            i = bisect_right(self._starts, self._cursor) - 1
            s = self._starts[i] if i >= 0 else -1
            if i < 0 or s + self._lens[s] <= self._cursor:
                if i + 1 >= len(self._starts) or self._starts[i + 1] >= self._cursor_end:
                    self._cursor = self._cursor_end
                    continue
                s = self._cursor = self._starts[i + 1]
            n = min(need, s + self._lens[s] - self._cursor, self._cursor_end - self._cursor)
            self.remove(self._cursor, n)
            out.append((self._cursor, n))
            self._cursor += n
            need -= n
        return 0


def _merged(runs: list[VolRun]) -> list[VolRun]:
    out: list[VolRun] = []
    for s, n in runs:
        if out and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((s, n))
    return out
