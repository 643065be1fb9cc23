"""Real mounts with faults: a member failing under load (``-o inject``), bit rot on a member
file while mounted, a member file deleted while mounted then replaced, a degraded mount, and
RAID5 with two members missing refused. Each ends with the data equal to the model and
``fusenas fsck`` clean."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from fusenas.volume.superblock import DATA_OFFSET
from tests.mount.conftest import Mounter, mkfs, run_fusenas

pytestmark = pytest.mark.mount


def write_model(mnt: Path, seed: int, count: int = 6) -> dict[str, bytes]:
    rng = random.Random(seed)
    model = {}
    for i in range(count):
        data = rng.randbytes(rng.choice([1000, 70_000, 600_000]))
        name = f"f{seed}-{i}"
        with open(mnt / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        model[name] = data
    return model


def check_model(mnt: Path, model: dict[str, bytes]) -> None:
    for name, data in model.items():
        assert (mnt / name).read_bytes() == data, name


def fsck_clean(voldir: Path) -> None:
    r = run_fusenas("fsck", str(voldir))
    assert r.returncode == 0, r.stdout + r.stderr


def test_member_fails_under_load_then_replace(tmp_path: Path, mounter: Mounter) -> None:
    voldir = mkfs(tmp_path / "vol")
    m = mounter.mount(voldir, None, "-o", "inject=member:1:fail_after:20")
    model = write_model(m.mnt, 1)
    model |= write_model(m.mnt, 2)
    check_model(m.mnt, model)
    deadline = time.monotonic() + 30  # the cache writes in place by age: then member 1 fails
    while "(F)" not in (status := run_fusenas("status", str(voldir))).stdout:
        assert time.monotonic() < deadline, status.stdout + m.log()
        time.sleep(0.5)
    model |= write_model(m.mnt, 7)
    check_model(m.mnt, model)
    assert mounter.unmount(m) == 0, m.log()
    assert "member 1" in m.log() and "failed" in m.log()
    fsck_clean(voldir)
    r = run_fusenas("replace", str(voldir), "1", str(voldir / "new-1.img"), "--quiet")
    assert r.returncode == 0, r.stderr
    fsck_clean(voldir)
    (voldir / "member-0.img").rename(voldir / "away.img")  # the rebuilt member now serves
    m = mounter.mount(voldir)
    check_model(m.mnt, model)
    assert mounter.unmount(m) == 0, m.log()


def test_bit_rot_on_a_member_file_is_healed_while_mounted(tmp_path: Path, mounter: Mounter) -> None:
    voldir = mkfs(tmp_path / "vol")
    m = mounter.mount(voldir)
    data = random.Random(3).randbytes(2 << 20)
    with open(m.mnt / "big", "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    model = {"big": data}
    blocks = [data[off : off + 4096] for off in range(0, len(data), 4096)]

    wanted = set(blocks)

    def on_member0() -> list[int]:
        with open(voldir / "member-0.img", "rb") as f:
            f.seek(DATA_OFFSET)
            area = f.read(32 << 20)  # the file lives after the checkpoint regions (~10.7M)
        return [
            DATA_OFFSET + off
            for off in range(0, len(area), 4096)
            if area[off : off + 4096] in wanted
        ]

    # RAID5 keeps data chunks plain: wait until the stripe cache wrote the file in place (by
    # age, 5 s) and about a third of its blocks are on member 0, then rot each of them.
    deadline = time.monotonic() + 60
    while len(positions := on_member0()) < len(blocks) // 4:
        assert time.monotonic() < deadline, len(positions)
        time.sleep(0.5)
    with open(voldir / "member-0.img", "r+b") as f:
        for pos in positions:
            f.seek(pos + 100)
            b = f.read(1)
            f.seek(pos + 100)
            f.write(bytes([b[0] ^ 0x10]))
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    check_model(m.mnt, model)
    assert mounter.unmount(m) == 0, m.log()
    assert "bad data on member(s) 0" in m.log()
    fsck_clean(voldir)
    r = run_fusenas("scrub", str(voldir), "--quiet")
    assert r.returncode == 0 and "unrecoverable 0" in r.stdout, r.stdout


def test_member_file_deleted_while_mounted_then_replaced(tmp_path: Path, mounter: Mounter) -> None:
    voldir = mkfs(tmp_path / "vol", "raid6", 5)
    m = mounter.mount(voldir)
    model = write_model(m.mnt, 4)
    (voldir / "member-2.img").unlink()  # the daemon keeps its descriptor
    model |= write_model(m.mnt, 5)
    check_model(m.mnt, model)
    assert mounter.unmount(m) == 0, m.log()
    # Degraded mount, with a warning.
    m = mounter.mount(voldir)
    check_model(m.mnt, model)
    assert "member 2" in m.log() and "missing" in m.log()
    assert mounter.unmount(m) == 0, m.log()
    r = run_fusenas("replace", str(voldir), "2", str(voldir / "member-2.img"), "--quiet")
    assert r.returncode == 0, r.stderr  # the deleted path itself is a fine replacement
    assert r.returncode == 0, r.stderr
    fsck_clean(voldir)
    status = run_fusenas("status", str(voldir), "--json")
    assert '"degraded": false' in status.stdout
    for gone in ("member-0.img", "member-1.img"):
        (voldir / gone).rename(voldir / (gone + ".away"))
    m = mounter.mount(voldir)
    check_model(m.mnt, model)
    assert mounter.unmount(m) == 0, m.log()


def test_raid5_two_members_missing_is_refused_and_nothing_written(
    tmp_path: Path, mounter: Mounter
) -> None:
    voldir = mkfs(tmp_path / "vol")
    m = mounter.mount(voldir)
    write_model(m.mnt, 6, count=2)
    assert mounter.unmount(m) == 0
    for name in ("member-1.img", "member-3.img"):
        (voldir / name).unlink()

    def digest() -> dict[str, str]:
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(voldir.iterdir())
            if p.name.startswith(("member-", "journal"))
        }

    before = digest()
    mnt = mounter.mountpoint()
    r = run_fusenas(str(voldir), str(mnt))
    assert r.returncode == 1
    assert "cannot start" in r.stderr and "more than the level tolerates" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(mnt)
    assert digest() == before
