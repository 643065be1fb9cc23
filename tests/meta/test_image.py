"""Checkpoint image: round trip of random stores, error paths, 100k-inode timing."""

from __future__ import annotations

import random
import stat
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusenas.errors import FsError
from fusenas.meta.fsck import check
from fusenas.meta.image import ImageError, decode_image, encode_image
from fusenas.meta.store import MetadataStore

REG = stat.S_IFREG | 0o644


def _random_store(seed: int, steps: int) -> MetadataStore:
    rng = random.Random(seed)
    s = MetadataStore.create(
        data_blocks=500,
        stripe_blocks=8,
        max_inodes=1000,
        journal=lambda b: None,
        now_ns=1,
        root_uid=3,
        root_gid=4,
        root_mode=0o1777,
    )
    for t in range(steps):
        dirs = [i for i, n in s.inodes.items() if n.is_dir and n.nlink]
        files = [i for i, n in s.inodes.items() if n.is_reg]
        d = rng.choice(dirs)
        name = rng.choice([b"a", b"b", b"c", bytes(range(1, 40)), "é".encode()])
        op = rng.randrange(9)
        try:
            if op == 0:
                s.mknod(d, name, REG, 0, rng.randrange(9), 0, t)
            elif op == 1:
                s.mkdir(d, name, 0o2755, 0, 5, t)
            elif op == 2:
                s.symlink(d, name, b"../" * rng.randrange(1, 9), 0, 0, t)
            elif op == 3 and files:
                f = rng.choice(files)
                first, n = rng.randrange(30), rng.randint(1, 9)
                runs = s.plan_allocation(f, first, n)
                size = max(s.get(f).size, (first + n) * 4096)
                s.map_blocks(f, first, runs, [rng.randrange(2**32) for _ in range(n)], size, t)
            elif op == 4 and files:
                s.setxattr(rng.choice(files), b"user.k%d" % rng.randrange(3), b"v" * t, 0, t)
            elif op == 5:
                s.unlink(d, name, t)
            elif op == 6 and files:
                f = rng.choice(files)
                s.open(f)
            elif op == 7:
                s.rename(d, name, rng.choice(dirs), rng.choice([b"a", b"b", b"z"]), 0, t)
            elif op == 8 and files:
                s.fallocate(rng.choice(files), rng.randrange(40), 3, None, t)
        except FsError:
            pass
    return s


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 150))
def test_round_trip(seed: int, steps: int) -> None:
    s = _random_store(seed, steps)
    assert check(s) == []
    raw = encode_image(s)
    back = decode_image(raw + b"\xff" * 100, journal=lambda b: None)  # region padding is fine
    assert back.snapshot() == s.snapshot()
    assert encode_image(back) == raw
    assert check(back) == []
    assert back.orphans() == s.orphans()


def test_errors() -> None:
    raw = encode_image(_random_store(1, 80))
    with pytest.raises(ImageError, match="magic"):
        decode_image(b"X" + raw[1:], journal=print)
    with pytest.raises(ImageError, match="version"):
        decode_image(raw[:8] + struct.pack("<I", 99) + raw[12:], journal=print)
    with pytest.raises(ImageError):
        decode_image(raw[:-1], journal=print)
    with pytest.raises(ImageError):
        decode_image(raw[:30], journal=print)
    # a total length that cuts the records short
    short = raw[:16] + struct.pack("<Q", len(raw) - 5) + raw[24:]
    with pytest.raises(ImageError):
        decode_image(short, journal=print)


def test_hundred_thousand_inodes_timing() -> None:
    s = MetadataStore.create(
        data_blocks=1 << 20,
        stripe_blocks=16,
        max_inodes=1 << 20,
        journal=lambda b: None,
        now_ns=1,
    )
    dirs = [s.mkdir(1, b"d%03d" % i, 0o755, 0, 0, 2).ino for i in range(100)]
    for i in range(100_000 - 101):
        f = s.mknod(dirs[i % 100], b"file-%06d" % i, REG, 0, 0, 0, 3)
        if i % 4 == 0:
            runs = s.plan_allocation(f.ino, 0, 3)
            s.map_blocks(f.ino, 0, runs, [i, i, i], 3 * 4096, 4)
        if i % 10 == 0:
            s.setxattr(f.ino, b"user.tag", b"x" * 20, 0, 5)
    assert len(s.inodes) == 100_000
    t0 = time.perf_counter()
    raw = encode_image(s)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = decode_image(raw, journal=lambda b: None)
    t_dec = time.perf_counter() - t0
    print(f"100k inodes: image {len(raw) / 1e6:.1f} MB, encode {t_enc:.2f}s, decode {t_dec:.2f}s")
    assert len(back.inodes) == 100_000
    assert back.allocator.runs() == s.allocator.runs()
    assert t_enc < 5 and t_dec < 5
