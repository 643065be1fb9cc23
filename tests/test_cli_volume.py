"""`fusenas mkfs` / `status` / `fsck` through the real command, and every bad input of mkfs.

Each refusal must be one line on stderr, a non-zero exit, and nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FUSENAS = [sys.executable, "-m", "fusenas.cli"]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FUSENAS, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def refused(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert words in lines[0], lines[0]


def make_files(tmp: Path, sizes: list[int]) -> list[Path]:
    paths = []
    for i, size in enumerate(sizes):
        p = tmp / f"disk{i}"
        with open(p, "wb") as f:
            f.truncate(size)
        paths.append(p)
    return paths


def snapshot(paths: list[Path]) -> list[bytes]:
    return [p.read_bytes()[:16384] for p in paths]


@pytest.mark.parametrize("level", ["raid0", "raid1", "raid5", "raid6", "raid10"])
def test_mkfs_status_fsck(tmp_path: Path, level: str) -> None:
    vol = tmp_path / "vol"
    r = run("mkfs", vol, "--level", level, "--members", "4", "--size", "64M", "--chunk", "16K")
    assert r.returncode == 0, r.stderr
    assert "created" in r.stdout
    status = run("status", vol)
    assert status.returncode == 0, status.stderr
    assert f"raid{level[4:]}" in status.stdout and "[UUUU]" in status.stdout
    report = json.loads(run("status", vol, "--json").stdout)
    assert report["level"] == int(level[4:]) and report["active_members"] == 4
    assert [m["state"] for m in report["members"]] == ["active"] * 4
    r = run("fsck", vol)
    assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr


def test_status_shows_missing_member(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    assert run("mkfs", vol, "--members", "4", "--size", "64M").returncode == 0
    (vol / "member-2.img").unlink()
    report = json.loads(run("status", vol, "--json").stdout)
    assert report["degraded"] and report["members"][2]["state"] == "missing"
    assert "[UU_U]" in run("status", vol).stdout


def test_mkfs_on_given_members_uses_smallest_and_says_so(tmp_path: Path) -> None:
    disks = make_files(tmp_path, [64 << 20, 64 << 20, 80 << 20])
    args = [a for d in disks for a in ("--member", str(d))]
    r = run("mkfs", tmp_path / "vol", "--level", "raid5", *args)
    assert r.returncode == 0, r.stderr
    assert "smallest" in r.stdout


def test_refuses_member_with_data_without_force(tmp_path: Path) -> None:
    disks = make_files(tmp_path, [64 << 20] * 3)
    disks[1].write_bytes(b"precious" + bytes((64 << 20) - 8))
    before = snapshot(disks)
    args = [a for d in disks for a in ("--member", str(d))]
    refused(run("mkfs", tmp_path / "vol", *args), "already holds data")
    assert snapshot(disks) == before
    assert not (tmp_path / "vol").exists()
    r = run("mkfs", tmp_path / "vol", "--force", *args)
    assert r.returncode == 0, r.stderr


def test_refuses_member_of_another_array(tmp_path: Path) -> None:
    disks = make_files(tmp_path, [64 << 20] * 3)
    args = [a for d in disks for a in ("--member", str(d))]
    assert run("mkfs", tmp_path / "a", *args).returncode == 0
    before = snapshot(disks)
    refused(run("mkfs", tmp_path / "b", *args), "superblock")
    assert snapshot(disks) == before


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--level", "raid5", "--members", "2"], "at least 3"),
        (["--level", "raid6", "--members", "3"], "at least 4"),
        (["--level", "raid10", "--members", "5"], "even"),
        (["--level", "raid10", "--members", "2"], "at least 4"),
        (["--chunk", "3K"], "power of two"),
        (["--chunk", "2K"], "at least 4K"),
        (["--size", "1M"], "too small"),
        (["--level", "raid7"], "raid7"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_mkfs_bad_input(tmp_path: Path, extra: list[str], words: str) -> None:
    refused(run("mkfs", tmp_path / "vol", *extra), words)
    assert not (tmp_path / "vol").exists()


def test_same_member_twice_and_directory_member(tmp_path: Path) -> None:
    disks = make_files(tmp_path, [64 << 20] * 3)
    os.link(disks[0], tmp_path / "alias")
    args = [
        "--member",
        str(disks[0]),
        "--member",
        str(disks[1]),
        "--member",
        str(tmp_path / "alias"),
    ]
    refused(run("mkfs", tmp_path / "vol", *args), "named twice")
    (tmp_path / "dir").mkdir()
    args = ["--member", str(disks[0]), "--member", str(disks[1]), "--member", str(tmp_path / "dir")]
    refused(run("mkfs", tmp_path / "vol", *args), "directory")
    refused(run("mkfs", tmp_path / "vol", "--member", str(tmp_path / "nope"), *args[2:]), "exist")


def test_existing_volume_is_not_overwritten(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    assert run("mkfs", vol, "--members", "3", "--size", "64M").returncode == 0
    before = (vol / "fusenas.toml").read_bytes()
    refused(run("mkfs", vol, "--members", "3", "--size", "64M"), "already holds")
    assert (vol / "fusenas.toml").read_bytes() == before


def test_status_of_non_volume(tmp_path: Path) -> None:
    refused(run("status", tmp_path), "neither")
