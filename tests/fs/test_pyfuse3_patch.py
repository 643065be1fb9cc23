"""The mount refuses a pyfuse3 that is not the patched build, in one line naming the fix."""

from __future__ import annotations

import types

import pyfuse3
import pytest

from fusenas.errors import FusenasError
from fusenas.fs.pyfuse3_patch import PYFUSE3_PATCH_REVISION, check_pyfuse3


def test_the_installed_pyfuse3_is_the_patched_build() -> None:
    check_pyfuse3(pyfuse3)


@pytest.mark.parametrize("revision", [None, 0, PYFUSE3_PATCH_REVISION - 1])
def test_an_unpatched_or_older_build_is_refused(revision: int | None) -> None:
    fake = types.ModuleType("pyfuse3")
    if revision is not None:
        fake.fusenas_patch = revision  # type: ignore[attr-defined]
    with pytest.raises(FusenasError) as info:
        check_pyfuse3(fake)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"patch revision {PYFUSE3_PATCH_REVISION}" in msg
    assert "scripts/setup.sh" in msg


def test_a_newer_revision_is_accepted() -> None:
    fake = types.ModuleType("pyfuse3")
    fake.fusenas_patch = PYFUSE3_PATCH_REVISION + 1  # type: ignore[attr-defined]
    check_pyfuse3(fake)
