"""The volume directory: the small config file that names a volume's parts, and its files.

A volume directory holds ``fusenas.toml`` and, by default, everything else of the volume::

    VOLUME-DIR/
      fusenas.toml       level, chunk, member paths, journal path and size (this module)
      member-N.img       sparse member files (unless --member paths were given)
      journal            the write-ahead log (its path is configurable: a faster device)
      fusenas.log        the daemon's log when it runs in the background
      fusenas.lock       held (flock) while the volume is mounted: a second mount is refused
      control.sock       the running daemon's status socket (root only)

Relative paths in the config are relative to the volume directory, so the directory can be
moved as a whole. The superblocks, not this file, are the authority on array membership; the
config only says where to look.
"""

from __future__ import annotations

import fcntl
import os
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

from fusenas.errors import VolumeError
from fusenas.volume.layout import Level

CONFIG_NAME = "fusenas.toml"
LOCK_NAME = "fusenas.lock"
LOG_NAME = "fusenas.log"
SOCKET_NAME = "control.sock"


@dataclass(frozen=True)
class VolumeConfig:
    """What ``fusenas.toml`` says. Sizes in bytes."""

    array_uuid: uuid.UUID
    level: Level
    chunk: int
    members: tuple[str, ...]
    journal: str
    journal_size: int
    checkpoint_region: int

    def member_paths(self, voldir: Path) -> list[Path]:
        return [voldir / m for m in self.members]

    def journal_path(self, voldir: Path) -> Path:
        return voldir / self.journal


def config_path(voldir: Path) -> Path:
    return voldir / CONFIG_NAME


def is_volume_dir(voldir: Path) -> bool:
    return config_path(voldir).is_file()


def save_config(voldir: Path, cfg: VolumeConfig) -> None:
    """Write the config atomically (temporary file, fsync, rename, fsync the directory)."""
    members = ", ".join(_quote(m) for m in cfg.members)
    text = (
        "# fusenas volume configuration; the member superblocks are the authority.\n"
        f'array_uuid = "{cfg.array_uuid}"\n'
        f"level = {int(cfg.level)}\n"
        f"chunk = {cfg.chunk}\n"
        f"members = [{members}]\n"
        f"journal = {_quote(cfg.journal)}\n"
        f"journal_size = {cfg.journal_size}\n"
        f"checkpoint_region = {cfg.checkpoint_region}\n"
    )
    path = config_path(voldir)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(voldir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_config(voldir: Path) -> VolumeConfig:
    """Read ``fusenas.toml``; ``VolumeError`` with one line if it is missing or malformed."""
    path = config_path(voldir)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise VolumeError(
            f"{voldir} is not a fusenas volume directory (no {CONFIG_NAME})"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise VolumeError(f"cannot read {path}: {exc}") from None
    try:
        return VolumeConfig(
            array_uuid=uuid.UUID(raw["array_uuid"]),
            level=Level(int(raw["level"])),
            chunk=int(raw["chunk"]),
            members=tuple(str(m) for m in raw["members"]),
            journal=str(raw["journal"]),
            journal_size=int(raw["journal_size"]),
            checkpoint_region=int(raw["checkpoint_region"]),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise VolumeError(f"{path} is malformed: {exc!r}") from None


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lock_volume(voldir: Path) -> int:
    """Take the volume's exclusive lock (non-blocking) and return its fd; closing it unlocks.

    Held for the life of a mount, and by offline tools (fsck, scrub, replace), so that two of
    them never open the same volume. ``VolumeError`` if it is taken.
    """
    fd = os.open(voldir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise VolumeError(
            f"volume {voldir} is already mounted (or in use by fsck, scrub or replace)"
        ) from None
    return fd
