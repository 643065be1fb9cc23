"""`-o ro`: the volume mounts read-only, serves what it holds, refuses every change with EROFS,
and writes nothing to the members or the journal."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest

from tests.mount.conftest import Mounter, run_fusenas

pytestmark = pytest.mark.mount


def digest(voldir: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(voldir.iterdir())
        if p.name.startswith("member-") or p.name == "journal"
    }


def test_read_only_mount(volume: Path, mounter: Mounter) -> None:
    m = mounter.mount(volume)
    (m.mnt / "kept").write_bytes(b"hello" * 1000)
    assert mounter.unmount(m) == 0
    before = digest(volume)
    ro = mounter.mount(volume, None, "-o", "ro")
    assert (ro.mnt / "kept").read_bytes() == b"hello" * 1000
    for attempt in (
        lambda: (ro.mnt / "new").write_bytes(b"x"),
        lambda: (ro.mnt / "kept").unlink(),
        lambda: (ro.mnt / "d").mkdir(),
    ):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS
    assert mounter.unmount(ro) == 0
    assert digest(volume) == before
    assert run_fusenas("fsck", str(volume)).returncode == 0
