"""``fusenas scrub``, ``fusenas replace`` and ``fusenas add-spare`` on real member files
(offline: the volume is not mounted; data is written in-process with the real open code)."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import trio

from fusenas.engine import open_volume
from fusenas.fs.files import FileStore
from fusenas.volume.layout import Level
from fusenas.volume.superblock import DATA_OFFSET

FUSENAS = str(Path(sys.executable).with_name("fusenas"))
PAYLOAD = random.Random(9).randbytes(3 << 20)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FUSENAS, *args], capture_output=True, text=True, timeout=120, check=False
    )


def make(tmp_path: Path, level: str = "raid5", members: int = 4, size: str = "24M") -> Path:
    voldir = tmp_path / "vol"
    r = run(
        "mkfs", str(voldir), "--level", level, "--members", str(members),
        "--size", size, "--journal-size", "8M", "--chunk", "16K",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr

    async def fill() -> None:
        async with open_volume(voldir, checkpointer=False) as vol:
            ino = vol.meta.mknod(1, b"data", 0o100644, 0, 0, 0, 0).ino
            await FileStore(vol).write(ino, 0, PAYLOAD)

    trio.run(fill)
    return voldir


def read_back(voldir: Path, missing: list[str] = ()) -> bytes:  # type: ignore[assignment]
    for name in missing:
        (voldir / name).rename(voldir / (name + ".away"))
    try:

        async def read() -> bytes:
            async with open_volume(voldir, checkpointer=False) as vol:
                ino = vol.meta.lookup(1, b"data").ino
                return await FileStore(vol).read(ino, 0, len(PAYLOAD))

        return trio.run(read)
    finally:
        for name in missing:
            (voldir / (name + ".away")).rename(voldir / name)


def flip(path: Path, start: int, end: int, every: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for off in range(start, end, every):
            f.seek(off + rng.randrange(every))
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))


def test_scrub_repairs_bit_rot_and_parity(tmp_path: Path) -> None:
    voldir = make(tmp_path)
    clean = run("scrub", str(voldir), "--quiet")
    assert clean.returncode == 0, clean.stderr
    assert "mismatches: 0 checksum, 0 parity/copy" in clean.stdout
    # Rot on member 0 over the file's rows (data and parity chunks alike): the data area
    # starts after two 16M checkpoint regions, i.e. at member offset 32M / 3 ~ 10.7M.
    flip(voldir / "member-0.img", DATA_OFFSET + (10 << 20), DATA_OFFSET + (12 << 20), 16384, 1)
    r = run("scrub", str(voldir), "--quiet", "--rate", "512M")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unrecoverable 0" in r.stdout
    m = re.search(r"mismatches: (\d+) checksum, (\d+) parity/copy; repaired (\d+)", r.stdout)
    assert m and int(m[1]) > 0 and int(m[2]) > 0 and int(m[3]) >= int(m[1]), r.stdout
    again = run("scrub", str(voldir), "--quiet")
    assert "mismatches: 0 checksum, 0 parity/copy" in again.stdout, again.stdout
    assert read_back(voldir, ["member-1.img"]) == PAYLOAD
    assert run("fsck", str(voldir)).returncode == 0


def test_scrub_reports_unrecoverable(tmp_path: Path) -> None:
    voldir = make(tmp_path, "raid0", 2)
    # Data area at member offset 32M / 2 = 16M; the file covers 1.5M of each member.
    flip(voldir / "member-0.img", DATA_OFFSET + (16 << 20), DATA_OFFSET + (17 << 20), 4096, 2)
    r = run("scrub", str(voldir), "--quiet")
    assert r.returncode == 1
    assert "unrecoverable 0" not in r.stdout


def test_replace_a_deleted_member_then_lose_another(tmp_path: Path) -> None:
    voldir = make(tmp_path, "raid6", 5)
    (voldir / "member-2.img").unlink()
    status = run("status", str(voldir))
    assert "missing" in status.stdout
    r = run("replace", str(voldir), "2", str(voldir / "new-2.img"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "MB/s" in r.stdout
    status = run("status", str(voldir), "--json")
    assert '"degraded": false' in status.stdout, status.stdout
    assert run("fsck", str(voldir)).returncode == 0
    # The rebuilt member now carries data: lose two others and read everything.
    assert read_back(voldir, ["member-0.img", "member-1.img"]) == PAYLOAD


def test_replace_refuses_when_nothing_to_rebuild_from(tmp_path: Path) -> None:
    voldir = make(tmp_path, "raid0", 2)
    r = run("replace", str(voldir), "1", str(voldir / "new.img"), "--quiet")
    assert r.returncode == 1
    assert "cannot rebuild" in r.stderr


def test_add_spare(tmp_path: Path) -> None:
    voldir = make(tmp_path, "raid1", 2, size="40M")
    r = run("add-spare", str(voldir), str(voldir / "spare.img"))
    assert r.returncode == 0, r.stderr
    assert (voldir / "spares").read_text().split() == ["spare.img"]
    again = run("add-spare", str(voldir), str(voldir / "spare.img"))
    assert again.returncode == 1
    assert Level.RAID1  # the spare is picked up by the mounted daemon: tests/faults/test_mount


def test_status_shows_rebuilding_and_spares(tmp_path: Path) -> None:
    from fusenas.engine import rebuild, spares
    from fusenas.volume.member import FILES

    voldir = make(tmp_path)

    async def start_replace() -> None:
        async with open_volume(voldir, checkpointer=False, spares=False) as vol:
            new = voldir / "new-3.img"
            dev = await rebuild.open_new_device(FILES, new, rebuild.member_size(vol))
            await rebuild.attach_replacement(vol, 3, dev, new)  # interrupted before any stripe
            await spares.add_spare(vol, voldir / "spare.img")

    trio.run(start_replace)
    r = run("status", str(voldir))
    assert r.returncode == 0, r.stderr
    assert "new-3.img[3](R)" in r.stdout
    assert "rebuild of member 3: [>" in r.stdout and "0.0%" in r.stdout
    assert "spares: spare.img(S)" in r.stdout
    # The next read-write open resumes the rebuild (the spare manager runs with it).
    r = run("replace", str(voldir), "3", str(voldir / "new-3b.img"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "(R)" not in run("status", str(voldir)).stdout
