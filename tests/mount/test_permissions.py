"""Permission checks hold for every uid (default_permissions): two non-root users and a group.

Users (none needs to exist in /etc/passwd): A = 10001 and B = 10002, each with its own
primary group; G = 20000 is a group that A and B are members of or not, per call. Each
check runs in a child process that drops privileges with setpriv and does the ``os.*`` call,
reporting ``ok`` or the errno's name, so the test compares errnos, as ext4 gives them. The
child's umask is 0: files get exactly the mode asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.mount.conftest import requires_root

pytestmark = [pytest.mark.mount, requires_root]

A, B, G = 10001, 10002, 20000
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

CHILD = r"""
import errno, json, os, sys
os.umask(0)
out = []
for op, path, *args in json.loads(sys.argv[1]):
    try:
        if op == "read":
            with open(path, "rb") as f:
                f.read()
        elif op == "write":
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"w")
            finally:
                os.close(fd)
        elif op == "append":
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.close(fd)
        elif op == "create":
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, args[0]))
        elif op == "truncate":
            os.truncate(path, args[0])
        elif op == "listdir":
            os.listdir(path)
        elif op == "stat":
            os.stat(path)
        elif op == "mkdir":
            os.mkdir(path, args[0])
        elif op == "unlink":
            os.unlink(path)
        elif op == "rename":
            os.rename(path, args[0])
        elif op == "chmod":
            os.chmod(path, args[0])
        elif op == "chown":
            os.chown(path, args[0], args[1])
        elif op == "utime_now":
            os.utime(path, None)
        elif op == "utime":
            os.utime(path, ns=(args[0], args[1]))
        elif op == "setxattr":
            os.setxattr(path, "user.k", b"v")
        elif op == "access":
            if not os.access(path, args[0]):
                raise PermissionError(errno.EACCES, "access")
        else:
            raise ValueError(op)
        out.append("ok")
    except OSError as e:
        out.append(errno.errorcode[e.errno])
