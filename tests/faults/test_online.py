"""Online scrub and replace through the daemon's control socket, on real mounts, while a
writer keeps writing: ``fusenas scrub MOUNTPOINT`` repairs a flipped block on a member file,
``fusenas replace MOUNTPOINT OLD NEW`` rebuilds a failed member. Each ends with the data equal
to the model, ``fusenas fsck`` clean after unmount, and (replace) the rebuilt member serving
reads with another member gone."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from fusenas.volume.superblock import DATA_OFFSET
from tests.faults.test_mount_faults import Writer, check_model, fsck_clean, write_model
from tests.mount.conftest import Mounter, mkfs, run_fusenas

pytestmark = pytest.mark.mount


def rot_blocks_on_member0(voldir: Path, data: bytes) -> int:
    """Wait until a quarter of ``data``'s blocks are in place on member 0, flip a bit in each
    of them (through the member file), return how many."""
    wanted = {data[off : off + 4096] for off in range(0, len(data), 4096)}

    def on_member0() -> list[int]:
        with open(voldir / "member-0.img", "rb") as f:
            f.seek(DATA_OFFSET)
            area = f.read(32 << 20)
        return [
            DATA_OFFSET + off
            for off in range(0, len(area), 4096)
            if area[off : off + 4096] in wanted
        ]

    deadline = time.monotonic() + 60
    while len(positions := on_member0()) < len(wanted) // 4:
        assert time.monotonic() < deadline, len(positions)
        time.sleep(0.5)
    with open(voldir / "member-0.img", "r+b") as f:
        for pos in positions:
            f.seek(pos + 7)
            b = f.read(1)
            f.seek(pos + 7)
            f.write(bytes([b[0] ^ 0x01]))
        os.fsync(f.fileno())
    return len(positions)


def test_online_scrub_repairs_a_flipped_block_while_writing(
    tmp_path: Path, mounter: Mounter
) -> None:
    voldir = mkfs(tmp_path / "vol")
    m = mounter.mount(voldir)
    data = random.Random(5).randbytes(1 << 20)
    with open(m.mnt / "big", "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    rotten = rot_blocks_on_member0(voldir, data)
    writer = Writer(m.mnt, 1)
    writer.start()
    r = run_fusenas("scrub", str(m.mnt), "--rate", "1G", "--quiet", timeout=300)
    model = {"big": data, **writer.finish()}
    assert r.returncode == 0, r.stdout + r.stderr + m.log()
    assert "(online" in r.stdout and "unrecoverable 0" in r.stdout, r.stdout
    found = int(r.stdout.split("mismatches: ")[1].split(" checksum")[0])
    assert found >= rotten, r.stdout
    status = json.loads(run_fusenas("status", str(m.mnt), "--json").stdout)
    job = status["jobs"]["scrub"]
    assert job["state"] == "done" and job["result"]["repaired"] >= rotten
    assert job["progress"]["done"] == job["progress"]["total"] > 0
    check_model(m.mnt, model)
    # A second online scrub finds nothing left to repair.
    r = run_fusenas("scrub", str(voldir), "--rate", "1G", "--quiet", timeout=300)
    assert r.returncode == 0 and "mismatches: 0 checksum, 0 parity" in r.stdout, r.stdout
    assert mounter.unmount(m) == 0, m.log()
    fsck_clean(voldir)
    r = run_fusenas("scrub", str(voldir), "--quiet", timeout=300)  # offline now
    assert r.returncode == 0 and "mismatches: 0 checksum, 0 parity" in r.stdout, r.stdout


def test_online_replace_of_a_failed_member_while_writing(tmp_path: Path, mounter: Mounter) -> None:
    voldir = mkfs(tmp_path / "vol")
    m = mounter.mount(voldir, None, "-o", "inject=member:1:fail_after:300")
    model = write_model(m.mnt, 11)
    writer = Writer(m.mnt, 2)
    writer.start()
    deadline = time.monotonic() + 60  # the cache writes in place by age: then member 1 fails
    while "(F)" not in (status := run_fusenas("status", str(m.mnt))).stdout:
        assert time.monotonic() < deadline and writer.is_alive(), status.stdout + m.log()
        time.sleep(0.5)
    new = voldir / "new-1.img"
    r = run_fusenas("replace", str(m.mnt), "1", str(new), "--quiet", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr + m.log()
    assert "rebuilt" in r.stdout and "(online" in r.stdout, r.stdout
    model |= write_model(m.mnt, 12, count=2)
    model |= writer.finish()
    report = json.loads(run_fusenas("status", str(m.mnt), "--json").stdout)
    assert report["jobs"]["replace"]["state"] == "done"
    assert not report["degraded"], report["members"]
    assert report["members"][1]["path"] == str(new)
    check_model(m.mnt, model)
    # A second replace of the same slot while nothing is wrong is refused cleanly.
    r = run_fusenas("replace", str(m.mnt), "1", str(new), "--quiet")
    assert r.returncode == 1 and "already a member" in r.stderr, r.stderr
    assert mounter.unmount(m) == 0, m.log()
    fsck_clean(voldir)
    (voldir / "member-0.img").rename(voldir / "away.img")  # the rebuilt member now serves
    m = mounter.mount(voldir)
    check_model(m.mnt, model)
    assert mounter.unmount(m) == 0, m.log()
