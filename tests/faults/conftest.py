"""Real-mount fixtures are shared with tests/mount."""

from tests.mount.conftest import mounter  # noqa: F401
