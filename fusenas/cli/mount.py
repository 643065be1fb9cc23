"""``fusenas [VOLUME-DIR] MOUNTPOINT [-o opt,...] [-f]``: mount a volume.

Wiring only: parse, check, lock, daemonize, then ``open_volume`` → ``pyfuse3.init`` →
``pyfuse3.main``.

Refusals (one line on stderr, exit 1, nothing written): a missing mount point, one that is
not a directory, one that is already a mount point (or a stale FUSE mount), a VOLUME-DIR that
is no volume, a volume that is already mounted (an exclusive ``flock`` on
``VOLUME-DIR/fusenas.lock`` is held for the life of the mount; the lock dies with the
process, so a crashed daemon never leaves a stale lock). Bad options exit 2.

Background mode (the default)
    The parent forks and waits on a pipe. The child (new session, cwd ``/``, stdio on
    ``/dev/null`` and ``VOLUME-DIR/fusenas.log``) recovers the volume, mounts, and then a
    worker thread ``stat``s the mount point: that stat is answered only once the kernel's
    INIT and a GETATTR went through the running main loop, so the child writes "ok" to the
    pipe only when the mount really answers (and its readahead, ``-o readahead``, is set).
    The parent exits 0 on "ok", or prints the child's one-line error and exits 1 (also if
    the child dies: the pipe closes).

Shutdown order (clean unmount, SIGTERM/SIGINT/SIGHUP, or umount/fusermount3 -u)
    1. a signal calls ``pyfuse3.terminate()``; an external unmount ends the session by itself:
       either way ``pyfuse3.main()`` returns once the in-flight requests are done;
    2. ``pyfuse3.close(unmount=True)``: the mount is gone, no request can arrive any more;
    3. leaving ``open_volume``: flush the stripe cache, commit the WAL, flush the members,
       checkpoint (so the next mount replays nothing), mark the superblocks clean, close the
       WAL, close the members;
    4. the lock file's descriptor closes with the process; exit 0.
    A failure in 3 is logged and makes the exit status 1; the next mount recovers from the
    journal.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import logging
import os
import shutil
import signal
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from fusenas import logs
from fusenas.engine.config import LOG_NAME, is_volume_dir, lock_volume
from fusenas.errors import FusenasError
from fusenas.stripe.cache import DEFAULT_MAX_AGE
from fusenas.volume.layout import Level, format_size, parse_size

log = logging.getLogger("fusenas.cli.mount")

#: Options of fstab/mount(8) that mean nothing to fusenas: accepted and ignored.
IGNORED_OPTIONS = frozenset(
    {"auto", "noauto", "user", "users", "nouser", "nofail", "_netdev", "defaults"}
)
#: Generic mount flags passed through to the kernel mount (libfuse understands them).
PASSED_OPTIONS = frozenset(
    {"rw", "ro", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "noatime", "relatime"}
)


#: ``-o readahead=KB``: the mount's bdi readahead. With the kernel's default (128 KiB) a 1 MiB
#: buffered read(2) reaches the daemon as 256 KiB requests (Linux 6.18); with 1 MiB, as one
#: request (the most libfuse's ``max_pages`` allows).
DEFAULT_READAHEAD_KB = 1024


class UsageError(Exception):
    """Bad command line: exit 2."""


class Refusal(Exception):
    """The mount cannot happen as asked: one line, exit 1."""


@dataclass
class MountOptions:
    allow_other: bool
    default_permissions: bool = True
    readonly: bool = False
    fsname: str | None = None
    subtype: str = "fusenas"
    max_dirty: int = 256 << 20
    flush_age: float = DEFAULT_MAX_AGE  # seconds dirty data may wait in the stripe cache
    io_timeout: float | None = None
    inject: str | None = None  # debug: fault specs, see fusenas.volume.faults
    metrics: tuple[str, int] | None = None
    readahead_kb: int = DEFAULT_READAHEAD_KB  # 0: leave the kernel's default
    passed: set[str] = field(default_factory=set)

    def fuse_options(self, voldir: Path) -> set[str]:
        opts = set(self.passed)
        opts.add(f"fsname={self.fsname or f'fusenas:{voldir}'}")
        opts.add(f"subtype={self.subtype}")
        if self.default_permissions:
            opts.add("default_permissions")
        if self.allow_other:
            opts.add("allow_other")
        if self.readonly:
            opts.discard("rw")
            opts.add("ro")
        if "relatime" not in opts:
            opts.add("noatime")  # reads do not update atime: say so in /proc/mounts
        return opts


#: Environment variable that overrides the default volume directory (tests, packagers).
DEFAULT_VOLUME_ENV = "FUSENAS_DEFAULT_VOLUME"


def default_volume_dir() -> Path:
    override = os.environ.get(DEFAULT_VOLUME_ENV)
    if override:
        return Path(override).absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/fusenas/default")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fusenas" / "default"


def _parser() -> argparse.ArgumentParser:
    root = os.geteuid() == 0
    p = argparse.ArgumentParser(
        prog="fusenas",
        usage="fusenas [VOLUME-DIR] MOUNTPOINT [-o opt,...] [-f] [-h]",
        description=(
            "Mount a fusenas volume. Without VOLUME-DIR the default volume "
            f"({default_volume_dir()}) is used, and created on first use (RAID5 over 4 "
            f"sparse member files); the environment variable {DEFAULT_VOLUME_ENV} overrides "
            "its directory."
        ),
        epilog=(
            "mount options (-o, comma separated, may repeat):\n"
            "  allow_other          let other users access the mount (default: on when root "
            "mounts" + (", i.e. now" if root else "") + ")\n"
            "  default_permissions  the kernel checks permissions by mode/owner (default: on;\n"
            "                       no_default_permissions turns it off)\n"
            "  ro                   read-only\n"
            "  fsname=NAME          source shown in /proc/mounts (fusenas:VOLUME-DIR)\n"
            "  subtype=NAME         type shown as fuse.NAME (fusenas)\n"
            "  max_dirty=SIZE       stripe cache size, e.g. 128M (256M; never more than\n"
            "                       1/8 of the journal: 64M with the default 512M journal)\n"
            "  flush_age=SECONDS    dirty data waits at most this long in the stripe cache\n"
            f"                       before it is written in place ({DEFAULT_MAX_AGE:g}; fsync\n"
            "                       and checkpoints write it sooner)\n"
            "  io_timeout=SECONDS   a member I/O taking longer fails that member\n"
            "  inject=SPEC[+SPEC]   debug: inject member faults, SPEC = member:N:KIND[:ARG],\n"
            "                       KIND fail|fail_after|hang_after|slow|corrupt_read|"
            "corrupt_write\n"
            "  metrics=[ADDR:]PORT  serve Prometheus metrics on http://ADDR:PORT/metrics\n"
            "                       (ADDR defaults to 127.0.0.1; off by default)\n"
            f"  readahead=KB         kernel readahead of the mount in KiB ({DEFAULT_READAHEAD_KB};"
            " 0 keeps\n"
            "                       the kernel's default; needs a writable /sys/class/bdi)\n"
            "  nodev,nosuid,noexec,dev,suid,exec,rw,noatime,relatime  passed to the kernel\n"
            "  auto,noauto,user,users,nofail,_netdev,defaults,x-*,comment=*  (fstab) ignored"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="[VOLUME-DIR] MOUNTPOINT")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]")
    p.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr"
    )
    p.add_argument("-d", "--debug", action="store_true", help="debug logging")
    return p


def _seconds(key: str, value: str) -> float:
    """A positive, finite number of seconds, or UsageError naming the option."""
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"bad {key}={value}: not a number") from None
    if not 0 < seconds < float("inf"):
        raise UsageError(f"{key}={value} must be a positive number of seconds")
    return seconds


def parse_options(raw: Sequence[str], *, root: bool) -> MountOptions:
    opts = MountOptions(allow_other=root)
    for group in raw:
        for opt in group.split(","):
            opt = opt.strip()
            if not opt:
                continue
            key, eq, value = opt.partition("=")
            if opt in IGNORED_OPTIONS or key.startswith("x-") or key == "comment":
                continue
            if opt in PASSED_OPTIONS:
                if opt == "ro":
                    opts.readonly = True
                elif opt == "rw":
                    opts.readonly = False
                else:
                    opts.passed.add(opt)
                continue
            if opt == "allow_other":
                opts.allow_other = True
            elif opt == "default_permissions":
                opts.default_permissions = True
            elif opt == "no_default_permissions":
                opts.default_permissions = False
            elif key == "fsname" and eq and value:
                opts.fsname = value
            elif key == "subtype" and eq and value:
                opts.subtype = value
            elif key == "max_dirty" and eq:
                try:
                    opts.max_dirty = parse_size(value)
                except ValueError as exc:
                    raise UsageError(f"bad max_dirty={value}: {exc}") from None
                if opts.max_dirty < 1 << 20:
                    raise UsageError(f"max_dirty={value} is below 1M")
            elif key == "inject" and eq:
                from fusenas.volume.faults import parse_inject

                try:
                    parse_inject(value)
                except ValueError as exc:
                    raise UsageError(f"bad inject={value}: {exc}") from None
                opts.inject = value
            elif key == "io_timeout" and eq:
                opts.io_timeout = _seconds(key, value)
            elif key == "flush_age" and eq:
                opts.flush_age = _seconds(key, value)
            elif key == "readahead" and eq:
                if not (value.isascii() and value.isdigit()):  # no sign, space or "_"
                    raise UsageError(f"bad readahead={value}: give KiB as a number, 0 or more")
                opts.readahead_kb = int(value)
            elif key == "metrics" and eq:
                from fusenas.observability.metrics import parse_address

                try:
                    opts.metrics = parse_address(value)
                except ValueError as exc:
                    raise UsageError(f"bad metrics={value}: {exc}") from None
            else:
                raise UsageError(f"unknown mount option '{opt}'")
    return opts


def _check_mountpoint(mnt: Path) -> None:
    try:
        st = os.stat(mnt)
    except FileNotFoundError:
        raise Refusal(f"mount point {mnt} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise Refusal(
                f"{mnt} is a stale FUSE mount (its daemon died); run fusermount3 -u {mnt}"
            ) from None
        raise Refusal(f"mount point {mnt}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise Refusal(f"mount point {mnt} is not a directory")
    if os.path.ismount(mnt):
        raise Refusal(f"{mnt} is already a mount point")


def _default_member_size(voldir: Path) -> tuple[int, int]:
    """(member size, journal size) for a new default volume from the free space there."""
    probe = voldir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    member = min(max(free // 8, 256 << 20), 4 << 30) // (64 << 20) * (64 << 20)
    journal = 512 << 20
    if 4 * member + journal > free:
        journal = max(64 << 20, min(journal, (free - 4 * member) // 2) // (16 << 20) * (16 << 20))
    if 4 * member + journal > free:
        raise Refusal(
            f"not enough free space under {probe} for a default volume ({format_size(free)} free)"
        )
    return member, journal


def _create_default(voldir: Path) -> None:
    from fusenas.engine import create_volume

    member, journal = _default_member_size(voldir)
    trio.run(
        lambda: create_volume(
            voldir,
            level=Level.RAID5,
            chunk=64 << 10,
            member_count=4,
            member_size=member,
            journal_size=journal,
            name="default",
        )
    )
    print(
        f"fusenas: created the default volume in {voldir} (RAID5, 4 sparse members of "
        f"{format_size(member)}, journal {format_size(journal)})",
        file=sys.stderr,
    )


def main(argv: Sequence[str]) -> int:
    root = os.geteuid() == 0
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if len(args.paths) > 2:
            raise UsageError("too many arguments: give [VOLUME-DIR] MOUNTPOINT")
        opts = parse_options(args.options, root=root)
    except UsageError as exc:
        print(f"fusenas: {exc}", file=sys.stderr)
        return 2
    mnt = Path(args.paths[-1]).absolute()
    explicit = len(args.paths) == 2
    voldir = Path(args.paths[0]).absolute() if explicit else default_volume_dir()
    lock_fd = -1
    try:
        _check_pyfuse3()
        _check_mountpoint(mnt)
        if explicit:
            if not voldir.is_dir():
                raise Refusal(f"volume directory {voldir} does not exist")
            if not is_volume_dir(voldir):
                raise Refusal(f"{voldir} is not a fusenas volume (no fusenas.toml)")
        elif not is_volume_dir(voldir):
            if opts.readonly:
                raise Refusal(f"no default volume in {voldir} to mount read-only")
            _create_default(voldir)
        if voldir == mnt or mnt.is_relative_to(voldir):
            raise Refusal("the mount point may not be inside the volume directory")
        lock_fd = lock_volume(voldir)
    except Refusal as exc:
        print(f"fusenas: {exc}", file=sys.stderr)
        return 1
    except FusenasError as exc:
        print(f"fusenas: {exc}", file=sys.stderr)
        return 1
    level = logging.DEBUG if args.debug else logging.INFO
    if args.foreground:
        logs.setup(level, sys.stderr)
        return _run(voldir, mnt, opts, ready_fd=None)
    return _daemonize(voldir, mnt, opts, level, lock_fd)


def _check_pyfuse3() -> None:
    """Refuse, before anything is created, a pyfuse3 that is not the patched build."""
    import pyfuse3

    from fusenas.fs.pyfuse3_patch import check_pyfuse3

    check_pyfuse3(pyfuse3)


def _daemonize(voldir: Path, mnt: Path, opts: MountOptions, level: int, lock_fd: int) -> int:
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(w)
        os.close(lock_fd)  # the child holds the lock (same open file description)
        chunks = []
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        msg = b"".join(chunks).decode(errors="replace").strip()
        if msg == "ok":
            return 0
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        print(
            f"fusenas: {msg or 'the daemon died while mounting; see ' + str(voldir / LOG_NAME)}",
            file=sys.stderr,
        )
        return 1
    # The child: a daemon in its own session.
    os.close(r)
    code = 1
    try:
        os.setsid()
        os.chdir("/")
        logf = os.open(voldir / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(logf, 2)  # tracebacks and library noise land in the log too
        os.close(null)
        os.close(logf)
        logs.setup(level, sys.stderr, pid=True)
        code = _run(voldir, mnt, opts, ready_fd=w)
    except BaseException:
        log.exception("daemon failed")
    finally:
        os._exit(code)


def _report(ready_fd: int | None, msg: str) -> None:
    if ready_fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(ready_fd, msg.encode())
        os.close(ready_fd)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _run(voldir: Path, mnt: Path, opts: MountOptions, *, ready_fd: int | None) -> int:
    state = {"ready": ready_fd}
    try:
        return trio.run(_serve, voldir, mnt, opts, state)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        # trio wraps what leaves a nursery (open_volume's) in exception groups: a group of
        # FusenasErrors only is still the one-line message the user must see.
        errors = _leaves(exc)
        if all(isinstance(e, FusenasError) for e in errors):
            msg = "; ".join(dict.fromkeys(str(e) for e in errors))
            log.error("%s", msg)
            _report(state["ready"], msg)
            return 1
        log.exception("fusenas daemon failed")
        _report(state["ready"], f"{type(exc).__name__}: {exc}")
        return 1


async def _serve(voldir: Path, mnt: Path, opts: MountOptions, state: dict[str, int | None]) -> int:
    import pyfuse3

    from fusenas.cli import control
    from fusenas.engine import open_volume
    from fusenas.fs.operations import FusenasOperations
    from fusenas.observability import HealthLog, Monitor, serve_metrics, status_report
    from fusenas.volume.member import FILES

    log.info("opening volume %s", voldir)
    monitor = Monitor(voldir, mnt)
    async with open_volume(
        voldir,
        readonly=opts.readonly,
        max_dirty=opts.max_dirty,
        flush_age=opts.flush_age,
        io_timeout=opts.io_timeout,
        inject=opts.inject,
        provider=monitor.provider(FILES),
    ) as vol:
        for note in vol.notes:
            log.warning("%s", note)
        _tune_gc()
        ops = FusenasOperations(vol)
        monitor.attach(vol, ops.op_stats)

        def status() -> dict[str, Any]:
            return status_report(monitor.snapshot())

        with control.listening(voldir) as listener, serve_metrics(monitor, opts.metrics):
            try:
                pyfuse3.init(ops, str(mnt), opts.fuse_options(voldir))
            except RuntimeError as exc:
                raise FusenasError(f"cannot mount on {mnt}: {exc}") from None
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_on_signals)
                    nursery.start_soon(_announce, mnt, state, opts.readahead_kb)
                    jobs = None if opts.readonly else control.Jobs(vol, nursery)
                    handler = control.daemon_handler(status, jobs)
                    nursery.start_soon(control.serve, listener, handler)
                    nursery.start_soon(HealthLog(vol).watch)
                    await pyfuse3.main()
                    nursery.cancel_scope.cancel()
            finally:
                log.info("unmounting %s", mnt)
                pyfuse3.close(unmount=True)
        log.info("flushing and closing the volume")
    log.info("volume %s closed cleanly", voldir)
    return 0


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path. The metadata (an object per
    inode, extent run and free run) is long-lived and acyclic in practice, yet every
    full collection walks all of it, and the default young-generation threshold (700
    allocations) runs a collection every few requests: ~10% of the daemon's CPU in a 4 KiB
    random-write profile. Freezing moves what the mount loaded out of the collector's view;
    the larger threshold makes young collections rarer (each one costs about the same per
    object, the garbage it may hold is bounded by the threshold)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def _on_signals() -> None:
    import pyfuse3

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _announce(mnt: Path, state: dict[str, int | None], readahead_kb: int) -> None:
    """Tell the parent the mount answers: a stat through the running main loop; then set the
    mount's readahead (before "ok", so it is in effect when ``fusenas`` returns).

    Both calls run in a worker thread: ``ismount`` lstat()s the mount point, and once the
    root's attributes expire that is a GETATTR to this very process, which the main thread
    could never answer while blocked in it."""

    def answers() -> int | None:
        dev = os.stat(mnt).st_dev
        return dev if os.path.ismount(mnt) else None

    dev = await trio.to_thread.run_sync(answers, abandon_on_cancel=True)
    if dev is None:
        msg = f"{mnt} did not become a mount point"
        log.error("%s", msg)
        _report(state["ready"], msg)
        state["ready"] = None
        return
    if readahead_kb:
        set_readahead(dev, readahead_kb)
    log.info("mounted on %s", mnt)
    _report(state["ready"], "ok")
    state["ready"] = None


def set_readahead(dev: int, kb: int) -> bool:
    """Set the readahead of the mount with device number ``dev`` (its bdi is named
    ``MAJOR:MINOR``) to ``kb`` KiB. Not being allowed to (not root, a read-only /sys in a
    container) is one info line, never a failed mount."""
    path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        path.write_text(f"{kb}\n")
    except OSError as exc:
        log.info("readahead stays the kernel's: cannot write %s (%s)", path, exc.strerror or exc)
        return False
    log.info("readahead %d KiB (%s)", kb, path)
    return True
