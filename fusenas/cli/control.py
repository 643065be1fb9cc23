"""The control socket: ``VOLUME-DIR/control.sock``, how ``fusenas status`` asks the daemon.

Protocol (version 1): one connection, one request, one reply, each a single line of JSON::

    → {"cmd": "status"}
    ← {"ok": true, "version": 1, "result": {... the live status report, docs/status.md ...}}
    ← {"ok": false, "version": 1, "error": "unknown command 'x'"}

Commands: ``status`` (the live report), ``ping`` (``{"pid": N}``); with a volume open
read-write, :class:`Jobs` adds long operations that run in the daemon's nursery:

    → {"cmd": "scrub", "rate": 67108864}               ← {"id": 3, "kind": "scrub"}
    → {"cmd": "replace", "old": "1", "new": "/x.img"}  ← {"id": 4, "kind": "replace"}
    → {"cmd": "add-spare", "path": "/s.img"}           ← {"id": 5, "kind": "add-spare"}
    → {"cmd": "jobs"}                                   ← {"scrub": {... a job ...}, ...}

and ``status`` then carries ``"jobs"`` and ``"spares"`` (the paths listed in
``VOLUME-DIR/spares``) too. A job is ``{"id", "kind", "state": "running" | "done" |
"failed", "started", "finished", "progress": {"done", "total"} (bytes), "summary", "result",
"error"}``; one job of each kind at a time (a second is refused). The clients (``fusenas
scrub|replace|add-spare MOUNTPOINT``) poll ``status`` for the progress bar until their job
is no longer running, then print its summary (:func:`run_job`). ``add-spare`` runs the same
``rebuild.add_spare`` as the offline command, which also wakes the spare manager; it has no
progress. A request longer than 64 KiB or not complete within 5 s is dropped.

Access: the socket is created mode 0600 (chmod before ``listen``, so no connection is ever
accepted at a wider mode) and owned by the user who mounted, i.e. root for a root mount; the
server also checks the peer's uid (``SO_PEERCRED``) and answers only that user and root.

Lifetime: bound before the mount, served in the daemon's nursery, unlinked when the daemon
stops. A socket left by a crashed daemon is replaced on the next mount (the volume lock
guarantees no other daemon owns it); a client that finds it dead gets ``ECONNREFUSED`` and
``fusenas status`` falls back to the superblocks.

Long paths: ``sun_path`` holds 107 bytes. A longer socket path is reached through
``/proc/self/fd/N/control.sock`` with ``N`` an ``O_PATH`` descriptor of the volume directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from fusenas.cli.progress import byte_progress
from fusenas.engine import Engine
from fusenas.engine.config import SOCKET_NAME
from fusenas.engine.rebuild import replace, resolve_member
from fusenas.engine.scrub import scrub_volume
from fusenas.engine.spares import add_spare, check_spare, load_spares
from fusenas.errors import FusenasError
from fusenas.volume.member import FILES

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_REQUEST = 64 << 10
REQUEST_TIMEOUT = 5.0
_SUN_PATH_MAX = 107
_UCRED = struct.Struct("3i")  # pid, uid, gid

Handler = Callable[[dict[str, Any]], dict[str, Any]]
Command = Callable[[dict[str, Any]], dict[str, Any]]


def socket_path(voldir: Path) -> Path:
    return voldir / SOCKET_NAME


@contextlib.contextmanager
def _addressable(path: Path) -> Iterator[str]:
    """A ``sun_path`` for ``path``: itself, or via ``/proc/self/fd`` if it is too long."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def bind(voldir: Path) -> trio.SocketListener:
    """Bind and listen on ``VOLUME-DIR/control.sock`` (mode 0600), replacing a stale one.
    The caller holds the volume lock. ``FusenasError`` if it cannot."""
    path = socket_path(voldir)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _addressable(path) as addr:
            sock.bind(addr)
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise FusenasError(f"cannot create the control socket {path}: {exc.strerror}") from None
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def unlink(voldir: Path) -> None:
    with contextlib.suppress(OSError):
        socket_path(voldir).unlink()


