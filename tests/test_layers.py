"""The floors of docs/architecture.md, checked on the code itself.

``make lint`` runs import-linter's contracts (pyproject.toml: every floor imports only the
floors below it, no cycle between the modules of any package). This test checks what a plain
``import`` of each lower-floor module actually loads at run time, in a fresh interpreter:
nothing of a higher floor (function-level imports that run at import time included).
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import fusenas

#: Lowest first; a module of floor i may load floors 0..i only.
FLOORS: list[tuple[str, ...]] = [
    ("fusenas.units", "fusenas.errors", "fusenas.logs"),
    ("fusenas.volume",),
    ("fusenas.wal",),
    ("fusenas.meta", "fusenas.stripe"),
    ("fusenas.engine",),
    ("fusenas.fs",),
    ("fusenas.observability",),
    ("fusenas.cli",),
]


def _floor(module: str) -> int:
    for i, names in enumerate(FLOORS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module} belongs to no floor")


def _modules() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.walk_packages(fusenas.__path__, "fusenas.")
        if _floor(m.name) <= _floor("fusenas.engine") and not m.name.endswith("__main__")
    )


def test_every_module_has_a_floor() -> None:
    for m in pkgutil.walk_packages(fusenas.__path__, "fusenas."):
        _floor(m.name)


@pytest.mark.parametrize("module", _modules())
def test_a_module_loads_no_higher_floor(module: str) -> None:
    code = f"import sys, {module}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    mine = _floor(module)
    higher = [m for m in out if m.startswith("fusenas.") and _floor(m) > mine]
    assert higher == [], f"import {module} loaded {higher}"


def test_the_volume_floor_loads_only_itself_and_the_base() -> None:
    """The issue's own check: ``import fusenas.volume.array`` loads no module of a higher
    floor (and no rich, prometheus or pyfuse3)."""
    code = "import sys, fusenas.volume.array\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    ours = {m for m in out if m.startswith("fusenas.")}
    assert all(_floor(m) <= _floor("fusenas.volume") for m in ours), ours
    assert not {"rich", "prometheus_client", "pyfuse3"} & set(out)
