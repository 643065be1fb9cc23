"""Stripe planning: the member reads and writes that put new bytes into one stripe row. Pure.

No I/O, no trio, no state: every function here depends on its arguments only, so it is tested
without devices (``tests/stripe/test_plan.py``) and may run in a worker thread. The executor,
which holds the row lock, reads, journals and issues, is ``fusenas.stripe.writer``.

md's raid5 ``handle_stripe`` is the model, in two phases:

1. :func:`plan_stripe_write` **analyses** the new bytes (which data blocks of the row they
   touch and which they overwrite whole) and **decides** the strategy (:func:`choose_strategy`),
   which fixes the member reads the update needs (:attr:`StripePlan.reads`);
2. :meth:`StripePlan.finish` takes the bytes those reads returned and computes the member
   writes: the new data, then the new parity.

Units: bytes. ``parts`` are (logical offset, bytes). Member offsets in a plan, of its reads and
of its writes alike, are absolute (the member's data area starts at ``data_offset``), as in
``MemberWrite`` and the WAL's ``STRIPE`` records.

Invariants
----------
* The row range. A plan works on the range ``[lo, hi)`` of chunk offsets that holds every
  written byte (the whole chunk ``[0, chunk)`` for a suspect row, below). Every read and every
  parity write of the plan is that range of a member; data writes are exactly the written
  pieces, nothing is rewritten that the caller did not write.
* Strategies, parity levels only (md's names, :class:`Strategy`), the row range being what
  a "data block" means here:

  - FULL: every data block is overwritten: parity from the new data alone, no reads;
  - RMW (read-modify-write): read the old bytes of each touched data block and of every
    parity block, patch the parity by the difference;
  - RCW (reconstruct-write): read each data block not overwritten whole, recompute parity;
  - DEGRADED: a member of the row is not active (missing, faulty, rebuilding): read every
    active member of the row, recover the missing data blocks from parity
    (``fusenas.volume.parity``), recompute parity. A down member simply misses its write.

  Between RMW and RCW the one with fewer member reads wins, ties to RCW (md's rule).
* Suspect rows: a row whose parity may disagree with its data (the layer above knows which:
  rows holding blocks not yet mapped, where an unjournaled whole-stripe write cut by a crash
  may have reached some members only) is never patched by RMW, whose new parity would inherit
  the error. Its row range is the whole chunk and RMW becomes RCW, so a partial write to it
  recomputes the parity of the whole row from what the members hold (reading what it does not
  write); once live data is in the row, its parity is right everywhere. FULL and DEGRADED
  recompute parity from data anyway (over the whole chunk too).
* The write hole: a plan that changes parity without overwriting every data block of its row
  range (RMW, RCW, DEGRADED: :attr:`StripePlan.journal`) must have its exact member writes,
  data and parity, journaled durably before any of them is issued; replaying them makes the
  row consistent whatever subset reached the members (docs/architecture.md, "The write
  hole"). FULL needs no record (every data block of the range is rewritten and replay
  recomputes parity from the data alone), and levels without parity have nothing to tear.
* Levels without parity (RAID0/1/10): no strategy (None), no reads, one write per copy.
* No copies of the caller's bytes: data writes are views into ``parts`` (the caller must not
  change those bytes until the writes are issued); ``finish`` copies only to merge new bytes
  into old ones.

Preconditions: ``parts`` lie inside the stripe and do not overlap each other.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fusenas.units import ByteData
from fusenas.volume import parity
from fusenas.volume.layout import Geometry, Piece
from fusenas.volume.writes import MemberWrite

#: A written piece (inside one chunk) and its new bytes, a view of the caller's buffer.
Written = tuple[Piece, memoryview]


class Strategy(enum.Enum):
    """How a stripe row is updated (md's names)."""

    FULL = "full-stripe"  # parity from the new data alone, no reads
    RMW = "read-modify-write"  # read old data of the written blocks and old parity
    RCW = "reconstruct-write"  # read the data blocks not being written, recompute parity
    DEGRADED = "degraded"  # some member of the row is down: read all, recover, recompute


def choose_strategy(
    ndata: int, nparity: int, covered: int, touched: int, degraded: bool
) -> Strategy:
    """Pick the stripe update strategy by counting member reads, as md's raid5 does.

    ``covered`` data blocks are fully overwritten over the row range, ``touched`` data blocks
    are written at least in part (``covered <= touched <= ndata``). Read-modify-write reads the
    old contents of every touched block and every parity block; reconstruct-write reads every
    data block that is not fully covered. Ties go to reconstruct-write, which leaves parity
    computed from scratch rather than patched.
    """
    if degraded:
        return Strategy.DEGRADED
    if covered == ndata:
        return Strategy.FULL
    rmw_reads = touched + nparity
    rcw_reads = ndata - covered
    return Strategy.RMW if rmw_reads < rcw_reads else Strategy.RCW


@dataclass(frozen=True)
class StripePlan:
    """The decided update of one stripe row (see the module docstring).

    The executor reads ``[row_offset, row_offset + row_length)`` of every member in ``reads``
    and hands the bytes to :meth:`finish`; if ``journal`` it journals the writes ``finish``
    returns before issuing them.
    """

    stripe: int
    #: None for levels without parity.
    strategy: Strategy | None
    #: Members to read, each over the row range.
    reads: tuple[int, ...]
    #: The row range: its start as a chunk offset, then as an absolute member offset, and
    #: its length (every read and parity write covers it).
    row_start: int
    row_offset: int
    row_length: int
    #: The written pieces in the caller's order (the order of the data writes).
    pieces: tuple[Written, ...]
    #: The analysis, parity levels only (empty for the others): the pieces of each touched
    #: data index, the data indexes whose row range they overwrite whole, the member of each
    #: data index and the parity members (P, then Q) of the row.
    by_index: Mapping[int, tuple[Written, ...]]
    covered: frozenset[int]
    data_members: tuple[int, ...]
    parity_members: tuple[int, ...]
    #: Where the members' data areas start (absolute member offsets).
    data_offset: int

    @property
    def journal(self) -> bool:
        """True if the writes update parity without rewriting the whole row range: they must
        be journaled (and the journal durable) before they are issued."""
        return self.strategy is not None and self.strategy is not Strategy.FULL

    def finish(self, old: Mapping[int, ByteData]) -> list[MemberWrite]:
        """The member writes of the update, given ``old``: the bytes of the row range read
        from each member in ``reads``. Data writes first (in the order of the pieces), then
        parity (P, then Q).

        Raises ``DataLostError`` (DEGRADED) if the reads leave too few members to recover the
        row, and ``KeyError`` if a planned read is missing from ``old``.
        """
        writes = [
            MemberWrite(m, self.data_offset + p.member_offset, buf)
            for p, buf in self.pieces
            for m in p.copies
        ]
        if self.strategy is None:
            return writes
        parities: Sequence[ByteData]
        if self.strategy is Strategy.RMW:
            parities = self._patched_parity(old)
        elif len(self.parity_members) == 1:
            parities = [parity.gen_p(self._new_row(old))]
        else:
            parities = parity.gen_pq(self._new_row(old))
        writes += [
            MemberWrite(m, self.row_offset, pv)
            for m, pv in zip(self.parity_members, parities, strict=True)
        ]
        return writes

    def _patched_parity(self, old: Mapping[int, ByteData]) -> list[ByteData]:
        """RMW: the old parity with each touched block's change applied (the order does not
        matter: P and Q are linear in the data)."""
        p = old[self.parity_members[0]]
        if len(self.parity_members) == 1:
            for i in self.by_index:
                old_d = old[self.data_members[i]]
                p = parity.update_p(p, old_d, self._block(i, old_d))
            return [p]
        q = old[self.parity_members[1]]
        for i in self.by_index:
            old_d = old[self.data_members[i]]
            p, q = parity.update_pq(p, q, i, old_d, self._block(i, old_d))
        return [p, q]

    def _new_row(self, old: Mapping[int, ByteData]) -> list[ByteData]:
        """FULL, RCW, DEGRADED: the new bytes of every data block over the row range."""
        dmembers = self.data_members
        if self.strategy is Strategy.DEGRADED:
            have: list[ByteData | None] = [old.get(m) for m in dmembers]
            if any(d is None for d in have):
                pmembers = self.parity_members
                q = old.get(pmembers[1]) if len(pmembers) > 1 else None
                have = list(parity.recover(have, old.get(pmembers[0]), q))
        else:  # FULL reads nothing; RCW reads the blocks not covered
            have = [None if i in self.covered else old[m] for i, m in enumerate(dmembers)]
        return [self._block(i, base) for i, base in enumerate(have)]

    def _block(self, index: int, base: ByteData | None) -> ByteData:
        """Data block ``index`` over the row range after the write: its pieces laid over
        ``base`` (its old bytes; None only if the pieces cover the range)."""
        own = self.by_index.get(index, ())
        if len(own) == 1 and own[0][0].length == self.row_length:
            return own[0][1]  # one piece is the whole block: its bytes as they are, no copy
        if not own:
            assert base is not None, "an untouched block needs its old bytes"
            return base
        if index in self.covered:
            out = bytearray(self.row_length)
        else:
            assert base is not None, "a block written in part needs its old bytes"
            out = bytearray(base)
        lo = self.row_start
        for p, buf in own:
            out[p.chunk_offset - lo : p.chunk_offset - lo + p.length] = buf
        return out


def plan_stripe_write(
    geometry: Geometry,
    data_offset: int,
    stripe: int,
    parts: Sequence[tuple[int, ByteData]],
    active: Sequence[bool],
    suspect: bool,
) -> StripePlan:
    """Analyse ``parts`` (logical offset, bytes), all inside ``stripe``, and decide how to
    write them: see the module docstring.

    ``active[m]`` is True if member ``m`` serves reads (only active members are read; any
    other member of the row makes the update DEGRADED). ``suspect``: the row's parity may
    disagree with its data (parity levels only; see the module docstring). ``ValueError`` if
    ``parts`` are empty or leave the stripe.
    """
    g = geometry
    pieces = tuple(
        (p, memoryview(buf)[p.logical_offset - off : p.logical_offset - off + p.length])
        for off, buf in parts
        for p in g.map_range(off, len(buf))
    )
    if not pieces:
        raise ValueError("nothing to write")
    if any(p.stripe != stripe for p, _ in pieces):
        raise ValueError("parts cross the stripe")
    lo = min(p.chunk_offset for p, _ in pieces)
    hi = max(p.chunk_offset + p.length for p, _ in pieces)
    if not g.parity_count:
        # Nothing to read or decide: every copy of every piece is written as it is.
        return StripePlan(
            stripe=stripe,
            strategy=None,
            reads=(),
            row_start=lo,
            row_offset=data_offset + stripe * g.chunk + lo,
            row_length=hi - lo,
            pieces=pieces,
            by_index={},
            covered=frozenset(),
            data_members=(),
            parity_members=(),
            data_offset=data_offset,
        )
    if suspect:
        lo, hi = 0, g.chunk  # recompute the parity of the whole row, not just the range
    rlen = hi - lo
    grouped: dict[int, list[Written]] = {}
    for written in pieces:
        grouped.setdefault(written[0].data_index, []).append(written)
    by_index = {i: tuple(ws) for i, ws in grouped.items()}
    # The pieces do not overlap, so a block is covered when they add up to the row range.
    covered = frozenset(i for i, ws in by_index.items() if sum(p.length for p, _ in ws) >= rlen)
    ndata = g.data_per_stripe
    dmembers: tuple[int, ...] = tuple(g.data_copies(stripe, i)[0] for i in range(ndata))
    pmembers: tuple[int, ...] = g.parity_members(stripe)
    row = (*dmembers, *pmembers)
    strategy = choose_strategy(
        ndata, len(pmembers), len(covered), len(by_index), not all(active[m] for m in row)
    )
    if strategy is Strategy.RMW and suspect:
        strategy = Strategy.RCW
    reads: tuple[int, ...] = ()
    if strategy is Strategy.RMW:
        reads = (*(dmembers[i] for i in by_index), *pmembers)
    elif strategy is Strategy.RCW:
        reads = tuple(m for i, m in enumerate(dmembers) if i not in covered)
    elif strategy is Strategy.DEGRADED:
        reads = tuple(m for m in row if active[m])
    return StripePlan(
        stripe=stripe,
        strategy=strategy,
        reads=reads,
        row_start=lo,
        row_offset=data_offset + stripe * g.chunk + lo,
        row_length=rlen,
        pieces=pieces,
        by_index=by_index,
        covered=covered,
        data_members=dmembers,
        parity_members=pmembers,
        data_offset=data_offset,
    )


def full_stripe_writes(
    g: Geometry, data_offset: int, first: int, data: memoryview
) -> list[MemberWrite]:
    """The member writes that store whole stripes ``first, …`` holding ``data`` (logical
    order, a multiple of ``stripe_data_size`` bytes): one write per member covering the run,
    parity included. Pure (no I/O, no state), safe in a worker thread; ``data`` is read, never
    kept beyond the returned views. Members whose bytes are the same (mirrors) share one
    buffer, and a member holding one data index of every stripe (RAID1, RAID0/10 without
    rotation) gets a view or a single strided copy."""
    chunk, ndata = g.chunk, g.data_per_stripe
    count = data.nbytes // g.stripe_data_size
    rows = np.frombuffer(data, dtype=np.uint8).reshape(count, ndata, chunk)
    p = q = None
    if g.parity_count:
        p, q = parity.gen_rows(rows, want_q=g.parity_count == 2)
    # What each member holds in each stripe of the run: ("d", data index), ("p"), ("q").
    plans: dict[int, list[tuple[str, int]]] = {m: [] for m in range(g.members)}
    for k in range(count):
        stripe = first + k
        for i in range(ndata):
            for m in g.data_copies(stripe, i):
                plans[m].append(("d", i))
        for kind, m in zip("pq", g.parity_members(stripe), strict=False):
            plans[m].append((kind, 0))
    built: dict[tuple[tuple[str, int], ...], npt.NDArray[np.uint8]] = {}
    writes = []
    for member in range(g.members):
        plan = tuple(plans[member])
        assert len(plan) == count, "every member holds one chunk of every stripe"
        if plan not in built:
            if len(set(plan)) == 1 and plan[0][0] == "d":
                buf = np.ascontiguousarray(rows[:, plan[0][1]])  # a view when ndata == 1
            else:
                buf = np.empty((count, chunk), dtype=np.uint8)
                for k, (kind, i) in enumerate(plan):
                    if kind == "d":
                        buf[k] = rows[k, i]
                    elif kind == "p":
                        assert p is not None
                        buf[k] = p[k]
                    else:
                        assert q is not None
                        buf[k] = q[k]
            built[plan] = buf
        view = built[plan].reshape(-1).data  # a memoryview, no copy
        writes.append(MemberWrite(member, data_offset + first * chunk, view))
    return writes
