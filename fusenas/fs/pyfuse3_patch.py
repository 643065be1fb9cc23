"""The pyfuse3 build fusenas needs, and the check that refuses any other.

fusenas runs on pyfuse3 ``PYFUSE3_VERSION`` built with ``patches/pyfuse3-<version>-fusenas.patch``
(``scripts/install-pyfuse3.sh``; docs/dependencies.md): fallocate(2) reaches the adapter,
getxattr is answered synchronously, and the session loop reads a queued request before it
waits for the FUSE fd. A plain pyfuse3 would mount and silently lack fallocate, so the mount
checks the revision the patch sets (``pyfuse3.fusenas_patch``) before anything else.
``scripts/install-pyfuse3.sh`` reads both constants from this file.
"""

from __future__ import annotations

import importlib.metadata
from types import ModuleType

from fusenas.errors import FusenasError

PYFUSE3_VERSION = "3.5.0"
PYFUSE3_PATCH_REVISION = 3

_FIX = "run scripts/setup.sh, which builds it (scripts/install-pyfuse3.sh)"


def check_pyfuse3(module: ModuleType) -> None:
    """``FusenasError`` (one line naming the fix) unless ``module`` is pyfuse3
    ``PYFUSE3_VERSION`` with the fusenas patch at revision ``PYFUSE3_PATCH_REVISION`` or
    later."""
    try:
        version = importlib.metadata.version("pyfuse3")
    except importlib.metadata.PackageNotFoundError:
        version = getattr(module, "__version__", "unknown")
    revision = getattr(module, "fusenas_patch", 0)
    if version != PYFUSE3_VERSION or revision < PYFUSE3_PATCH_REVISION:
        have = f"pyfuse3 {version}" + (f" with fusenas patch {revision}" if revision else "")
        raise FusenasError(
            f"fusenas needs pyfuse3 {PYFUSE3_VERSION} with the fusenas patch revision "
            f"{PYFUSE3_PATCH_REVISION}, found {have}: {_FIX}"
        )
