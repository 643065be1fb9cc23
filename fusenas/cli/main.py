"""The ``fusenas`` command: argument parsing and dispatch only.

``fusenas [VOLUME-DIR] MOUNTPOINT [-o opt,...] [-f]`` mounts (``fusenas.cli.mount``); the first
argument being a subcommand name selects a subcommand instead. Every failure the user can cause
ends in one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from fusenas.errors import FusenasError
from fusenas.volume.layout import Level, parse_level, parse_size

SUBCOMMANDS = ("mkfs", "status", "fsck", "scrub", "replace", "add-spare")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _level(text: str) -> Level:
    try:
        return parse_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fusenas",
        description="fusenas: a NAS filesystem over a journaled software RAID volume.\n"
        "Mount with: fusenas [VOLUME-DIR] MOUNTPOINT [-o opt,...] [-f]  "
        "(see fusenas MOUNTPOINT --help)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    mk = sub.add_parser("mkfs", help="create a volume", description="Create a fusenas volume.")
    mk.add_argument("voldir", type=Path, metavar="VOLUME-DIR")
    mk.add_argument("--level", type=_level, default=Level.RAID5, help="raid0|1|5|6|10 (raid5)")
    group = mk.add_mutually_exclusive_group()
    group.add_argument(
        "--members", type=int, default=None, help="number of sparse member files to create (4)"
    )
    group.add_argument(
        "--member",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="an existing file or block device to use as a member (repeat, in order)",
    )
    mk.add_argument(
        "--size", type=_size, default=parse_size("2G"), help="size of each member file (2G)"
    )
    mk.add_argument("--chunk", type=_size, default=parse_size("64K"), help="chunk size (64K)")
    mk.add_argument("--journal", type=Path, default=None, help="journal path (VOLUME-DIR/journal)")
    mk.add_argument("--journal-size", type=_size, default=parse_size("512M"), help="(512M)")
    mk.add_argument("--name", default="", help="array name shown by status")
    mk.add_argument("--force", action="store_true", help="overwrite members that hold data")
    mk.add_argument(
        "--metadata",
        choices=("image", "tree"),
        default="image",
        help="where metadata lives: 'image' (in memory, checkpointed whole; the default) or "
        "'tree' (on the volume in pages, docs/metadata_format.md; experimental)",
    )

    st = sub.add_parser(
        "status", help="show the array like /proc/mdstat", description="Show a volume's state."
    )
    st.add_argument("target", type=Path, metavar="VOLUME-DIR|MOUNTPOINT")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    fs = sub.add_parser("fsck", help="check a volume's filesystem", description="Check a volume.")
    fs.add_argument("voldir", type=Path, metavar="VOLUME-DIR")
    fs.add_argument("--repair", action="store_true", help="repair what can be repaired")

    sc = sub.add_parser(
        "scrub",
        help="verify checksums and parity of every stripe, repair",
        description="Read every stripe of a volume, verify block checksums and parity (or "
        "mirror copies), repair from redundancy. A mounted volume (MOUNTPOINT, or its "
        "VOLUME-DIR) is scrubbed online by its daemon. Exit 1 if anything is lost.",
    )
    sc.add_argument("voldir", type=Path, metavar="VOLUME-DIR|MOUNTPOINT")
    sc.add_argument(
        "--rate",
        type=_size,
        default=None,
        help="limit reads to SIZE per second (online default 64M, offline unlimited)",
    )
    sc.add_argument("--quiet", action="store_true", help="no progress bar")

    rp = sub.add_parser(
        "replace",
        help="replace a member and rebuild it",
        description="Put NEW (created sparse if absent) in the slot of member OLD (an index "
        "or its path) and rebuild it from the others; online (by the daemon) when the "
        "volume is mounted.",
    )
    rp.add_argument("voldir", type=Path, metavar="VOLUME-DIR|MOUNTPOINT")
    rp.add_argument("old", metavar="OLD")
    rp.add_argument("new", type=Path, metavar="NEW")
    rp.add_argument("--workers", type=int, default=4, help="rebuild workers (4)")
    rp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = sub.add_parser(
        "add-spare",
        help="add a hot spare",
        description="Make PATH (created sparse if absent) a hot spare of a volume: it takes "
        "over the first member that fails while the volume is mounted (at once if one is "
        "down already). Online (by the daemon) when the volume is mounted.",
    )
    sp.add_argument("voldir", type=Path, metavar="VOLUME-DIR|MOUNTPOINT")
    sp.add_argument("path", type=Path, metavar="PATH")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] not in SUBCOMMANDS and args_list[0] not in ("-h", "--help"):
        from fusenas.cli.mount import main as mount_main

        result: int = mount_main(args_list)
        return result
    args = build_parser().parse_args(args_list)
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        if args.command == "mkfs":
            return trio.run(_mkfs, args)
        if args.command == "status":
            return trio.run(_status, args)
        if args.command == "fsck":
            return trio.run(_fsck, args)
        if args.command in ("scrub", "replace", "add-spare"):
            return trio.run(_online_or_offline, args)
    except FusenasError as exc:
        print(f"fusenas {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `fusenas status | head`
        return 0
    return 2


async def _mkfs(args: argparse.Namespace) -> int:
    from fusenas.engine import create_volume

    notes = await create_volume(
        args.voldir.absolute(),
        level=args.level,
        chunk=args.chunk,
        member_count=None if args.member else (args.members or 4),
        member_paths=args.member,
        member_size=args.size,
        journal=args.journal.absolute() if args.journal else None,
        journal_size=args.journal_size,
        force=args.force,
        name=args.name,
        paged=args.metadata == "tree",
    )
    for n in notes:
        print(f"fusenas mkfs: {n}")
    return 0


async def _status(args: argparse.Namespace) -> int:
    from fusenas.cli.status import collect_status, render_status

    report = await collect_status(args.target.absolute())
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render_status(report), end="")
    return 0


async def _online_or_offline(args: argparse.Namespace) -> int:
    """scrub, replace, add-spare: offline on an unmounted volume; online through the
    daemon's control socket."""
    from fusenas.cli.status import resolve_volume

    voldir, mountpoint = resolve_volume(args.voldir.absolute())
    if mountpoint is None:
        from fusenas.cli import offline

        if args.command == "scrub":
            return await offline.scrub(voldir, rate=args.rate, quiet=args.quiet)
        if args.command == "add-spare":
            return await offline.add_spare_member(voldir, args.path)
        return await offline.replace_member(
            voldir, args.old, args.new, workers=args.workers, quiet=args.quiet
        )
    from fusenas.cli.control import DEFAULT_SCRUB_RATE, run_job

    if args.command == "scrub":
        job = await run_job(voldir, "scrub", quiet=args.quiet, rate=args.rate or DEFAULT_SCRUB_RATE)
    elif args.command == "add-spare":
        job = await run_job(
            voldir, "add-spare", quiet=True, poll=0.1, path=str(args.path.absolute())
        )
    else:
        new = args.new.absolute()
        job = await run_job(
            voldir, "replace", quiet=args.quiet, old=args.old, new=str(new), workers=args.workers
        )
    if job["state"] != "done":
        print(f"fusenas {args.command}: {job['error']}", file=sys.stderr)
        return 1
    for p in (job["result"] or {}).get("problems", []):
        print(f"fusenas {args.command}: {p}")
    print(f"fusenas {args.command}: {job['summary']} (online, {mountpoint})")
    if args.command == "scrub" and job["result"]["unrecoverable"]:
        return 1
    return 0


async def _fsck(args: argparse.Namespace) -> int:
    from fusenas.cli.fsck import run_fsck

    return await run_fsck(args.voldir.absolute(), repair=args.repair)
