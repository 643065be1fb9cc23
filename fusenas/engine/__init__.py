"""The engine floor: one open volume, wired, and the policy that spans the floors below.

It owns the start-up and shut-down order (``open``), recovery, the checkpointer, the
ordered-write rules (``blocks``), read-only switching, mkfs, and the jobs that run on an open
volume: rebuild, spares, scrub, checksum verification. It imports the floors below it (volume,
WAL, stripe cache, metadata) and none above it (fs, observability, cli).
"""

from fusenas.engine.core import Engine
from fusenas.engine.mkfs import create_volume
from fusenas.engine.open import open_volume

__all__ = ["Engine", "create_volume", "open_volume"]
