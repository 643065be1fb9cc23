"""Directory entries as tree items answer what the in-memory Directory answers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.meta import dir_items as D
from fusenas.meta.btree import Tree
from fusenas.meta.memtable import LayeredView, Memtable
from fusenas.meta.model import FIRST_COOKIE, Directory
from fusenas.meta.records import DirEntry
from tests.meta.test_btree import MemoryPages

PARENT = 9

names = st.binary(min_size=1, max_size=40).filter(lambda n: b"/" not in n and b"\0" not in n)


@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["add", "add", "remove", "checkpoint"]), names),
        min_size=5,
        max_size=80,
    )
)
@settings(max_examples=80, deadline=None)
async def test_matches_the_directory_model(ops: list[tuple[str, bytes]]) -> None:
    src = MemoryPages()
    tree = Tree(None)
    mem = Memtable()
    model = Directory()
    next_cookie = FIRST_COOKIE
    generation = 0
    for i, (kind, name) in enumerate(ops):
        view = LayeredView([mem], src, tree)
        found = D.lookup(view, PARENT, name)
        assert (found.ino if found else None) == model.get(name)
        if kind == "add" and found is None:
            D.add(mem, PARENT, name, DirEntry(1000 + i, next_cookie, 8))
            model.add(name, 1000 + i)
            next_cookie += 1
        elif kind == "remove" and found is not None:
            D.remove(mem, PARENT, name, found)
            model.remove(name)
        elif kind == "checkpoint":
            generation += 1
            tree = (await src.apply(tree, mem.changes(), generation)).tree
            mem = Memtable()
        view = LayeredView([mem], src, tree)
        listed = D.entries_after(view, PARENT, 0, 1000)
        assert [(n, ino) for n, ino, _, _ in listed] == [
            (n, ino) for n, ino, _ in model.entries_after(0)
        ]
        assert D.is_empty(view, PARENT) == (len(model) == 0)
        # Resume in the middle, at the cookie of the third entry.
        if len(listed) > 3:
            rest = D.entries_after(view, PARENT, listed[2][3], 1000)
            assert rest == listed[3:]
