"""Real mounts with faults: a member failing under load (``-o inject``), a member hanging
under a writer and a reader (failed at its deadline), bit rot on a member file while mounted,
a member file deleted while mounted then replaced, a hot spare added online taking over a
failing member, a degraded mount, and RAID5 with two members missing refused. Each ends with
the data equal to the model and ``fusenas fsck`` clean."""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

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


class Writer(threading.Thread):
    """Writes and fsyncs small files into the mount until stopped; ``model`` holds them."""

    def __init__(self, mnt: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.mnt = mnt
        self.rng = random.Random(seed)
        self.model: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.seed = seed

    def run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                name = f"w{self.seed}-{i % 40}"
                data = self.rng.randbytes(self.rng.choice([3000, 40_000, 200_000]))
                with open(self.mnt / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self.model[name] = data
                i += 1
                time.sleep(0.01)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> dict[str, bytes]:
        self.stop.set()
        self.join(60)
        assert not self.is_alive()
        assert self.error is None, self.error
        assert len(self.model) >= 3
        return self.model


class Reader(threading.Thread):
    """Reads the files of ``model`` back until stopped, dropping the kernel's caches now and
    then so reads reach the daemon; a mismatch or an error is reported by ``finish``."""

    def __init__(self, mnt: Path, model: dict[str, bytes]) -> None:
        super().__init__(daemon=True)
        self.mnt = mnt
        self.model = dict(model)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.reads = 0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for name, data in self.model.items():
                    got = (self.mnt / name).read_bytes()
                    assert got == data, f"{name}: {len(got)} bytes differ from the model"
                    self.reads += 1
                if self.reads % 3 == 0:
                    with open("/proc/sys/vm/drop_caches", "w") as f:
                        f.write("1\n")
                time.sleep(0.02)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(60)
        assert not self.is_alive()
        assert self.error is None, self.error
        assert self.reads > 0


def live_status(mnt: Path) -> dict[str, Any]:
    r = run_fusenas("status", str(mnt), "--json")
    assert r.returncode == 0, r.stderr
    report: dict[str, Any] = json.loads(r.stdout)
    return report


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


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("level", "members"), [("raid5", 4), ("raid6", 5)], ids=["5-4", "6-5"])
def test_member_hangs_under_load_and_is_failed_at_its_deadline(
    tmp_path: Path, mounter: Mounter, level: str, members: int
) -> None:
    voldir = mkfs(tmp_path / "vol", level, members)
    m = mounter.mount(voldir, None, "-o", "inject=member:2:hang_after:300,io_timeout=2")
    model = write_model(m.mnt, 21)
    writer = Writer(m.mnt, 4)
    reader = Reader(m.mnt, model)
    writer.start()
    reader.start()
    deadline = time.monotonic() + 90  # the cache writes in place by age: then member 2 hangs
    while (report := live_status(m.mnt))["members"][2]["state"] != "faulty":
        assert time.monotonic() < deadline, report["members"]
        assert writer.is_alive() and reader.is_alive(), (writer.error, reader.error, m.log())
        time.sleep(0.5)
    assert report["degraded"], report
    time.sleep(3)  # the workload goes on, degraded, past another deadline or two
    model |= write_model(m.mnt, 22, count=3)
    model |= writer.finish()  # every request completed (the writer fsyncs each file)
    reader.finish()
    check_model(m.mnt, model)
    t0 = time.monotonic()
    assert mounter.unmount(m) == 0, m.log()  # the hung I/O was abandoned: no wait on it
    assert time.monotonic() - t0 < 20, m.log()
    assert "I/O deadline exceeded" in m.log(), m.log()
    fsck_clean(voldir)
    # The failure is recorded: the next mount treats member 2 as returning (resynced from
    # the write-intent bitmap, or rebuilt), not as an up-to-date member. The resync may be
    # over before status is read, so the mount's log line is the proof, not the state.
    m = mounter.mount(voldir)
    check_model(m.mnt, model)
    assert "member 2 (" in m.log() and "is back: " in m.log(), m.log()
    assert mounter.unmount(m) == 0, m.log()


@pytest.mark.timeout(300)
def test_spare_added_online_takes_over_a_failing_member(tmp_path: Path, mounter: Mounter) -> None:
    voldir = mkfs(tmp_path / "vol")
    m = mounter.mount(voldir, None, "-o", "inject=member:1:fail_after:400")
    spare = voldir / "spare.img"
    r = run_fusenas("add-spare", str(m.mnt), str(spare))
    assert r.returncode == 0, r.stdout + r.stderr + m.log()
    assert "(online" in r.stdout and "is a spare" in r.stdout, r.stdout
    report = live_status(m.mnt)
    assert report["spares"] == [str(spare)], report
    assert not report["degraded"], report["members"]  # nothing failed yet
    assert "spare.img(S)" in run_fusenas("status", str(m.mnt)).stdout
    r = run_fusenas("add-spare", str(m.mnt), str(spare))  # twice: refused, one line
    assert r.returncode == 1 and "already part of" in r.stderr, r.stdout + r.stderr
    model = write_model(m.mnt, 31)
    writer = Writer(m.mnt, 5)
    writer.start()
    # Member 1 dies once the cache writes in place; the spare takes its slot and is rebuilt.
    deadline = time.monotonic() + 120
    while (report := live_status(m.mnt))["members"][1]["path"] != str(spare) or report["degraded"]:
        assert time.monotonic() < deadline, (report["members"], m.log())
        assert writer.is_alive(), writer.error
        time.sleep(0.5)
    assert report["spares"] == [], report
    model |= write_model(m.mnt, 32, count=2)
    model |= writer.finish()
    check_model(m.mnt, model)
    log = m.log()
    assert "member 1 failed: spare" in log and "member 1 rebuilt" in log, log
    assert mounter.unmount(m) == 0, m.log()
    fsck_clean(voldir)
    report = json.loads(run_fusenas("status", str(voldir), "--json").stdout)
    assert not report["degraded"] and report["members"][1]["path"] == str(spare), report
    (voldir / "member-0.img").rename(voldir / "away.img")  # the rebuilt spare now serves
    m = mounter.mount(voldir)
    check_model(m.mnt, model)
    assert mounter.unmount(m) == 0, m.log()
