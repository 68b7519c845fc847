"""Logging set-up and the structured event line.

Every event worth a line (a tunnel's end, a refusal) is logged through `event()`: a name
plus fields. The text form is ``NAME key=value ...``, values quoted when they hold spaces,
so a line greps and parses the same way every time; the fields also ride on the record
(``record.fields``) for structured formatters. Lifecycle lines (listening, ready, draining,
reloaded, stopped) go through `lifecycle()`: a sentence for people, plus the event name
and fields.

Two formats (``log.format``): ``text`` (``time level logger message``) and ``json`` (one
object a line: ``time``, ``level``, ``logger``, ``event`` and its fields, and ``message``
for lines that are not just their fields).

Rules: nothing here ever receives a credential; callers pass only what may be shown.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping

__all__ = [
    "JsonFormatter",
    "event",
    "format_fields",
    "lean_records",
    "lifecycle",
    "setup_logging",
]

LEVELS = ("debug", "info", "warning", "error")


# A value holding one of these is quoted (one regex search: the access line has 11 fields).
_QUOTED = re.compile(r'[ "=\\]')


def format_fields(fields: Mapping[str, object]) -> str:
    """Render ``key=value`` pairs; a value with a space, quote or ``=`` is double-quoted."""
    parts = []
    for key, value in fields.items():
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        if not text or _QUOTED.search(text) is not None:
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one structured event line (cheap when the level is off)."""
    if logger.isEnabledFor(level):
        logger.log(
            level, "%s %s", name, format_fields(fields), extra={"event": name, "fields": fields}
        )


def lifecycle(
    logger: logging.Logger,
    name: str,
    message: str,
    level: int = logging.INFO,
    **fields: object,
) -> None:
    """Log a lifecycle line: ``message`` for people, ``name`` and ``fields`` for JSON."""
    logger.log(level, "%s", message, extra={"event": name, "fields": fields, "with_message": True})


class JsonFormatter(logging.Formatter):
    """One JSON object a line; an event's fields sit beside ``event`` at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        name = getattr(record, "event", None)
        fields = getattr(record, "fields", None)
        if name is not None:
            line["event"] = name
        if name is None or getattr(record, "with_message", False):
            line["message"] = record.getMessage()
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                line.setdefault(str(key), value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def lean_records() -> None:
    """Stop filling in record attributes no formatter here shows, each paid on every line
    (the access line is one per tunnel): the caller's frame (a stack walk), the thread, the
    process and its name. These are the switches of the logging HOWTO's "Optimization"
    section. Process-wide, so only the proxy's own entry point calls it."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def setup_logging(level: str, format: str = "text") -> None:
    """Send log lines to stderr, as text (``time level logger message``) or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
