"""fstab: ``mount -t fuse.fusenas`` through mount.fuse3, and a real fstab line.

mount(8) runs ``mount.fuse3 VOLDIR MNT -o OPTS -t fuse.fusenas``, which runs
``fusenas VOLDIR MNT -o OPTS`` through /bin/sh: ``fusenas`` must be on the PATH (scripts/setup.sh
links /usr/local/bin/fusenas; the tests also put the virtualenv's bin directory first). The
command daemonizes and exits 0 only once the mount answers, so mount(8) returns with the
filesystem usable. The fstab line is the README's, written into a copy of /etc/fstab used
with ``mount --fstab FILE MNT``: the real /etc/fstab is never touched.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mount.conftest import mkfs, requires_root, wait_released

pytestmark = [pytest.mark.mount, requires_root]

README = Path(__file__).resolve().parents[2] / "README.md"
VENV_BIN = str(Path(sys.executable).parent)


def mount_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(
        [VENV_BIN, env.get("PATH", ""), "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    )
    return env


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), capture_output=True, text=True, env=mount_env(), timeout=60, check=False
    )


def mounts_line(mnt: Path) -> str | None:
    for line in Path("/proc/mounts").read_text().splitlines():
        if line.split()[1] == str(mnt):
            return line
    return None


def readme_fstab_line() -> str:
    """The one fstab line the README shows (in the code block under '### fstab')."""
    text = README.read_text()
    section = text.split("### fstab", 1)[1]
    block = section.split("```", 2)[1]
    lines = [x for x in block.splitlines() if x.strip() and not x.startswith("#")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def base() -> Iterator[Path]:
    """A world-traversable directory for mount points; anything left mounted is detached."""
    d = Path(tempfile.mkdtemp(prefix="fusenas-fstab-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        for mnt in sorted(d.glob("mnt*")):
            if mounts_line(mnt) is not None:
                subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
                time.sleep(0.2)
                if mounts_line(mnt) is not None:
                    subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def test_readme_fstab_line_is_well_formed() -> None:
    fields = readme_fstab_line().split()
    assert len(fields) == 6, fields
    source, target, fstype, options, freq, passno = fields
    assert fstype == "fuse.fusenas"
    assert (freq, passno) == ("0", "0")  # no dump, no fsck pass (fusenas fsck is separate)
    opts = options.split(",")
    assert "allow_other" in opts and "default_permissions" in opts
    assert source.startswith("/") and target.startswith("/")


def test_mount_t_fuse_fusenas_then_fstab_line(tmp_path: Path, base: Path) -> None:
    vol = mkfs(tmp_path / "vol")
    mnt = base / "mnt1"
    mnt.mkdir()

    # 1. mount -t fuse.fusenas VOLDIR MNT -o allow_other,default_permissions
    r = run(
        "mount", "-t", "fuse.fusenas", str(vol), str(mnt), "-o", "allow_other,default_permissions"
    )
    assert r.returncode == 0, r.stderr + (vol / "fusenas.log").read_text(errors="replace")
    line = mounts_line(mnt)  # mounted and answering as soon as mount(8) returns
    assert line is not None
    source, _, fstype, options = line.split()[:4]
    assert source == f"fusenas:{vol}" and fstype == "fuse.fusenas"
    assert "allow_other" in options.split(",") and "default_permissions" in options.split(",")
    os.mkdir(mnt / "d")
    first = hashlib.sha256(b"first").digest() * 5000
    (mnt / "d" / "first").write_bytes(first)
    os.setxattr(mnt / "d" / "first", "user.k", b"v")
    r = run("umount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert mounts_line(mnt) is None
    wait_released(vol)
    assert "closed cleanly" in (vol / "fusenas.log").read_text()

    # 2. The README's fstab line, in a copy of /etc/fstab.
    real = Path("/etc/fstab")
    real_before = real.read_bytes() if real.exists() else b""
    fstab = tmp_path / "fstab"
    fstab.write_bytes(real_before)
    readme = readme_fstab_line().split()
    line_fields = [str(vol), str(mnt), *readme[2:]]
    with open(fstab, "a") as f:
        f.write("\n# fusenas test\n" + "  ".join(line_fields) + "\n")
    r = run("mount", "--fstab", str(fstab), str(mnt))
    assert r.returncode == 0, r.stderr + (vol / "fusenas.log").read_text(errors="replace")
    line = mounts_line(mnt)
    assert line is not None and line.split()[2] == "fuse.fusenas"
    assert "allow_other" in line.split()[3].split(",")
    assert (mnt / "d" / "first").read_bytes() == first
    assert os.getxattr(mnt / "d" / "first", "user.k") == b"v"
    (mnt / "d" / "second").write_bytes(b"second")
    # Other users may use it (allow_other).
    r = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "cat",
            str(mnt / "d" / "second"),
        ],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert r.returncode == 0 and r.stdout == b"second", r.stderr
    r = run("umount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert mounts_line(mnt) is None
    wait_released(vol)

    # 3. Once more through fstab: both files are there.
    r = run("mount", "--fstab", str(fstab), str(mnt))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(mnt / "d")) == ["first", "second"]
    assert (mnt / "d" / "first").read_bytes() == first
    assert (mnt / "d" / "second").read_bytes() == b"second"
    r = run("umount", str(mnt))
    assert r.returncode == 0, r.stderr
    wait_released(vol)
    assert (real.read_bytes() if real.exists() else b"") == real_before
    assert re.search(rf"\s{re.escape(str(mnt))}\s", real_before.decode(errors="replace")) is None


def test_mount_t_fuse_fusenas_reports_failures(tmp_path: Path, base: Path) -> None:
    vol = mkfs(tmp_path / "vol")
    mnt = base / "mnt1"
    mnt.mkdir()
    r = run("mount", "-t", "fuse.fusenas", str(vol), str(mnt), "-o", "bogus_option")
    assert r.returncode != 0
    assert "unknown mount option 'bogus_option'" in r.stderr
    assert mounts_line(mnt) is None
    r = run("mount", "-t", "fuse.fusenas", str(tmp_path), str(mnt))
    assert r.returncode != 0 and "not a fusenas volume" in r.stderr
    assert mounts_line(mnt) is None
