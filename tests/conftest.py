"""Shared fixtures. Real-mount fixtures live in tests/mount/conftest.py."""
