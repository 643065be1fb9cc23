"""Directory cookies: stable readdir under concurrent add/remove; 100k entries."""

from __future__ import annotations

import random
import stat
import time

from fusenas.meta.model import FIRST_COOKIE, Directory
from fusenas.meta.store import MetadataStore


def test_readdir_stable_under_add_and_remove() -> None:
    rng = random.Random(3)
    for _round in range(30):
        d = Directory()
        names = [f"n{i}".encode() for i in range(300)]
        for i, n in enumerate(names):
            d.add(n, i + 10)
        present = set(names)
        stable = set(names)  # present during the whole listing
        seen: list[bytes] = []
        counter = 1000
        # a listing resumed by cookie in pages, with changes between pages (like FUSE), and
        # a generator kept alive across changes
        it = d.entries_after(0)
        cookie = 0
        while True:
            page = []
            for name, _ino, c in it:
                page.append(name)
                cookie = c
                if len(page) == 7:
                    break
            if not page:
                break
            seen.extend(page)
            for _ in range(rng.randint(0, 12)):
                if rng.random() < 0.6 and present:
                    victim = rng.choice(sorted(present))
                    d.remove(victim)
                    present.discard(victim)
                    stable.discard(victim)
                else:
                    counter += 1
                    n = f"new{counter}".encode()
                    d.add(n, counter)
                    present.add(n)
            if rng.random() < 0.5:
                it = d.entries_after(cookie)
        assert len(seen) == len(set(seen)), "an entry came back twice"
        assert stable <= set(seen), "an entry present throughout was skipped"


def test_cookies_start_at_three_and_only_grow() -> None:
    d = Directory()
    assert d.add(b"a", 5) == FIRST_COOKIE
    d.remove(b"a")
    assert d.add(b"a", 5) == FIRST_COOKIE + 1
    assert [c for _n, _i, c in d.entries_after(0)] == [FIRST_COOKIE + 1]
    assert list(d.entries_after(FIRST_COOKIE + 1)) == []


def test_hundred_thousand_entries() -> None:
    s = MetadataStore.create(
        data_blocks=16, stripe_blocks=1, max_inodes=200_000, journal=lambda b: None, now_ns=1
    )
    n = 100_000
    t0 = time.perf_counter()
    for i in range(n):
        s.mknod(1, b"file-%06d" % i, stat.S_IFREG | 0o644, 0, 0, 0, 2)
    t_create = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, n, 7):
        assert s.lookup(1, b"file-%06d" % i).size == 0
    t_lookup = (time.perf_counter() - t0) / (n // 7)
    assert t_lookup < 50e-6, t_lookup
    names = [name for name, _node, _c in s.readdir(1, 0)]
    assert len(names) == n and len(set(names)) == n
    # resuming near the end is cheap (bisect, not a scan)
    last = list(s.readdir(1, 0))[-10][2]
    t0 = time.perf_counter()
    for _ in range(1000):
        assert len(list(s.readdir(1, last))) == 9
    assert (time.perf_counter() - t0) / 1000 < 1e-3
    for i in range(0, n, 2):
        s.unlink(1, b"file-%06d" % i, 3)
    assert len(list(s.readdir(1, 0))) == n // 2
    assert t_create < 20
