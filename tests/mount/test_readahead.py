"""``-o readahead=KB``: the mount's bdi readahead (/sys/class/bdi/MAJOR:MINOR/read_ahead_kb),
set by the daemon once the mount answers; 0 keeps the kernel's default (128 KiB)."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

import pytest

from fusenas.cli.mount import DEFAULT_READAHEAD_KB, set_readahead
from tests.mount.conftest import Mount, Mounter, run_fusenas, wait_released

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

KERNEL_DEFAULT_KB = 128


def bdi_file(mnt: Path) -> Path:
    dev = os.stat(mnt).st_dev
    return Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")


def readahead_after_mount(m: Mount) -> int:
    """The mount's readahead once the daemon is done with it (it logs "mounted on" after)."""
    deadline = time.monotonic() + 10
    while "mounted on" not in m.log():
        assert time.monotonic() < deadline, m.log()
        time.sleep(0.02)
    path = bdi_file(m.mnt)
    if not os.access(path, os.W_OK):
        pytest.skip(f"{path} is not writable here")
    return int(path.read_text())


def test_readahead_option_default_and_zero(volume: Path, mounter: Mounter) -> None:
    for opts, expected in (
        (("-o", "readahead=2048"), 2048),
        ((), DEFAULT_READAHEAD_KB),
        (("-o", "readahead=0"), KERNEL_DEFAULT_KB),
    ):
        m = mounter.mount(volume, None, *opts)
        assert readahead_after_mount(m) == expected, opts
        assert mounter.unmount(m) == 0, m.log()


def test_readahead_is_set_when_background_mount_returns(volume: Path, mounter: Mounter) -> None:
    mnt = mounter.mountpoint()
    r = run_fusenas(str(volume), str(mnt), "-o", "readahead=512")
    try:
        assert r.returncode == 0, r.stderr
        path = bdi_file(mnt)
        if not os.access(path, os.W_OK):
            pytest.skip(f"{path} is not writable here")
        assert int(path.read_text()) == 512
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
        wait_released(volume)


@pytest.mark.parametrize("value", ["abc", "-1", "", "1.5", "+8", " 8", "1_000"])
def test_bad_readahead_is_refused(tmp_path: Path, value: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = run_fusenas(str(tmp_path / "vol"), str(mnt), "-f", "-o", f"readahead={value}")
    assert r.returncode == 2
    assert r.stderr.startswith("fusenas: bad readahead=") and len(r.stderr.splitlines()) == 1
    assert not os.path.ismount(mnt)


def test_readahead_failure_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    # A device number with no bdi: the write fails (ENOENT) like a read-only /sys would.
    with caplog.at_level(logging.INFO, logger="fusenas.cli.mount"):
        assert not set_readahead(os.makedev(4095, 1048575), 1024)
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "readahead stays the kernel's" in caplog.text
