"""Observability tests reuse the real-mount fixtures of tests/mount."""

from tests.mount.conftest import metadata, mnt, mounted, mounter, volume

__all__ = ["metadata", "mnt", "mounted", "mounter", "volume"]
