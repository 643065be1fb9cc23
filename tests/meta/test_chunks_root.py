"""Metadata chunks (page allocation, the two-root reuse rule) and the root descriptor."""

from __future__ import annotations

import pytest

from fusenas.meta.btree import Tree
from fusenas.meta.chunks import CHUNK_BLOCKS, Chunk, ChunkPages
from fusenas.meta.page import ChildRef
from fusenas.meta.root import RootDescriptor, RootError, is_root_descriptor


def test_pages_come_in_ascending_order_and_run_out() -> None:
    pages = ChunkPages()
    pages.add_chunk(8192)
    got = [pages.allocate() for _ in range(CHUNK_BLOCKS)]
    assert got == list(range(8192, 8192 + CHUNK_BLOCKS))
    with pytest.raises(LookupError):
        pages.allocate()
    pages.add_chunk(0)
    assert pages.allocate() == 0


def test_a_freed_page_waits_until_the_next_checkpoint_is_published() -> None:
    pages = ChunkPages()
    pages.add_chunk(0)
    old = [pages.allocate() for _ in range(10)]
    free_before = pages.free_pages
    pages.free_later(5, old[:4])  # checkpoint 5's tree no longer references them
    assert pages.published(5) == []  # checkpoint 4's slot still reaches them
    assert pages.free_pages == free_before
    assert sorted(pages.published(6)) == old[:4]
    assert pages.free_pages == free_before + 4
    pages.give_back(old[4:6])  # allocated, never referenced: free at once
    assert pages.free_pages == free_before + 6


def test_the_root_descriptor_round_trips_and_refuses_garbage() -> None:
    c = Chunk(4096)
    c.set(0, True)
    c.set(4095, True)
    root = RootDescriptor(
        generation=7,
        tree=Tree(ChildRef(4096, 0xDEADBEEF, 7), 2),
        data_blocks=1 << 20,
        stripe_blocks=48,
        next_ino=12345,
        inode_count=999,
        chunks=[c],
        freed=[4100, 4101],
    )
    raw = root.encode()
    assert is_root_descriptor(raw)
    back = RootDescriptor.decode(raw)
    assert back == root and back.chunks[0].used_count() == 2
    empty = RootDescriptor(1, Tree(None), 10, 1, 2, 1)
    assert RootDescriptor.decode(empty.encode()).tree == Tree(None)
    with pytest.raises(RootError):
        RootDescriptor.decode(raw[:-1])
    with pytest.raises(RootError):
        RootDescriptor.decode(b"FNSMETA\0" + raw[8:])
    assert not is_root_descriptor(b"FNSMETA\0" + raw[8:])
