"""``fusenas status``: the state of a volume, live from its daemon or from its superblocks.

The report is a JSON-ready dict (schema in docs/status.md) rendered like ``/proc/mdstat``.
A MOUNTPOINT argument is resolved to its volume directory through ``/proc/mounts`` (the
mount's source is ``fusenas:VOLUME-DIR``). A mounted volume is asked through its control
socket (``fusenas.cli.control``) for the live report (``"source": "daemon"``: member states as the
daemon sees them, bytes per member, cache, journal, uptime). Otherwise, or if the daemon cannot
be asked (not root, daemon hung), the report comes from the superblocks (``"source":
"superblocks"``, with ``live_error`` saying why when the volume is mounted): every member is
opened read-only and nothing is written, so that is safe on a mounted volume too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fusenas.engine.config import is_volume_dir, load_config
from fusenas.errors import VolumeError
from fusenas.volume.layout import format_size
from fusenas.volume.member import FileDevice
from fusenas.volume.superblock import (
    RECOVERY_COMPLETE,
    MemberState,
    SuperblockError,
    read_superblock,
)

SCHEMA_VERSION = 1


def mounts() -> dict[Path, Path]:
    """Mounted fusenas volumes: mount point → volume directory."""
    found: dict[Path, Path] = {}
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                source, target, fstype, *_ = line.split()
                if fstype.endswith("fusenas") and source.startswith("fusenas:"):
                    decode = bytes(target, "utf-8").decode("unicode_escape")
                    found[Path(decode)] = Path(source[len("fusenas:") :])
    except OSError:
        pass
    return found


def resolve_volume(target: Path) -> tuple[Path, Path | None]:
    """``(volume dir, mount point or None)`` for a VOLUME-DIR or a MOUNTPOINT argument."""
    table = mounts()
    if target in table:
        return table[target], target
    if is_volume_dir(target):
        mounted = next((m for m, v in table.items() if v == target), None)
        return target, mounted
    raise VolumeError(f"{target} is neither a fusenas volume directory nor a fusenas mount")


async def collect_status(target: Path) -> dict[str, Any]:
    voldir, mountpoint = resolve_volume(target)
    live_error = None
    if mountpoint is not None:
        from fusenas.cli.control import ControlError, request

        try:
            return await request(voldir, "status")
        except ControlError as exc:
            live_error = str(exc)
    report = await superblock_status(voldir, mountpoint)
    if live_error:
        report["live_error"] = live_error
    return report


async def superblock_status(voldir: Path, mountpoint: Path | None) -> dict[str, Any]:
    """The report from the member superblocks alone."""
    cfg = load_config(voldir)
    members: list[dict[str, Any]] = []
    newest = None
    for i, path in enumerate(cfg.member_paths(voldir)):
        entry: dict[str, Any] = {"slot": i, "path": str(path), "state": "missing"}
        try:
            dev = await FileDevice.open(path, readonly=True)
        except VolumeError as exc:
            entry["error"] = str(exc)
            members.append(entry)
            continue
        try:
            sb, note = await read_superblock(dev)
            entry.update(
                index=sb.member_index,
                events=sb.events,
                size=dev.size,
                state="active",
                array_uuid=str(sb.array_uuid),
            )
            if note:
                entry["note"] = note
            if sb.array_uuid != cfg.array_uuid:
                entry["state"] = "foreign"
            elif newest is None or sb.events > newest.events:
                newest = sb
        except SuperblockError as exc:
            entry["error"] = str(exc)
        finally:
            await dev.aclose()
        members.append(entry)
    if newest is None:
        raise VolumeError(f"no member of {voldir} has a readable superblock")
    for entry in members:
        if entry["state"] != "active":
            continue
        recorded = newest.member_states[entry["index"]]
        if entry["events"] < newest.events:
            entry["state"] = "stale"
        elif recorded != MemberState.ACTIVE:
            entry["state"] = recorded.name.lower()
        if recorded == MemberState.REBUILDING:
            done = 0 if newest.recovery_offset == RECOVERY_COMPLETE else newest.recovery_offset
            entry["recovery"] = min(1.0, done / newest.member_data_size)
    spares = [str(p) for p in _spares(voldir)]
    active = sum(e["state"] == "active" for e in members)
    return {
        "schema": SCHEMA_VERSION,
        "source": "superblocks",
        "volume": str(voldir),
        "mountpoint": str(mountpoint) if mountpoint else None,
        "uuid": str(cfg.array_uuid),
        "name": newest.name,
        "level": int(newest.level),
        "chunk": newest.chunk,
        "size": newest.logical_size,
        "member_count": newest.members,
        "active_members": active,
        "degraded": active < newest.members,
        "state": "mounted" if mountpoint else newest.state.name.lower(),
        "events": newest.events,
        "journal": {"path": str(cfg.journal_path(voldir)), "size": cfg.journal_size},
        "members": members,
        "spares": spares,
    }


def _spares(voldir: Path) -> list[Path]:
    from fusenas.engine.spares import load_spares

    return load_spares(voldir)


def render_status(r: dict[str, Any]) -> str:
    """The report as /proc/mdstat would show it."""
    name = r["name"] or os.path.basename(r["volume"].rstrip("/"))
    health = "active" if r["active_members"] else "inactive"
    parts = []
    for e in r["members"]:
        flag = {"active": "", "faulty": "(F)", "spare": "(S)", "rebuilding": "(R)"}.get(
            e["state"], f"({e['state']})"
        )
        parts.append(f"{os.path.basename(e['path'])}[{e['slot']}]{flag}")
    bar = "".join("U" if e["state"] == "active" else "_" for e in r["members"])
    lines = [
        f"{name} : {health} raid{r['level']} {' '.join(parts)}",
        f"      {r['size']} bytes ({format_size(r['size'])}) {format_size(r['chunk'])} chunk "
        f"[{r['member_count']}/{r['active_members']}] [{bar}]",
        f"      state: {r['state']}{', degraded' if r['degraded'] else ''}, events: {r['events']}"
        + (f", mounted on {r['mountpoint']}" if r["mountpoint"] else ""),
        f"      uuid: {r['uuid']}  journal: {r['journal']['path']}",
    ]
    if r.get("source") == "daemon":
        lines += _render_live(r)
    for e in r["members"]:
        if "recovery" in e:
            pct = 100 * e["recovery"]
            filled = int(pct // 5)
            lines.append(
                f"      rebuild of member {e['slot']}: [{'=' * filled}>{'.' * (20 - filled)}] "
                f"{pct:.1f}% (recorded progress)"
            )
    if r.get("spares"):
        lines.append("      spares: " + " ".join(f"{os.path.basename(p)}(S)" for p in r["spares"]))
    for e in r["members"]:
        if "error" in e or "note" in e:
            lines.append(f"      member {e['slot']}: {e.get('error') or e.get('note')}")
    if r.get("live_error"):
        lines.append(f"      live state unavailable: {r['live_error']}")
    return "\n".join(lines) + "\n"


def _render_live(r: dict[str, Any]) -> list[str]:
    j, c, io = r["journal"], r["cache"], r["io"]
    up = int(r["uptime"])
    lines = [
        f"      daemon pid {r['pid']}, up {up // 86400}d {up % 86400 // 3600:02d}:"
        f"{up % 3600 // 60:02d}:{up % 60:02d}, {sum(io['operations'].values())} requests, "
        f"read {format_size(io['bytes_read'])}, written {format_size(io['bytes_written'])}"
        + (", read-only" if r["readonly"] else ""),
        f"      cache: {c['dirty_stripes']} dirty stripes ({format_size(c['dirty_bytes'])}), "
        f"{c['stripes_flushed']} flushed ({c['blocks_per_flush']:.1f} blocks each; full "
        f"{c['full_stripe_writes']}, rmw {c['rmw_writes']}, rcw {c['rcw_writes']}, degraded "
        f"{c['degraded_writes']})",
        f"      journal: {j['fill']:.1%} full ({format_size(j['used'])} of "
        f"{format_size(j['capacity'])}), {j['commits']} commits, "
        f"{j['records_committed'] / j['commits'] if j['commits'] else 0:.1f} records/commit"
        + (f", {j['waiting_for_room']} waiting for room" if j["waiting_for_room"] else ""),
    ]
    for e in r["members"]:
        lines.append(
            f"      member {e['slot']} {os.path.basename(e['path'])}: {e['state']}, "
            f"read {format_size(e['bytes_read'])}, written {format_size(e['bytes_written'])}"
            + (f", {e['slow_ios']} slow I/Os" if e["slow_ios"] else "")
        )
    if r.get("metrics"):
        lines.append(f"      metrics: {r['metrics']}")
    return lines
