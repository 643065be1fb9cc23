"""fsck: one deliberate corruption per check, each reported in plain words."""

from __future__ import annotations

import stat
from array import array

import pytest

from fusenas.meta.extents import Run
from fusenas.meta.fsck import check
from fusenas.meta.store import MetadataStore

REG = stat.S_IFREG | 0o644


@pytest.fixture
def s() -> MetadataStore:
    st_ = MetadataStore.create(
        data_blocks=64, stripe_blocks=4, max_inodes=50, journal=lambda b: None, now_ns=1
    )
    d = st_.mkdir(1, b"d", 0o755, 0, 0, 2)
    st_.mkdir(d.ino, b"sub", 0o755, 0, 0, 2)
    for name in (b"f", b"g"):
        f = st_.mknod(d.ino, name, REG, 0, 0, 0, 3)
        runs = st_.plan_allocation(f.ino, 0, 4)
        st_.map_blocks(f.ino, 0, runs, [1, 2, 3, 4], 4 * 4096, 4)
    st_.symlink(1, b"l", b"t", 0, 0, 5)
    assert check(st_) == []
    return st_


def _one(s: MetadataStore, word: str) -> None:
    problems = check(s)
    assert problems, "corruption not detected"
    assert any(word in p for p in problems), problems


def _ino(s: MetadataStore, *path: bytes) -> int:
    ino = 1
    for p in path:
        ino = s.lookup(ino, p).ino
    return ino


def test_file_nlink(s: MetadataStore) -> None:
    s.inodes[_ino(s, b"d", b"f")].nlink = 2
    _one(s, "nlink 2 but 1 directory entries")


def test_dir_nlink(s: MetadataStore) -> None:
    s.inodes[_ino(s, b"d")].nlink = 2
    _one(s, "expected 3")


def test_dotdot(s: MetadataStore) -> None:
    s.inodes[_ino(s, b"d", b"sub")].parent = 1
    _one(s, "'..'")


def test_dangling_entry(s: MetadataStore) -> None:
    d = s.inodes[_ino(s, b"d")].dir
    assert d is not None
    d.add(b"ghost", 999)
    _one(s, "dangling")


def test_unreachable(s: MetadataStore) -> None:
    d = s.inodes[_ino(s, b"d")].dir
    assert d is not None
    d.remove(b"f")
    problems = check(s)
    assert any("not reachable" in p for p in problems), problems


def test_extent_overlap_between_files(s: MetadataStore) -> None:
    f = s.inodes[_ino(s, b"d", b"f")]
    g = s.inodes[_ino(s, b"d", b"g")]
    assert f.extents is not None and g.extents is not None
    vol = next(iter(f.extents)).vol_block
    g.extents.set(10, [(vol + 1, 1)], [0])
    g.size = 11 * 4096
    _one(s, "mapped by both")


def test_free_and_used(s: MetadataStore) -> None:
    f = s.inodes[_ino(s, b"d", b"f")]
    assert f.extents is not None
    run = next(iter(f.extents))
    f.extents.punch(0, 4)  # unmapped but not freed...
    s.allocator.free([(run.vol_block, 2)])  # ...half given back: the rest leaks
    _one(s, "leaked")
    s.inodes[_ino(s, b"d", b"g")].extents.set(5, [(run.vol_block, 1)], [0])  # type: ignore[union-attr]
    s.inodes[_ino(s, b"d", b"g")].size = 6 * 4096
    _one(s, "free and in use")


def test_blocks_beyond_data_area(s: MetadataStore) -> None:
    g = s.inodes[_ino(s, b"d", b"g")]
    assert g.extents is not None
    g.extents.set(4, [(64, 2)], [0, 0])
    g.size = 6 * 4096
    _one(s, "outside the data area")


def test_written_blocks_past_eof(s: MetadataStore) -> None:
    s.inodes[_ino(s, b"d", b"g")].size = 4096
    _one(s, "past the end of file")


def test_unwritten_blocks_past_eof_are_fine(s: MetadataStore) -> None:
    g = _ino(s, b"d", b"g")
    s.fallocate(g, 4, 4, None, 9)
    assert check(s) == []


def test_symlink_size_and_kind(s: MetadataStore) -> None:
    ln = s.inodes[_ino(s, b"l")]
    ln.size = 9
    _one(s, "symlink")
    ln.size = 1
    ln.mode = REG
    _one(s, "kind data")


def test_extent_representation(s: MetadataStore) -> None:
    f = s.inodes[_ino(s, b"d", b"f")]
    assert f.extents is not None
    next(iter(f.extents)).crcs = array("q", [1])
    _one(s, "checksums")


def test_bad_cookie_and_next_ino(s: MetadataStore) -> None:
    d = s.inodes[_ino(s, b"d")].dir
    assert d is not None
    d.next_cookie = 3
    _one(s, "bad cookie")
    s.next_ino = 2
    _one(s, "next_ino")


def test_allocator_run_outside(s: MetadataStore) -> None:
    s.allocator.data_blocks = 100
    s.allocator.free([(64, 10)])
    _one(s, "outside the data area")


def test_run_class_equality() -> None:
    assert Run(0, 1, 1, array("q", [5])) == Run(0, 1, 1, array("q", [5]))