print(json.dumps(out))
"""


def as_user(uid: int, ops: list[list[object]], groups: tuple[int, ...] = ()) -> list[str]:
    """Run ``ops`` as ``uid`` (primary group = uid, supplementary ``groups``)."""
    grp = ["--groups=" + ",".join(map(str, groups))] if groups else ["--clear-groups"]
    r = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", *grp, PYTHON, "-c", CHILD, json.dumps(ops)],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    result: list[str] = json.loads(r.stdout)
    return result


def one(uid: int, op: str, path: Path, *args: object, groups: tuple[int, ...] = ()) -> str:
    return as_user(uid, [[op, str(path), *args]], groups)[0]


@pytest.fixture
def home(mnt: Path) -> Path:
    """A directory A owns, where A makes its files."""
    d = mnt / "home-a"
    d.mkdir(mode=0o755)
    os.chown(d, A, A)
    return d


def test_group_read_only_for_members(home: Path) -> None:
    f = home / "report"
    assert one(A, "create", f, 0o640) == "ok"
    st = os.stat(f)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (A, A, 0o640)
    assert one(A, "chown", f, -1, G, groups=(G,)) == "ok"  # the owner, a member of G
    assert os.stat(f).st_gid == G
    assert as_user(A, [["write", str(f)], ["read", str(f)]]) == ["ok", "ok"]
    # B in G: read, not write. B not in G: neither.
    member = as_user(B, [["read", str(f)], ["write", str(f)], ["access", str(f), os.R_OK]], (G,))
    assert member == ["ok", "EACCES", "ok"]
    other = as_user(B, [["read", str(f)], ["write", str(f)], ["access", str(f), os.R_OK]])
    assert other == ["EACCES", "EACCES", "EACCES"]
    # Group permission applies even when "others" would allow more (no fall-through).
    os.chmod(f, 0o604)
    assert one(B, "read", f, groups=(G,)) == "EACCES"
    assert one(B, "read", f) == "ok"


def test_private_directory_not_traversable(home: Path) -> None:
    priv = home / "private"
    assert one(A, "mkdir", priv, 0o700) == "ok"
    inner = priv / "inner"
    assert one(A, "create", inner, 0o644) == "ok"
    owner = as_user(A, [["listdir", str(priv)], ["stat", str(inner)], ["read", str(inner)]])
    assert owner == ["ok", "ok", "ok"]
    for groups in ((), (G, A)):  # even in A's own group
        got = as_user(
            B,
            [
                ["listdir", str(priv)],
                ["stat", str(inner)],
                ["read", str(inner)],
                ["create", str(priv / "b"), 0o644],
            ],
            groups,
        )
        assert got == ["EACCES"] * 4, (groups, got)
    # 0710 with group G: members may traverse (and reach inner) but not list.
    assert one(A, "chown", priv, -1, G, groups=(G,)) == "ok"
    assert one(A, "chmod", priv, 0o710) == "ok"
    got = as_user(B, [["listdir", str(priv)], ["stat", str(inner)], ["read", str(inner)]], (G,))
    assert got == ["EACCES", "ok", "ok"]
    got = as_user(B, [["listdir", str(priv)], ["stat", str(inner)]])
    assert got == ["EACCES", "EACCES"]
    assert not (priv / "b").exists()


def test_chmod_chown_of_another_users_file(home: Path) -> None:
    f = home / "mine"
    assert one(A, "create", f, 0o666) == "ok"
    got = as_user(
        B,
        [
            ["chmod", str(f), 0o777],
            ["chown", str(f), B, -1],
            ["chown", str(f), -1, B],
            ["chown", str(f), A, A],  # even to what it already is: not the owner
        ],
    )
    assert got == ["EPERM", "EPERM", "EPERM", "EPERM"]
    # The owner may chmod, but not give the file away, nor pick a group it is not in.
    got = as_user(
        A,
        [
            ["chmod", str(f), 0o600],
            ["chown", str(f), B, -1],
            ["chown", str(f), -1, G],
            ["chown", str(f), -1, A],
        ],
    )
    assert got == ["ok", "EPERM", "EPERM", "ok"]
    st = os.stat(f)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (A, A, 0o600)
    # B may not remove or rename it out of A's directory, nor create there.
    got = as_user(
        B,
        [
            ["unlink", str(f)],
            ["rename", str(f), str(home / "moved")],
            ["create", str(home / "b"), 0o644],
            ["setxattr", str(f)],
        ],
    )
    assert got == ["EACCES", "EACCES", "EACCES", "EACCES"]
    assert f.exists() and not (home / "moved").exists()


def test_utime_of_another_users_file(home: Path) -> None:
    f = home / "times"
    assert one(A, "create", f, 0o666) == "ok"
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    # Write permission allows "now" (UTIME_NOW) but explicit times need ownership.
    assert one(B, "utime", f, 5_000_000_000, 6_000_000_000) == "EPERM"
    assert os.stat(f).st_mtime_ns == 2_000_000_000
    assert one(B, "utime_now", f) == "ok"
    assert os.stat(f).st_mtime_ns > 2_000_000_000
    os.chmod(f, 0o644)
    assert one(B, "utime_now", f) == "EACCES"
    assert one(B, "utime", f, 5_000_000_000, 6_000_000_000) == "EPERM"
    assert one(A, "utime", f, 5_000_000_123, 6_000_000_456) == "ok"
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_123, 6_000_000_456)


def test_read_only_file_not_writable_even_by_its_owner(home: Path) -> None:
    f = home / "ro"
    assert one(A, "create", f, 0o644) == "ok"
    f.write_bytes(b"original")
    assert one(A, "chmod", f, 0o444) == "ok"
    got = as_user(
        A,
        [
            ["write", str(f)],
            ["append", str(f)],
            ["truncate", str(f), 0],
            ["access", str(f), os.W_OK],
            ["read", str(f)],
        ],
    )
    assert got == ["EACCES", "EACCES", "EACCES", "EACCES", "ok"]
    assert f.read_bytes() == b"original"
    # Root is not bound by the mode; the owner can chmod it back and then write.
    with open(f, "r+b") as fh:
        fh.write(b"O")
    assert as_user(A, [["chmod", str(f), 0o644], ["write", str(f)]]) == ["ok", "ok"]
    assert f.read_bytes() == b"wriginal"


def test_runner_sees_the_real_errno() -> None:
    """The child reports errnos faithfully (outside the mount: a check of the harness)."""
    base = Path(tempfile.mkdtemp(prefix="fusenas-perm-"))
    try:
        os.chmod(base, 0o755)
        d = base / "d"
        d.mkdir(mode=0o700)
        assert one(A, "listdir", base) == "ok"
        assert one(A, "listdir", d) == "EACCES"
        assert one(A, "stat", base / "missing") == "ENOENT"
        assert as_user(A, [["stat", str(base)], ["chmod", str(base), 0o777]]) == ["ok", "EPERM"]
    finally:
        shutil.rmtree(base)
