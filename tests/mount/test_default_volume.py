"""``fusenas MOUNTPOINT``: the default volume, created on first use (one line), then reused.

The tests never touch /var/lib/fusenas: ``FUSENAS_DEFAULT_VOLUME`` points the default volume
elsewhere (or, for a non-root user, HOME does).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mount.conftest import FUSENAS, requires_root, wait_released

pytestmark = [pytest.mark.mount, requires_root]

ENV = "FUSENAS_DEFAULT_VOLUME"
ROOT_DEFAULT = Path("/var/lib/fusenas/default")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def fusenas(
    *args: str, env: dict[str, str], user: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    # setpriv execs fusenas itself (no shell or env(1) in between).
    return subprocess.run(
        [*(user or []), FUSENAS, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=120,
        check=False,
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "XDG_DATA_HOME")}
    env.update(extra)
    return env


def ismount(p: Path) -> bool:
    return any(line.split()[1] == str(p) for line in Path("/proc/mounts").read_text().splitlines())


def unmount(mnt: Path, user: list[str] | None = None) -> None:
    r = subprocess.run(
        [*(user or []), "fusermount3", "-u", str(mnt)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert not ismount(mnt)


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="fusenas-default-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        for mnt in d.glob("mnt*"):
            if ismount(mnt):
                subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
                time.sleep(0.3)
                if ismount(mnt):
                    subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def snapshot_root_default() -> object:
    if not ROOT_DEFAULT.exists():
        return None
    return sorted((p.name, p.stat().st_mtime_ns) for p in ROOT_DEFAULT.iterdir())


def test_help_names_the_default_and_its_override(base: Path) -> None:
    r = fusenas("/x", "--help", env=clean_env())
    assert r.returncode == 0 and str(ROOT_DEFAULT) in r.stdout and ENV in r.stdout
    r = fusenas("/x", "--help", env=clean_env(**{ENV: str(base / "elsewhere")}))
    assert r.returncode == 0 and str(base / "elsewhere") in r.stdout
    # A non-root user's default lives under ~/.local/share (or $XDG_DATA_HOME).
    home = base / "home"
    home.mkdir()
    r = fusenas("/x", "--help", env=clean_env(HOME=str(home)), user=NOBODY)
    assert r.returncode == 0, r.stderr
    assert str(home / ".local/share/fusenas/default") in r.stdout
    r = fusenas("/x", "--help", env=clean_env(HOME=str(home), XDG_DATA_HOME="/xdg"), user=NOBODY)
    assert "/xdg/fusenas/default" in r.stdout


def test_default_volume_is_created_once_then_reused(base: Path) -> None:
    before = snapshot_root_default()
    voldir = base / "state" / "fusenas" / "default"  # parents are made too
    env = clean_env(**{ENV: str(voldir)})
    mnt = base / "mnt1"
    mnt.mkdir()

    # Read-only has nothing to mount yet, and creates nothing.
    r = fusenas(str(mnt), "-o", "ro", env=env)
    assert r.returncode == 1 and "read-only" in r.stderr, r.stderr
    assert not voldir.exists()

    r = fusenas(str(mnt), env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"fusenas: created the default volume in {voldir} (RAID5, 4 ")
    assert ismount(mnt)  # the command returned once the mount answers
    (mnt / "kept").write_bytes(b"first mount")
    os.mkdir(mnt / "d")
    status = subprocess.run(
        [FUSENAS, "status", str(mnt), "--json"], capture_output=True, text=True, check=False
    )
    unmount(mnt)
    wait_released(voldir)
    assert (voldir / "fusenas.toml").is_file()
    members = sorted(voldir.glob("member-*"))
    assert len(members) == 4
    for member in members:  # sparse: far less on disk than their size
        st = member.stat()
        assert st.st_blocks * 512 < st.st_size // 4
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert str(info["level"]).lower() in ("5", "raid5") and info["active_members"] == 4, info

    # The second time: no creation, no message, the same volume.
    toml = (voldir / "fusenas.toml").read_bytes()
    r = fusenas(str(mnt), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ""
    assert (mnt / "kept").read_bytes() == b"first mount"
    assert stat.S_ISDIR(os.stat(mnt / "d").st_mode)
    unmount(mnt)
    wait_released(voldir)
    assert (voldir / "fusenas.toml").read_bytes() == toml
    assert snapshot_root_default() == before  # /var/lib/fusenas untouched


def test_default_volume_as_a_non_root_user(base: Path) -> None:
    """Without the override, nobody's default volume goes to ~/.local/share/fusenas/default.
    Where /dev/fuse is closed to other users (as in some containers) the mount must fail
    with one clear line after the creation line; where it is open, it must mount."""
    home = base / "home"
    home.mkdir()
    mnt = base / "mnt1"
    mnt.mkdir()
    os.chown(home, 65534, 65534)
    os.chown(mnt, 65534, 65534)
    env = clean_env(HOME=str(home))
    voldir = home / ".local/share/fusenas/default"
    r = fusenas(str(mnt), env=env, user=NOBODY)
    lines = r.stderr.strip().splitlines()
    assert lines and lines[0].startswith(f"fusenas: created the default volume in {voldir} ")
    assert (voldir / "fusenas.toml").is_file()
    assert os.stat(voldir / "fusenas.toml").st_uid == 65534
    fuse_open = os.stat("/dev/fuse").st_mode & 0o006 == 0o006
    if not fuse_open:
        assert r.returncode == 1
        assert len(lines) == 2, r.stderr
        assert lines[1].startswith(f"fusenas: cannot mount on {mnt}"), r.stderr
        assert not ismount(mnt)
        return
    assert r.returncode == 0, r.stderr
    assert len(lines) == 1
    assert ismount(mnt)
    r2 = subprocess.run(
        [*NOBODY, "sh", "-c", f"echo hi > {mnt}/f && cat {mnt}/f"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r2.stdout == "hi\n", r2.stderr
    unmount(mnt, NOBODY)
    wait_released(voldir)
    r = fusenas(str(mnt), env=env, user=NOBODY)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    assert (mnt / "f").read_bytes() == b"hi\n"
    unmount(mnt, NOBODY)
    wait_released(voldir)
