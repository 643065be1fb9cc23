"""Structured log lines: ``TIME LEVEL EVENT key=value ... msg="text"``.

One line per record, logfmt style, so that ``grep event=slow_io`` and log shippers both work::

    2026-01-02T10:11:12.345Z warning slow_io device=member-2.img op=write seconds=1.532 msg="..."

* ``TIME`` is UTC with milliseconds; ``LEVEL`` is lower case.
* ``EVENT`` is a short snake_case name given with :func:`event`; records logged the plain way
  (``log.info("opening volume %s", path)``) get their logger's name without the ``fusenas.``
  prefix (``mount``), so every line has one.
* Fields come from :func:`event`; a value with spaces, quotes, ``=`` or nothing in it is written
  as a JSON string. ``msg`` (the human sentence) is always last, always quoted.
* A traceback follows its line, each of its lines indented by two spaces.

Where the lines go: ``VOLUME-DIR/fusenas.log`` when the daemon runs in the background (its
stderr is that file, so library noise and tracebacks land there too), stderr with ``-f``.

Hot paths never format anything: warnings that an I/O path can trigger (slow member I/O,
journal backpressure) go through a :class:`RateLimiter`, which lets one line through per key
and interval and counts the ones it held back (the next line reports that count).
"""

from __future__ import annotations

import json
import logging
import time
from typing import IO, Any

__all__ = ["RateLimiter", "StructuredFormatter", "event", "setup"]

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:+,@[]")


def _value(v: object) -> str:
    if isinstance(v, float):
        text = f"{v:.6g}"
    elif isinstance(v, bool):
        text = "true" if v else "false"
    else:
        text = str(v)
    if text and all(c in _PLAIN for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


class StructuredFormatter(logging.Formatter):
    """Formats a record as one logfmt line (see the module docstring)."""

    def __init__(self, *, pid: bool = False) -> None:
        super().__init__()
        self._pid = pid

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        ms = int(record.msecs)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms:03d}Z"
        name = getattr(record, "event", None) or record.name.removeprefix("fusenas.")
        parts = [stamp, record.levelname.lower(), name]
        if self._pid:
            parts.append(f"pid={record.process}")
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        parts.extend(f"{k}={_value(v)}" for k, v in fields.items())
        parts.append("msg=" + json.dumps(record.getMessage(), ensure_ascii=False))
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + "\n".join("  " + x for x in record.exc_text.splitlines())
        if record.stack_info:
            line += "\n" + "\n".join("  " + x for x in record.stack_info.splitlines())
        return line


def setup(level: int, stream: IO[str], *, pid: bool = False) -> None:
    """Send every record of ``level`` and above to ``stream`` as structured lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(StructuredFormatter(pid=pid))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def event(logger: logging.Logger, level: int, name: str, msg: str, **fields: object) -> None:
    """Log ``msg`` as event ``name`` with ``fields`` (written as ``key=value``)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", msg, extra={"event": name, "fields": fields})


class RateLimiter:
    """At most one line per key every ``interval`` seconds.

    ``allow(key)`` returns ``None`` when the line must be dropped, otherwise the number of lines
    dropped for that key since the last one let through (report it: ``suppressed=N``). Not
    thread-safe; call it from the trio thread. ``clock`` is injectable for tests.
    """

    def __init__(self, interval: float, clock: Any = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[object, float] = {}
        self._dropped: dict[object, int] = {}

    def allow(self, key: object) -> int | None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._dropped.pop(key, 0)
