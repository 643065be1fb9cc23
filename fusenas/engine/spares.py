"""Hot spares: the list of spare paths, ``add_spare``, and the manager that lets a spare take
over a failed member of a running volume.

``VOLUME-DIR/spares`` lists spare paths, one a line (``add_spare`` writes it). A spare holds a
superblock of this array with ``member_index = SPARE_INDEX``. When a member fails in a
read-write open volume, ``SpareManager`` attaches the first spare in its slot, records the
change (superblocks: ``REBUILDING``, recovery offset 0; ``fusenas.toml``: the new member path;
``spares``: one fewer) and rebuilds online (``fusenas.engine.rebuild``). ``add_spare`` serves
both the offline ``fusenas add-spare`` and the daemon's ``add-spare`` control command; online
it wakes the spare manager, which re-reads the list at every look.

Cancellation: the manager stops between steps; a rebuild it was running stays ``REBUILDING``
with its last recorded prefix and resumes at the next open.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import trio

from fusenas.engine.core import Engine
from fusenas.engine.rebuild import (
    attach_replacement,
    member_size,
    open_new_device,
    readd_member,
    rebuild_member,
    relative_to,
)
from fusenas.errors import VolumeError
from fusenas.volume.device import DeviceProvider
from fusenas.volume.member import FILES
from fusenas.volume.superblock import SPARE_INDEX, MemberState, read_superblock, write_superblock

log = logging.getLogger(__name__)

SPARES_NAME = "spares"


def spares_path(voldir: Path) -> Path:
    return voldir / SPARES_NAME


def load_spares(voldir: Path) -> list[Path]:
    try:
        text = spares_path(voldir).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [voldir / line.strip() for line in text.splitlines() if line.strip()]


def save_spares(voldir: Path, spares: list[Path]) -> None:
    tmp = spares_path(voldir).with_suffix(".tmp")
    tmp.write_text("".join(relative_to(p, voldir) + "\n" for p in spares), encoding="utf-8")
    tmp.replace(spares_path(voldir))


def check_spare(vol: Engine, path: Path) -> Path:
    """``path`` made absolute; ``VolumeError`` if it is already a member or a spare."""
    path = path.absolute()
    if path in load_spares(vol.voldir) or path in [
        p.absolute() for p in vol.config.member_paths(vol.voldir)
    ]:
        raise VolumeError(f"{path} is already part of {vol.voldir}")
    return path


async def add_spare(vol: Engine, path: Path, *, provider: DeviceProvider | None = None) -> Path:
    """``fusenas add-spare``, offline and online (the daemon's ``add-spare`` command): write
    a spare superblock on ``path`` (created sparse if absent), list it in
    ``VOLUME-DIR/spares`` and wake the running spare manager, if any, so a member that is
    already down is replaced at once. ``provider``: default the spare manager's (online),
    else plain files. Returns the absolute path."""
    path = check_spare(vol, path)
    mgr = vol.spare_manager
    if provider is None:
        provider = mgr.provider if mgr is not None else FILES
    dev = await open_new_device(provider, path, member_size(vol))
    try:
        sb = vol.members.template.with_(member_index=SPARE_INDEX, member_uuid=uuid.uuid4())
        await write_superblock(dev, sb)
    finally:
        await dev.aclose()
    check_spare(vol, path)  # again: no await from here on, so no one adds it meanwhile
    save_spares(vol.voldir, [*load_spares(vol.voldir), path])
    log.info("%s is a spare of %s", path, vol.voldir)
    if mgr is not None:
        mgr.wake()
    return path


def _drop_spare(voldir: Path, spare: Path) -> None:
    """Take ``spare`` off the list, re-read now: a spare added meanwhile (online
    ``add-spare``, during an await above) is kept."""
    save_spares(voldir, [p for p in load_spares(voldir) if p != spare])


class SpareManager:
    """Online takeover: on a member failure, attach a spare and rebuild it (see module doc).

    ``start(nursery)`` must be called once the volume runs; failures before that are picked
    up at start. One rebuild at a time; further failures wait for it.
    """

    def __init__(self, vol: Engine, provider: DeviceProvider = FILES) -> None:
        self.vol = vol
        self.provider = provider
        self.rebuilding: int | None = None
        #: Members an online ``replace`` is working on: left alone here.
        self.busy: set[int] = set()
        self.progress: tuple[int, int] = (0, 0)
        self._wake = trio.Event()
        vol.failure_listeners.append(lambda member, reason: self._wake.set())

    def wake(self) -> None:
        """Look again now (a member failed, a spare was added)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._step()
            await self._wake.wait()
            self._wake = trio.Event()

    async def _step(self) -> None:
        vol = self.vol
        array = vol.members.array
        for i, state in enumerate(array.states):
            if state == MemberState.REBUILDING and i not in self.busy:
                await self._rebuild(i)
        for i, quick in list(vol.returning.items()):
            del vol.returning[i]
            if not vol.readonly and array.states[i] == MemberState.FAULTY and i not in self.busy:
                await self._rebuild(i, readd=quick)
        while not vol.readonly:
            failed = [i for i, s in enumerate(array.states) if s == MemberState.FAULTY]
            failed += [i for i, s in enumerate(array.states) if s == MemberState.MISSING]
            failed = [i for i in failed if i not in self.busy]
            spares = load_spares(vol.voldir)
            if not failed or not spares:
                return
            member, spare = failed[0], spares[0]
            try:
                dev = await self.provider.open(spare)
                sb, _ = await read_superblock(dev)
                if sb.array_uuid != vol.members.array_uuid or not sb.is_spare:
                    await dev.aclose()
                    raise VolumeError(f"{spare} is not a spare of this array")
            except VolumeError as exc:
                log.error("spare %s unusable: %s", spare, exc)
                _drop_spare(vol.voldir, spare)
                continue
            _drop_spare(vol.voldir, spare)
            log.warning("member %d failed: spare %s takes over", member, spare)
            await attach_replacement(vol, member, dev, spare)
            await self._rebuild(member)

    async def _rebuild(self, member: int, *, readd: bool | None = None) -> None:
        """Resume the rebuild of ``member``, or re-add it (``readd``: quick or full)."""
        self.rebuilding = member

        def progress(done: int, total: int) -> None:
            self.progress = (done, total)

        try:
            if readd is None:
                await rebuild_member(self.vol, member, progress=progress)
            else:
                await readd_member(self.vol, member, readd, progress=progress)
        except VolumeError as exc:
            log.error("rebuild of member %d stopped: %s", member, exc)
        finally:
            self.rebuilding = None