@contextlib.contextmanager
def listening(voldir: Path) -> Iterator[trio.SocketListener]:
    """``bind`` for the duration of the block; the socket file is unlinked when it ends."""
    listener = bind(voldir)
    try:
        yield listener
    finally:
        unlink(voldir)


async def serve(
    listener: trio.SocketListener,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer requests until cancelled; each connection in its own task, each bounded by
    ``REQUEST_TIMEOUT``. Cancellation closes the listener and every open connection."""
    allowed = {0, os.geteuid()}

    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(REQUEST_TIMEOUT):
                reply = await _answer(stream, handler, allowed)
                if reply is not None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await stream.send_all(json.dumps(reply).encode() + b"\n")

    async with listener:
        task_status.started()
        await trio.serve_listeners(one, [listener])


async def _answer(
    stream: trio.SocketStream, handler: Handler, allowed: set[int]
) -> dict[str, Any] | None:
    raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(raw)
    if uid not in allowed:
        return _error(f"uid {uid} may not use the control socket")
    buf = bytearray()
    while b"\n" not in buf:
        try:
            chunk = await stream.receive_some(4096)
        except trio.BrokenResourceError:
            return None
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            return _error("request too long")
    try:
        request = json.loads(bytes(buf).split(b"\n", 1)[0])
    except ValueError:
        return _error("request is not JSON")
    if not isinstance(request, dict):
        return _error("request is not a JSON object")
    try:
        result = handler(request)
    except KeyError as exc:
        return _error(str(exc.args[0]) if exc.args else "bad request")
    except Exception as exc:
        log.exception("control request %r failed", request.get("cmd"))
        return _error(f"{type(exc).__name__}: {exc}")
    return {"ok": True, "version": PROTOCOL_VERSION, "result": result}


def _error(msg: str) -> dict[str, Any]:
    return {"ok": False, "version": PROTOCOL_VERSION, "error": msg}


def dispatcher(
    commands: dict[str, Callable[[], dict[str, Any]]],
    with_request: dict[str, Command] | None = None,
) -> Handler:
    """A handler that runs ``commands[request["cmd"]]()``, or ``with_request[cmd](request)``
    (those take precedence)."""

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if isinstance(cmd, str) and with_request and cmd in with_request:
            return with_request[cmd](request)
        fn = commands.get(cmd) if isinstance(cmd, str) else None
        if fn is None:
            raise KeyError(f"unknown command {cmd!r}")
        return fn()

    return handle


def daemon_handler(status: Callable[[], dict[str, Any]], jobs: Jobs | None) -> Handler:
    """What the mounted daemon answers: ``status`` (the live report, ``status()``), ``ping``,
    and with a read-write volume the commands of ``jobs``."""
    return dispatcher(
        {"status": status, "ping": lambda: {"pid": os.getpid()}},
        jobs.commands(status) if jobs is not None else None,
    )


class ControlError(FusenasError):
    """The daemon could not be asked (no socket, refused, denied) or answered an error."""


async def request(
    voldir: Path, cmd: str, *, timeout: float = REQUEST_TIMEOUT, **fields: Any
) -> dict[str, Any]:
    """Send ``{"cmd": cmd, **fields}`` to the daemon of ``voldir``; return its ``result``."""
    path = socket_path(voldir)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.fail_after(timeout):
            try:
                with _addressable(path) as addr:
                    await sock.connect(addr)
            except OSError as exc:
                raise ControlError(f"cannot reach the daemon at {path}: {exc.strerror}") from None
            stream = trio.SocketStream(sock)
            await stream.send_all(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            buf = bytearray()
            while True:
                chunk = await stream.receive_some(1 << 16)
                if not chunk:
                    break
                buf += chunk
    except trio.TooSlowError:
        raise ControlError(f"the daemon at {path} did not answer within {timeout} s") from None
    finally:
        sock.close()
    try:
        reply = json.loads(bytes(buf))
    except ValueError:
        raise ControlError(f"the daemon at {path} sent no valid reply") from None
    if not reply.get("ok"):
        raise ControlError(f"the daemon refused: {reply.get('error')}")
    result: dict[str, Any] = reply["result"]
    return result


# -- long operations in the daemon ----------------------------------------------------------

#: Default rate limit of an online scrub, bytes per second of member reads.
DEFAULT_SCRUB_RATE = 64 << 20
#: ``Engine.integrity.progress`` key of each job kind.
PROGRESS_KEY = {"scrub": "scrub", "replace": "rebuild"}  # add-spare: none


class Jobs:
    """Scrub, replace and add-spare run by the daemon on request, in ``nursery`` (module doc).

    A job's failure is reported in the job (``state: failed``), never raised into the
    daemon's nursery: a scrub or rebuild that stops must not unmount the volume.
    """

    def __init__(self, vol: Engine, nursery: trio.Nursery) -> None:
        self.vol = vol
        self.nursery = nursery
        self.jobs: dict[str, dict[str, Any]] = {}
        self._next = 1

    def commands(self, status: Callable[[], dict[str, Any]]) -> dict[str, Command]:
        return {
            "status": lambda _req: {**status(), "jobs": self.report(), "spares": self.spares()},
            "jobs": lambda _req: self.report(),
            "scrub": self.start_scrub,
            "replace": self.start_replace,
            "add-spare": self.start_add_spare,
        }

    def spares(self) -> list[str]:
        return [str(p) for p in load_spares(self.vol.voldir)]

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind, job in self.jobs.items():
            job = dict(job)
            if job["state"] == "running" and kind in PROGRESS_KEY:
                done, total = self.vol.integrity.progress.get(PROGRESS_KEY[kind], (0, 0))
                job["progress"] = {"done": done, "total": total}
            out[kind] = job
        return out

    def _new(self, kind: str) -> dict[str, Any]:
        if self.vol.readonly:
            raise KeyError(f"{kind} needs a read-write volume")
        running = self.jobs.get(kind)
        if running is not None and running["state"] == "running":
            raise KeyError(f"a {kind} is already running (job {running['id']})")
        job: dict[str, Any] = {
            "id": self._next,
            "kind": kind,
            "state": "running",
            "started": time.time(),
            "finished": None,
            "progress": {"done": 0, "total": 0},
            "summary": None,
            "result": None,
            "error": None,
        }
        self._next += 1
        self.jobs[kind] = job
        return job

    def start_scrub(self, req: dict[str, Any]) -> dict[str, Any]:
        rate = req.get("rate", DEFAULT_SCRUB_RATE)
        if rate is not None and (not isinstance(rate, int | float) or rate <= 0):
            raise KeyError("rate must be a positive number of bytes per second")
        job = self._new("scrub")
        self.nursery.start_soon(self._run, job, self._scrub(job, rate), name="scrub")
        return {"id": job["id"], "kind": "scrub"}

    def start_replace(self, req: dict[str, Any]) -> dict[str, Any]:
        old, new = req.get("old"), req.get("new")
        if not isinstance(old, str) or not isinstance(new, str) or not new:
            raise KeyError("replace needs 'old' (index or path) and 'new' (a path)")
        workers = req.get("workers", 4)
        if not isinstance(workers, int) or not 1 <= workers <= 64:
            raise KeyError("workers must be 1..64")
        try:
            resolve_member(self.vol, old)
        except FusenasError as exc:
            raise KeyError(str(exc)) from None
        job = self._new("replace")
        self.nursery.start_soon(
            self._run, job, self._replace(job, old, Path(new), workers), name="replace"
        )
        return {"id": job["id"], "kind": "replace"}

    def start_add_spare(self, req: dict[str, Any]) -> dict[str, Any]:
        path = req.get("path")
        if not isinstance(path, str) or not path:
            raise KeyError("add-spare needs 'path'")
        try:
            check_spare(self.vol, Path(path))
        except FusenasError as exc:
            raise KeyError(str(exc)) from None
        job = self._new("add-spare")
        self.nursery.start_soon(self._run, job, self._add_spare(job, Path(path)), name="add-spare")
        return {"id": job["id"], "kind": "add-spare"}

    async def _run(self, job: dict[str, Any], body: Any) -> None:
        key = PROGRESS_KEY.get(job["kind"])
        if key is not None:
            self.vol.integrity.progress[key] = (0, 0)
        try:
            await body
        except FusenasError as exc:
            job.update(state="failed", error=str(exc))
            log.error("%s failed: %s", job["kind"], exc)
        except Exception as exc:  # reported in the job, the daemon goes on
            log.exception("%s failed", job["kind"])
            job.update(state="failed", error=f"{type(exc).__name__}: {exc}")
        else:
            job["state"] = "done"
        finally:
            if key is not None:
                done, total = self.vol.integrity.progress.pop(key, (0, 0))
                job["progress"] = {"done": done, "total": total}
            job["finished"] = time.time()

    async def _scrub(self, job: dict[str, Any], rate: float | None) -> None:
        log.info("online scrub started (rate %s)", rate)
        report = await scrub_volume(self.vol, rate=rate, online=True)
        job["summary"] = report.summary()
        job["result"] = {
            "stripes": report.stripes,
            "bytes_checked": report.bytes_checked,
            "blocks_checked": report.blocks_checked,
            "checksum_mismatches": report.checksum_mismatches,
            "parity_mismatches": report.parity_mismatches,
            "repaired": report.repaired,
            "unrecoverable": report.unrecoverable,
            "problems": report.problems[:50],
        }
        log.info("online scrub: %s", job["summary"])

    async def _replace(self, job: dict[str, Any], old: str, new: Path, workers: int) -> None:
        mgr = self.vol.spare_manager
        provider = mgr.provider if mgr is not None else FILES
        stats = await replace(self.vol, old, new, provider=provider, workers=workers)
        job["summary"] = (
            f"rebuilt {stats.bytes} bytes per member in {stats.seconds:.1f} s "
            f"({stats.mb_per_s:.1f} MB/s, {stats.steals} steals)"
        )
        job["result"] = {
            "stripes": stats.stripes,
            "bytes": stats.bytes,
            "seconds": stats.seconds,
            "mb_per_s": stats.mb_per_s,
            "steals": stats.steals,
        }

    async def _add_spare(self, job: dict[str, Any], path: Path) -> None:
        path = await add_spare(self.vol, path)
        job["summary"] = f"{path} is a spare of {self.vol.voldir}"
        job["result"] = {"path": str(path)}


async def run_job(
    voldir: Path, kind: str, *, quiet: bool = False, poll: float = 0.5, **fields: Any
) -> dict[str, Any]:
    """Client side: start job ``kind`` in the daemon of ``voldir``, show a progress bar fed
    by ``status`` (``integrity.progress``) until the job is no longer running, and return the
    final job. ``ControlError`` if the daemon refuses or cannot be reached."""
    started = await request(voldir, kind, **fields)
    console = Console(stderr=True)
    with byte_progress(console, quiet=quiet) as bar:
        task = bar.add_task(kind, total=None)
        while True:
            status = await request(voldir, "status")
            job = status.get("jobs", {}).get(kind)
            if job is None or job["id"] != started["id"]:
                raise ControlError(f"the daemon lost track of the {kind} job")
            key = PROGRESS_KEY.get(kind)
            prog = status.get("integrity", {}).get("progress", {}).get(key) if key else None
            if job["state"] == "running" and prog and prog["total"]:
                bar.update(task, completed=prog["done"], total=prog["total"])
            if job["state"] != "running":
                p = job["progress"]
                if p["total"]:
                    bar.update(task, completed=p["done"], total=p["total"])
                final: dict[str, Any] = job
                return final
            await trio.sleep(poll)
