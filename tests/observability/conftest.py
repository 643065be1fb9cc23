"""Observability tests reuse the real-mount fixtures of tests/mount."""

from tests.mount.conftest import mnt, mounted, mounter, volume

__all__ = ["mnt", "mounted", "mounter", "volume"]
