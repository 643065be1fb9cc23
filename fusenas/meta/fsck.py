"""fsck for the in-memory metadata store: report every inconsistency in plain words.

``check(store)`` never changes the store and returns a list of problems (empty = consistent).
What it checks:

* the root exists, is a directory and is its own parent;
* every directory entry names an existing inode with a valid name; no directory has two
  names; every subdirectory's ".." (``parent``) is the directory that names it; cookies are
  unique, at least 3 and below the directory's ``next_cookie``;
* link counts: a directory has ``2 + subdirectories`` (0 once removed), anything else as many
  links as names; an inode with nlink 0 is an orphan (allowed: open or waiting for reclaim)
  and must have no name; every other inode is reachable from the root;
* inode numbers are below ``next_ino``; there are at most ``max_inodes`` inodes;
* kind data matches the mode (directories have entries, symlinks a target with
  ``size == len(target)``, regular files an extent map, nothing else has any);
* extent maps: representation invariants, volume blocks inside the data area, no volume block
  mapped twice (within or across files), no *written* block past the end of file (unwritten
  ones are allowed there: fallocate KEEP_SIZE);
* the allocator: its free runs are exactly the data area minus the mapped and pending blocks;
  reports blocks both free and used, and leaked blocks (neither free nor used).
"""

from __future__ import annotations

from fusenas.meta.extents import UNWRITTEN
from fusenas.meta.store import NAME_MAX, ROOT_INO, MetadataStore
from fusenas.units import BLOCK_SIZE


def _merge(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, n in sorted(runs):
        if out and s <= out[-1][0] + out[-1][1]:
            ps, pn = out[-1]
            out[-1] = (ps, max(pn, s + n - ps))
        else:
            out.append((s, n))
    return out


def _intersect_count(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    """Blocks in both of two merged, sorted run lists."""
    i = j = got = 0
    while i < len(a) and j < len(b):
        lo = max(a[i][0], b[j][0])
        hi = min(a[i][0] + a[i][1], b[j][0] + b[j][1])
        got += max(0, hi - lo)
        if a[i][0] + a[i][1] < b[j][0] + b[j][1]:
            i += 1
        else:
            j += 1
    return got


def check(store: MetadataStore) -> list[str]:
    """Every inconsistency of ``store``, one sentence each; empty when consistent."""
    problems: list[str] = []
    say = problems.append
    inodes = store.inodes

    root = inodes.get(ROOT_INO)
    if root is None or root.dir is None:
        say("the root inode 1 is missing or not a directory")
    elif root.parent != ROOT_INO:
        say(f"the root's '..' is {root.parent}, not itself")

    refs: dict[int, int] = {}
    subdirs: dict[int, int] = {}
    for ino, node in inodes.items():
        if ino >= store.next_ino:
            say(f"inode {ino} is not below next_ino {store.next_ino}")
        if node.ino != ino:
            say(f"inode stored under {ino} calls itself {node.ino}")
        kinds = (node.dir is not None, node.target is not None, node.extents is not None)
        expect = (
            (node.mode & 0o170000) == 0o040000,
            (node.mode & 0o170000) == 0o120000,
            (node.mode & 0o170000) == 0o100000,
        )
        if kinds != expect:
            say(f"inode {ino}: kind data does not match mode {node.mode:o}")
        if node.target is not None and node.size != len(node.target):
            say(f"symlink {ino}: size {node.size} but target of {len(node.target)} bytes")
        d = node.dir
        if d is None:
            continue
        seen_cookies: set[int] = set()
        for name, child, cookie in d.items():
            if (
                not name
                or len(name) > NAME_MAX
                or b"/" in name
                or b"\0" in name
                or name in (b".", b"..")
            ):
                say(f"directory {ino}: invalid entry name {name!r}")
            if cookie < 3 or cookie >= d.next_cookie or cookie in seen_cookies:
                say(f"directory {ino}: entry {name!r} has bad cookie {cookie}")
            seen_cookies.add(cookie)
            cnode = inodes.get(child)
            if cnode is None:
                say(f"directory {ino}: entry {name!r} names missing inode {child} (dangling)")
                continue
            refs[child] = refs.get(child, 0) + 1
            if cnode.dir is not None:
                subdirs[ino] = subdirs.get(ino, 0) + 1
                if cnode.parent != ino:
                    say(f"directory {child} ({name!r} in {ino}) has '..' = {cnode.parent}")

    for ino, node in inodes.items():
        r = refs.get(ino, 0)
        if node.dir is not None:
            if ino != ROOT_INO and r > 1:
                say(f"directory {ino} has {r} names")
            if ino == ROOT_INO and r:
                say("the root directory has a name")
            linked = ino == ROOT_INO or r > 0
            want = 2 + subdirs.get(ino, 0) if linked else 0
            if node.nlink != want:
                say(f"directory {ino}: nlink {node.nlink}, expected {want}")
        elif node.nlink != r:
            say(f"inode {ino}: nlink {node.nlink} but {r} directory entries")

    # reachability from the root
    if root is not None and root.dir is not None:
        seen = {ROOT_INO}
        stack = [ROOT_INO]
        while stack:
            d = inodes[stack.pop()].dir
            assert d is not None
            for _name, child, _c in d.items():
                cn = inodes.get(child)
                if cn is not None and child not in seen:
                    seen.add(child)
                    if cn.dir is not None:
                        stack.append(child)
        for ino, node in inodes.items():
            if ino not in seen and node.nlink != 0:
                say(f"inode {ino} (nlink {node.nlink}) is not reachable from the root")
    if len(inodes) > store.max_inodes:
        say(f"{len(inodes)} inodes, more than max_inodes {store.max_inodes}")

    # extents
    owned: list[tuple[int, int, int]] = []
    for ino, node in inodes.items():
        ext = node.extents
        if ext is None:
            continue
        for p in ext.check_invariants():
            say(f"file {ino}: extent map: {p}")
        eof_block = -(-node.size // BLOCK_SIZE)
        for run in ext:
            owned.append((run.vol_block, run.count, ino))
            if run.vol_block < 0 or run.vol_block + run.count > store.data_blocks:
                say(
                    f"file {ino}: blocks [{run.vol_block}, {run.vol_block + run.count}) outside "
                    f"the data area of {store.data_blocks} blocks"
                )
            if run.file_end > eof_block:
                k = max(eof_block - run.file_block, 0)
                if any(c != UNWRITTEN for c in run.crcs[k:]):
                    say(f"file {ino}: written blocks past the end of file (size {node.size})")
    owned.sort()
    end_prev, owner_prev = -1, 0
    for s, n, ino in owned:
        if s < end_prev:
            say(f"volume block {s} is mapped by both inode {owner_prev} and inode {ino}")
        if s + n > end_prev:
            end_prev, owner_prev = s + n, ino

    # allocator
    used = _merge([(s, n) for s, n, _ in owned] + store.pending.runs() + store.reserved())
    free = store.allocator.runs()
    for s, n in free:
        if s < 0 or s + n > store.data_blocks:
            say(f"allocator: free run ({s}, {n}) outside the data area")
    both = _intersect_count(used, _merge(free))
    if both:
        say(f"allocator: {both} blocks are free and in use at once")
    used_in_area = _intersect_count(used, [(0, store.data_blocks)])
    leaked = store.data_blocks - used_in_area - (store.allocator.free_blocks - both)
    if leaked > 0:
        say(f"allocator: {leaked} blocks are neither free nor in use (leaked)")
    if store.allocator.free_blocks != sum(n for _, n in free):
        say("allocator: free block count disagrees with its runs")
    return problems
