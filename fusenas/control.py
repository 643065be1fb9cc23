"""The control socket: ``VOLUME-DIR/control.sock``, how ``fusenas status`` asks the daemon.

Protocol (version 1): one connection, one request, one reply, each a single line of JSON::

    → {"cmd": "status"}
    ← {"ok": true, "version": 1, "result": {... the live status report, docs/status.md ...}}
    ← {"ok": false, "version": 1, "error": "unknown command 'x'"}

Commands: ``status`` (the live report), ``ping`` (``{"pid": N}``). A request longer than
64 KiB or not complete within 5 s is dropped.

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from fusenas.errors import FusenasError
from fusenas.voldir import SOCKET_NAME

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_REQUEST = 64 << 10
REQUEST_TIMEOUT = 5.0
_SUN_PATH_MAX = 107
_UCRED = struct.Struct("3i")  # pid, uid, gid

Handler = Callable[[dict[str, Any]], dict[str, Any]]


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


def dispatcher(commands: dict[str, Callable[[], dict[str, Any]]]) -> Handler:
    """A handler that runs ``commands[request["cmd"]]()``."""

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        fn = commands.get(cmd) if isinstance(cmd, str) else None
        if fn is None:
            raise KeyError(f"unknown command {cmd!r}")
        return fn()

    return handle


class ControlError(FusenasError):
    """The daemon could not be asked (no socket, refused, denied) or answered an error."""


async def request(voldir: Path, cmd: str, *, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """Send ``{"cmd": cmd}`` to the daemon of ``voldir`` and return its ``result``."""
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
            await stream.send_all(json.dumps({"cmd": cmd}).encode() + b"\n")
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
