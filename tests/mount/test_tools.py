"""Everyday tools on a real mount: cp, mv, ln, tar, rsync, git, sqlite3 (WAL)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.mount.conftest import Mount, Mounter

pytestmark = pytest.mark.mount


def sh(*cmd: str | Path, cwd: Path | None = None) -> str:
    r = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )
    assert r.returncode == 0, f"{cmd}: {r.stderr}"
    return r.stdout


def make_tree(root: Path) -> None:
    root.mkdir()
    for d in range(5):
        sub = root / f"d{d}" / "deeper"
        sub.mkdir(parents=True)
        for f in range(8):
            (root / f"d{d}" / f"f{f}.bin").write_bytes(os.urandom(1000 * f + d))
        (sub / "note.txt").write_text(f"note {d}\n")
    os.symlink("d0/f1.bin", root / "link")
    os.link(root / "d1" / "f2.bin", root / "hard")
    os.setxattr(root / "d0" / "f3.bin", "user.tag", b"kept")
    os.chmod(root / "d2", 0o711)
    os.utime(root / "d3" / "f4.bin", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))


def test_cp_mv_ln_tar_rsync(mnt: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    sh("cp", "-a", src, mnt / "copy")
    sh("diff", "-r", "--no-dereference", src, mnt / "copy")
    assert os.getxattr(mnt / "copy" / "d0" / "f3.bin", "user.tag") == b"kept"
    assert os.stat(mnt / "copy" / "d3" / "f4.bin").st_mtime_ns == 1_600_000_000_123_456_789
    assert os.stat(mnt / "copy" / "hard").st_nlink == 2  # cp -a keeps hard links
    sh("mv", mnt / "copy" / "d4", mnt / "moved")
    sh("ln", "-s", "moved/f1.bin", mnt / "sym")
    sh("ln", mnt / "moved" / "f2.bin", mnt / "hardlink")
    assert os.stat(mnt / "hardlink").st_nlink == 2
    assert (mnt / "sym").read_bytes() == (src / "d4" / "f1.bin").read_bytes()

    sh("tar", "-C", src, "--xattrs", "-cf", mnt / "t.tar", ".")
    (mnt / "untar").mkdir()
    sh("tar", "-C", mnt / "untar", "--xattrs", "-xf", mnt / "t.tar")
    sh("diff", "-r", "--no-dereference", src, mnt / "untar")
    sh("tar", "-C", mnt / "untar", "-cf", tmp_path / "back.tar", ".")
    (tmp_path / "back").mkdir()
    sh("tar", "-C", tmp_path / "back", "-xf", tmp_path / "back.tar")
    sh("diff", "-r", "--no-dereference", src, tmp_path / "back")

    sh("rsync", "-aHX", f"{src}/", f"{mnt / 'rs'}/")
    sh("diff", "-r", "--no-dereference", src, mnt / "rs")
    out = sh("rsync", "-aHX", "--checksum", "--itemize-changes", f"{src}/", f"{mnt / 'rs'}/")
    assert out.strip() == "", out
    out = sh("rsync", "-a", "--checksum", "--itemize-changes", f"{mnt / 'rs'}/", f"{src}/")
    assert out.strip() == "", out


def git(repo: Path, *args: str) -> str:
    return sh(
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "-c",
        "init.defaultBranch=main",
        "-c",
        "safe.directory=*",
        *args,
        cwd=repo,
    )


def sqlite_fill(db: Path) -> None:
    script = "PRAGMA journal_mode=WAL;\nCREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);\n"
    for batch in range(20):
        script += "BEGIN;\n"
        for i in range(100):
            n = batch * 100 + i
            script += f"INSERT INTO t(v) VALUES ('{'row' * (n % 50)}{n}');\n"
        script += "COMMIT;\n"
    r = subprocess.run(
        ["sqlite3", str(db)], input=script, capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr


def sqlite_check(db: Path) -> None:
    assert sh("sqlite3", db, "PRAGMA integrity_check;").strip() == "ok"
    assert sh("sqlite3", db, "SELECT count(*) FROM t;").strip() == "2000"


def test_git_and_sqlite_survive_a_remount(mounted: Mount, mounter: Mounter, tmp_path: Path) -> None:
    mnt = mounted.mnt
    repo = mnt / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    make_tree(repo / "tree")
    (repo / "README").write_text("fusenas\n" * 100)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    (repo / "README").write_text("changed\n")
    shutil.rmtree(repo / "tree" / "d1")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    git(repo, "gc", "-q")
    git(repo, "fsck", "--full", "--strict")
    head = git(repo, "rev-parse", "HEAD")

    db = mnt / "db.sqlite"
    sqlite_fill(db)
    sqlite_check(db)

    assert mounter.unmount(mounted) == 0, mounted.log()
    again = mounter.mount(mounted.voldir, mnt)
    git(repo, "fsck", "--full", "--strict")
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain").strip() == ""
    sqlite_check(db)
    assert mounter.unmount(again) == 0, again.log()
