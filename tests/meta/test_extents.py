"""ExtentMap against a dict model: file block -> (vol block, crc)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.meta.extents import UNWRITTEN, ExtentMap

op_st = st.one_of(
    st.tuples(
        st.just("set"),
        st.integers(0, 60),
        st.lists(st.tuples(st.integers(0, 200), st.integers(1, 6)), min_size=1, max_size=3),
        st.sampled_from([UNWRITTEN, 0, 7, 2**32 - 1]),
    ),
    st.tuples(st.just("punch"), st.integers(0, 70), st.integers(0, 20)),
    st.tuples(st.just("truncate"), st.integers(0, 70)),
)


def _flatten(runs):
    out = []
    for s, n in runs:
        out.extend(range(s, s + n))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(op_st, max_size=25))
def test_matches_dict_model(ops):
    ext = ExtentMap()
    model: dict[int, tuple[int, int]] = {}
    for op in ops:
        if op[0] == "set":
            _, first, runs, crc = op
            total = sum(n for _, n in runs)
            crcs = [crc if i % 2 else UNWRITTEN for i in range(total)]
            want_freed = [model[b][0] for b in range(first, first + total) if b in model]
            freed = ext.set(first, runs, crcs)
            vols = _flatten(runs)
            for i in range(total):
                model[first + i] = (vols[i], crcs[i])
        elif op[0] == "punch":
            _, first, count = op
            want_freed = [model.pop(b)[0] for b in range(first, first + count) if b in model]
            freed = ext.punch(first, count)
        else:
            _, keep = op
            want_freed = [model.pop(b)[0] for b in sorted(model) if b >= keep]
            freed = ext.truncate(keep)
        assert _flatten(freed) == want_freed
        assert ext.check_invariants() == []
        assert ext.blocks() == len(model)
        got = {}
        for m in ext.lookup(0, 80):
            for i in range(m.count):
                if m.vol_block is not None:
                    got[m.file_block + i] = (m.vol_block + i, m.crcs[i])
        assert got == model
        for b in range(0, 80, 7):
            assert ext.vol_block_of(b) == (model[b][0] if b in model else None)


def test_lookup_covers_range_with_holes():
    ext = ExtentMap()
    ext.set(2, [(100, 3)], [1, 2, 3])
    ms = ext.lookup(0, 10)
    assert [(m.file_block, m.count, m.vol_block) for m in ms] == [
        (0, 2, None),
        (2, 3, 100),
        (5, 5, None),
    ]
    assert ms[1].crcs == (1, 2, 3)
    mid = ext.lookup(3, 1)
    assert [(m.file_block, m.count, m.vol_block, m.crcs) for m in mid] == [(3, 1, 101, (2,))]


def test_contiguous_writes_merge_into_one_run():
    ext = ExtentMap()
    for i in range(10):
        ext.set(i * 4, [(1000 + i * 4, 4)], [i] * 4)
    assert len(ext) == 1
    assert ext.blocks() == 40
    # overwrite in the middle with other blocks splits it in three
    assert ext.set(10, [(5, 2)], [9, 9]) == [(1010, 2)]
    assert len(ext) == 3
    assert ext.check_invariants() == []


def test_contiguous_growth_extends_the_run_in_place() -> None:
    """A file written sequentially is one run whose checksum array grows in place: merging a
    new chunk must not copy the run's existing checksums (that made writing a file quadratic
    in its size: 10 s of merging for a 1 GiB file in 1 MiB chunks)."""
    m = ExtentMap()
    m.set(0, [(1000, 256)], [7] * 256)
    crcs = next(iter(m)).crcs
    for i in range(1, 64):
        m.set(i * 256, [(1000 + i * 256, 256)], [i] * 256)
    (run,) = list(m)
    assert run.crcs is crcs
    assert (run.file_block, run.vol_block, run.count) == (0, 1000, 64 * 256)
    assert run.crcs[255] == 7 and run.crcs[256] == 1 and run.crcs[-1] == 63
    assert m.check_invariants() == []
