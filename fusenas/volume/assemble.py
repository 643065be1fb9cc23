"""Create an array on member paths, or assemble an existing one from its superblocks.

This is the only module that decides which devices form an array. Everything it refuses, it
refuses before writing a byte, with a one-line ``VolumeError`` naming the offending path.

Assembly rules (md's, simplified):
* every member's superblock must carry the same array UUID (and the one the caller expects);
* each member index may appear once; a path that is absent or unreadable is *missing*;
* event counters: the superblock with the highest counter is the authority. A member it
  records as failed or missing missed writes while it was away, so its contents are stale and
  it is treated as faulty until it is rebuilt. A member with a lower counter that the authority
  still records as active only missed an interrupted superblock update and is used;
* an array with more missing/stale members than its level tolerates is refused.

Superblock updates (``ArrayMembers.commit_superblocks``) bump the event counter and are written
to every active member; a member that fails during the update is failed in the array.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from fusenas.errors import VolumeError
from fusenas.volume.array import Array
from fusenas.volume.bitmap import WriteIntentBitmap
from fusenas.volume.device import BlockDevice, DeviceProvider
from fusenas.volume.layout import Geometry, Level, format_size
from fusenas.volume.member import FILES
from fusenas.volume.superblock import (
    DATA_OFFSET,
    RECOVERY_COMPLETE,
    ArrayState,
    MemberState,
    Superblock,
    SuperblockError,
    looks_used,
    read_superblock,
    write_superblock,
)


@dataclass
class ArrayMembers:
    """An assembled array: the ``Array`` plus what is needed to keep its superblocks."""

    array: Array
    devices: list[BlockDevice | None]
    paths: list[Path]
    template: Superblock  # fields common to all members (member-specific ones are replaced)
    member_uuids: list[uuid.UUID]
    notes: list[str] = field(default_factory=list)
    #: Event counter of each present member's own superblock (None: missing); tells how
    #: long a returning member was away (``fusenas.volume.bitmap``).
    member_events: list[int | None] = field(default_factory=list)
    #: The write-intent bitmap attached to ``array`` (it records the events counter of the
    #: superblocks its bits were last cleared at), or None.
    bitmap: WriteIntentBitmap | None = None

    @property
    def array_uuid(self) -> uuid.UUID:
        return self.template.array_uuid

    @property
    def events(self) -> int:
        return self.template.events

    async def commit_superblocks(
        self, state: ArrayState, *, recorded: Sequence[MemberState] | None = None
    ) -> None:
        """Write ``state`` and the member states (``recorded``, default the array's) to every
        active or rebuilding member, events + 1.

        Crash: members that got the new copy have a higher event counter than those that did
        not; assembly then trusts the higher counter, and the journal covers the data.
        """
        now = time.time_ns()
        sb = self.template.with_(
            events=self.template.events + 1,
            state=state,
            updated_ns=now,
            member_states=tuple(self.array.states if recorded is None else recorded),
        )
        self.template = sb
        if self.bitmap is not None:
            self.bitmap.events = sb.events

        async def one(i: int, dev: BlockDevice) -> None:
            try:
                with trio.fail_after(self.array.io_timeout):
                    await write_superblock(
                        dev, sb.with_(member_index=i, member_uuid=self.member_uuids[i])
                    )
            except (OSError, trio.TooSlowError) as exc:
                why = "I/O deadline exceeded" if isinstance(exc, trio.TooSlowError) else exc
                self.array.fail_member(i, f"superblock update failed: {why}")

        async with trio.open_nursery() as nursery:
            for i, dev in enumerate(self.array.devices):
                if dev is not None and self.array.is_writable(i):
                    nursery.start_soon(one, i, dev)

    async def aclose(self) -> None:
        seen: set[int] = set()
        for dev in [*self.devices, *self.array.devices]:
            if dev is not None and id(dev) not in seen:
                seen.add(id(dev))
                await dev.aclose()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if not _is_blockdev(st.st_mode) else (st.st_rdev, 0)


def _is_blockdev(mode: int) -> bool:
    import stat

    return stat.S_ISBLK(mode)


def check_distinct(paths: Sequence[Path]) -> None:
    """Refuse the same file or device named twice (by any path)."""
    seen: dict[tuple[int, int], Path] = {}
    for p in paths:
        ident = _identity(p)
        if ident is None:
            continue
        if ident in seen:
            raise VolumeError(f"{p} and {seen[ident]} are the same member named twice")
        seen[ident] = p


async def _open_all(paths: Sequence[Path], provider: DeviceProvider) -> list[BlockDevice]:
    devices: list[BlockDevice] = []
    try:
        for p in paths:
            devices.append(await provider.open(p))
    except BaseException:
        for d in devices:
            await d.aclose()
        raise
    return devices


async def create_array(
    paths: Sequence[Path],
    level: Level,
    chunk: int,
    *,
    name: str = "",
    force: bool = False,
    provider: DeviceProvider = FILES,
) -> ArrayMembers:
    """Write fresh superblocks on ``paths`` (existing files or block devices) and return them.

    Refuses, unless ``force``: a member that holds a fusenas superblock or any non-zero byte in
    its first 8 KiB. Members of different sizes: the smallest sets the size (noted). Nothing is
    written if anything is refused.
    """
    check_distinct(paths)
    devices = await _open_all(paths, provider)
    try:
        notes: list[str] = []
        sizes = [d.size for d in devices]
        smallest = min(sizes)
        if len(set(sizes)) > 1:
            notes.append(
                f"members differ in size; using the smallest, {format_size(smallest)}, on each"
            )
        geometry = Geometry.make(level, len(paths), chunk, max(0, smallest - DATA_OFFSET))
        if not force:
            for d in devices:
                head = await d.read(0, min(d.size, 8192))
                if looks_used(head):
                    raise VolumeError(
                        f"{d.name} already holds data or a fusenas superblock "
                        "(use --force to overwrite it)"
                    )
        now = time.time_ns()
        member_uuids = [uuid.uuid4() for _ in devices]
        template = Superblock(
            array_uuid=uuid.uuid4(),
            member_uuid=member_uuids[0],
            name=name,
            level=int(geometry.level),
            chunk=geometry.chunk,
            members=geometry.members,
            member_index=0,
            data_offset=DATA_OFFSET,
            member_data_size=geometry.member_data_size,
            logical_size=geometry.logical_size,
            events=0,
            state=ArrayState.CLEAN,
            created_ns=now,
            updated_ns=now,
            recovery_offset=RECOVERY_COMPLETE,
            member_states=tuple(MemberState.ACTIVE for _ in devices),
        )
        members = ArrayMembers(
            array=Array(geometry, list(devices)),
            devices=list(devices),
            paths=list(paths),
            template=template,
            member_uuids=member_uuids,
            notes=notes,
        )
        await members.commit_superblocks(ArrayState.CLEAN)
        return members
    except BaseException:
        for d in devices:
            await d.aclose()
        raise


async def assemble(
    paths: Sequence[Path],
    *,
    expect_uuid: uuid.UUID | None = None,
    readonly: bool = False,
    io_timeout: float | None = None,
    provider: DeviceProvider = FILES,
) -> ArrayMembers:
    """Open the members named by ``paths`` and assemble the array their superblocks describe.

    A path that cannot be opened or holds no readable superblock is treated as missing (and
    noted); a member of another array, two paths claiming the same index, or more missing or
    stale members than the level tolerates are refused with ``VolumeError``.
    """
    check_distinct(paths)
    notes: list[str] = []
    found: list[tuple[Path, BlockDevice, Superblock]] = []
    try:
        for p in paths:
            try:
                dev = await provider.open(p, readonly=readonly)
            except VolumeError as exc:
                notes.append(f"member {p} is missing: {exc}")
                continue
            try:
                sb, note = await read_superblock(dev)
            except SuperblockError as exc:
                await dev.aclose()
                notes.append(f"member {p} has no usable superblock: {exc}")
                continue
            if note:
                notes.append(note)
            found.append((p, dev, sb))
        if not found:
            raise VolumeError("no member of the array could be opened: " + "; ".join(notes))
        want = expect_uuid or found[0][2].array_uuid
        for p, _dev, sb in found:
            if sb.array_uuid != want:
                raise VolumeError(
                    f"{p} belongs to another array (uuid {sb.array_uuid}, expected {want})"
                )
        newest = max(found, key=lambda f: f[2].events)[2]
        n = newest.members
        devices: list[BlockDevice | None] = [None] * n
        member_paths: list[Path | None] = [None] * n
        member_uuids = [uuid.uuid4() for _ in range(n)]
        member_events: list[int | None] = [None] * n
        states = [MemberState.MISSING] * n
        for p, dev, sb in found:
            i = sb.member_index
            if sb.is_spare or i >= n:
                notes.append(f"{p} is a spare, not an active member; ignored")
                await dev.aclose()
                continue
            if devices[i] is not None:
                raise VolumeError(f"{p} and {member_paths[i]} both claim to be member {i}")
            devices[i] = dev
            member_paths[i] = p
            member_uuids[i] = sb.member_uuid
            member_events[i] = sb.events
            if newest.member_states[i] == MemberState.REBUILDING:
                # A replacement whose rebuild was interrupted: it takes every write, and the
                # rebuild resumes from the recorded recovery offset.
                notes.append(
                    f"member {i} ({p}) is being rebuilt (from member offset "
                    f"{newest.recovery_offset})"
                )
                states[i] = MemberState.REBUILDING
            elif newest.member_states[i] != MemberState.ACTIVE:
                # The newest superblock recorded this member's failure: it missed writes.
                notes.append(
                    f"member {i} ({p}) is stale (events {sb.events}, array at "
                    f"{newest.events}, marked {newest.member_states[i].name.lower()}); "
                    "it needs a rebuild and is not used"
                )
                states[i] = MemberState.FAULTY
            else:
                # A lower event counter on a member the newest superblock still counts as
                # active only means a superblock update was interrupted (md accepts it too):
                # no data write ever skips an active member.
                states[i] = MemberState.ACTIVE
        geometry = Geometry(Level(newest.level), n, newest.chunk, newest.member_data_size)
        array = Array(geometry, devices, states, data_offset=newest.data_offset)
        if io_timeout is not None:
            array.io_timeout = io_timeout
        for i in range(n):
            if devices[i] is None:
                notes.append(f"member {i} is missing")
        if not array.usable:
            down = [i for i in range(n) if states[i] != MemberState.ACTIVE]
            raise VolumeError(
                f"{geometry.level.name} array {want} cannot start: members "
                f"{', '.join(map(str, down))} of {n} are missing or stale, "
                f"more than the level tolerates ({geometry.tolerated_failures})"
            )
        resolved = [
            mp if mp is not None else Path(f"<missing member {i}>")
            for i, mp in enumerate(member_paths)
        ]
        return ArrayMembers(
            array=array,
            devices=devices,
            paths=resolved,
            template=newest,
            member_uuids=member_uuids,
            notes=notes,
            member_events=member_events,
        )
    except BaseException:
        for _p, dev, _sb in found:
            await dev.aclose()
        raise
