"""A directory's entries as items of the metadata tree. Pure and synchronous.

The paged counterpart of ``fusenas.meta.model.Directory``. Each entry is two items (btrfs'
``DIR_ITEM``/``DIR_INDEX`` pair, docs/metadata_format.md):

* ``DIRENT | parent | hash(name) | name`` → ``DirEntry`` (ino, cookie, type): lookup by name
  in O(log n) whatever the directory's size;
* ``DIRINDEX | parent | cookie`` → (ino, type, name): readdir in cookie order.

Cookies come from the directory's inode record (``next_cookie``, which only grows, starting
at ``FIRST_COOKIE``; 1 and 2 are "." and ".."), so a cookie is never reused in a directory:
a listing resumed at cookie ``c`` returns each entry present throughout exactly once, and
never one removed before it was reached.

Reads raise ``PageMiss`` (before any change, for the functions that change something); the
caller loads the page and runs the function again.
"""

from __future__ import annotations

from fusenas.meta.keys import Kind, dirent_key, dirindex_key, prefix, prefix_end, split_u64
from fusenas.meta.memtable import LayeredView, Memtable
from fusenas.meta.records import DirEntry, decode_dirindex, encode_dirindex


def lookup(view: LayeredView, parent: int, name: bytes) -> DirEntry | None:
    raw = view.get_nowait(dirent_key(parent, name))
    return DirEntry.decode(raw) if raw is not None else None


def add(mem: Memtable, parent: int, name: bytes, entry: DirEntry) -> None:
    """Add ``name`` → ``entry`` (the caller checked that ``name`` is not there, and took
    ``entry.cookie`` from the directory's ``next_cookie``)."""
    mem.put(dirent_key(parent, name), entry.encode())
    mem.put(dirindex_key(parent, entry.cookie), encode_dirindex(entry.ino, entry.kind, name))


def remove(mem: Memtable, parent: int, name: bytes, entry: DirEntry) -> None:
    """Remove ``name`` (``entry``: what ``lookup`` returned for it)."""
    mem.delete(dirent_key(parent, name))
    mem.delete(dirindex_key(parent, entry.cookie))


def entries_after(
    view: LayeredView, parent: int, cookie: int, limit: int
) -> list[tuple[bytes, int, int, int]]:
    """Up to ``limit`` entries with a cookie above ``cookie``, in cookie order, as
    (name, ino, type, cookie)."""
    start = dirindex_key(parent, cookie + 1)
    end = prefix_end(prefix(Kind.DIRINDEX, parent))
    items, _ = view.items_nowait(start, end, limit)
    out = []
    for key, raw in items:
        ino, kind, name = decode_dirindex(raw)
        out.append((name, ino, kind, split_u64(key, 9)))
    return out


def is_empty(view: LayeredView, parent: int) -> bool:
    return not entries_after(view, parent, 0, 1)
