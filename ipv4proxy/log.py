"""Logging set-up and the structured event line.

Every event worth a line (a tunnel's end, a refusal) is logged through `event()`: a name
plus fields. The text form is ``NAME key=value ...`` (`format_fields`), so a line greps and
parses the same way every time; the fields also ride on the record (``record.fields``) for
structured formatters. Lifecycle lines (listening, ready, draining, reloaded, stopped) go
through `lifecycle()`: a sentence for people, plus the event name and fields.

A text record is exactly one line, whatever a client sent: values are double-quoted when
empty or holding a space, ``"``, ``=`` or a backslash, and every character a terminal or a
log shipper could take as a line break or a command (C0, DEL, C1, U+2028/U+2029, format
characters, lone surrogates) is written as a backslash escape, in every field, in other
messages and in tracebacks (`TextFormatter`). `unescape` and `parse_fields` read values
back exactly (issue 12: a SOCKS host holding ``\n<access line>`` forged a line).

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
import unicodedata
from collections.abc import Mapping

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "escape",
    "event",
    "format_fields",
    "format_value",
    "lean_records",
    "lifecycle",
    "parse_fields",
    "reload_refused",
    "setup_logging",
    "unescape",
]

LEVELS = ("debug", "info", "warning", "error")

# What a text line may not carry raw: anything a terminal or a log shipper could take as a
# line break or a command. C0 (NUL, CR, LF, VT, FF, ESC, FS/GS/RS ...), DEL and C1 (NEL,
# CSI ...) are category Cc; U+2028/U+2029 are Zl/Zp; Cf are the invisible format characters
# (bidi overrides that reorder what a terminal shows, zero-width spaces, the BOM); Cs are
# lone surrogates (bytes decoded with surrogateescape), which would make the stream's
# UTF-8 encoder fail and the line be lost.
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
_SIMPLE = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# ASCII fast path (nearly every value): what must be escaped, and what must be quoted.
_ASCII_ESCAPE = re.compile(r'[\x00-\x1f\x7f"\\]')
_ASCII_MESSAGE_ESCAPE = re.compile(r"[\x00-\x1f\x7f\\]")
_ASCII_QUOTE = re.compile(r'[\x00-\x20\x7f"=\\]')
_UNESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8})|(.))", re.DOTALL)
_UNESCAPE_SIMPLE = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
_FIELD = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _escape_char(char: str) -> str:
    simple = _SIMPLE.get(char)
    if simple is not None:
        return simple
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str, *, quote: bool = True) -> str:
    """``text`` with every unsafe character written as a Python-style escape.

    Escaped: the backslash itself, ``"`` (unless ``quote`` is false, for a message that is
    not inside quotes), and every character of category Cc (C0, DEL, C1), Cf, Cs, Zl or Zp:
    ``\\n`` ``\\r`` ``\\t``, else ``\\xHH``, ``\\uHHHH`` or ``\\UHHHHHHHH``. The result holds
    no line break of any kind, so a line stays one line; `unescape` reverses it exactly.
    """
    if text.isascii():
        pattern = _ASCII_ESCAPE if quote else _ASCII_MESSAGE_ESCAPE
        if pattern.search(text) is None:
            return text
        return pattern.sub(lambda match: _escape_char(match[0]), text)
    return "".join(
        _escape_char(char)
        if char == "\\" or (quote and char == '"') or (char > "~" and _unsafe(char)) or char < " "
        else char
        for char in text
    )


def unescape(text: str) -> str:
    """The inverse of `escape`: ``unescape(escape(x)) == x`` for every string ``x``.

    Raises ValueError for a backslash escape `escape` never writes.
    """

    def one(match: re.Match[str]) -> str:
        code = match[1] or match[2] or match[3]
        if code is not None:
            return chr(int(code, 16))
        simple = _UNESCAPE_SIMPLE.get(match[4])
        if simple is None:
            raise ValueError(f"unknown escape \\{match[4]!r} in a log value")
        return simple

    if "\\" not in text:
        return text
    if text.endswith("\\") and (len(text) - len(text.rstrip("\\"))) % 2:
        raise ValueError("a log value ends inside an escape")
    return _UNESCAPE.sub(one, text)


def _needs_quotes(text: str) -> bool:
    if text.isascii():
        return not text or _ASCII_QUOTE.search(text) is not None
    return any(
        char in '"=\\' or char.isspace() or char < " " or (char > "~" and _unsafe(char))
        for char in text
    )


def format_value(value: object) -> str:
    """One value as the text format writes it: bare when it is plain, else double-quoted and
    `escape`-d. Quoted: an empty value, and one holding a space (any Unicode space), ``"``,
    ``=``, a backslash or an unsafe character. A float is shown with one decimal."""
    text = f"{value:.1f}" if isinstance(value, float) else str(value)
    if _needs_quotes(text):
        return '"' + escape(text) + '"'
    return text


def format_fields(fields: Mapping[str, object]) -> str:
    """Render ``key=value`` pairs separated by one space (`format_value` for each value).

    Whatever the values hold, the result is one line of printable characters;
    `parse_fields` reads it back.
    """
    parts = []
    search = _ASCII_QUOTE.search
    for key, value in fields.items():
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        # Inline fast path of `format_value` (one access line a tunnel): plain ASCII.
        if not (text and text.isascii() and search(text) is None):
            text = format_value(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def parse_fields(text: str) -> dict[str, str]:
    """The ``key=value`` fields of a text line (or of `format_fields` output), values as the
    strings that were logged: quoted ones are unquoted and `unescape`-d. Words without ``=``
    (the time, level, logger and event name) are skipped.

    Raises ValueError for a quoted value holding an escape `escape` never writes.
    """
    fields: dict[str, str] = {}
    for key, raw in _FIELD.findall(text):
        fields[key] = unescape(raw[1:-1]) if raw.startswith('"') else raw
    return fields


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


def reload_refused(logger: logging.Logger, error: Exception) -> None:
    """The one line of a SIGHUP whose configuration is refused (one process or a pod)."""
    message = f"reload refused, the running configuration stays: {error}"
    lifecycle(logger, "reload_refused", message, logging.ERROR, reason=str(error))


def utc_time(record: logging.LogRecord) -> str:
    """The record's time in UTC, ISO 8601 with milliseconds: ``2026-12-03T07:03:43.709Z``
    (both formats: a line reads the same on every host and in every time zone)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line; an event's fields sit beside ``event`` at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": utc_time(record),
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


class TextFormatter(logging.Formatter):
    """``time level logger message``, one line a record whatever the record holds.

    An event's message is its name and `format_fields` (already escaped); any other message
    is `escape`-d without quoting (backslashes doubled, control characters written as
    escapes). A traceback or stack is not printed on lines of its own but appended as
    ``exception="..."`` / ``stack="..."``, quoted and escaped like a field value: a record
    is exactly one line, so nobody can forge a line, and `parse_fields` gives the traceback
    back with its newlines.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if getattr(record, "event", None) is None or getattr(record, "with_message", False):
            message = escape(message, quote=False)
        line = f"{utc_time(record)} {record.levelname} {escape(record.name, quote=False)} {message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += " exception=" + format_value(record.exc_text)
        if record.stack_info:
            line += " stack=" + format_value(self.formatStack(record.stack_info))
        return line


def lean_records() -> None:
    """Stop filling in record attributes no formatter here shows, each paid on every line
    (the access line is one per tunnel): the caller's frame (a stack walk), the thread, the
    process and its name. These are the switches of the logging HOWTO's "Optimization"
    section. Process-wide, so only the proxy's own entry point calls it."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def _not_a_tunnel_end(record: logging.LogRecord) -> bool:
    """False for the access line of a tunnel that ran (it has a duration); refusals and
    everything else pass."""
    fields = getattr(record, "fields", None)
    return not (getattr(record, "event", None) == "tunnel" and fields and "duration_ms" in fields)


def setup_logging(level: str, format: str = "text", *, access: bool = True) -> None:
    """Send log lines to stderr, as text (``time level logger message``) or JSON lines;
    without ``access``, the line of each tunnel that ran is left out (refusals stay)."""
    handler = logging.StreamHandler(sys.stderr)
    if not access:
        handler.addFilter(_not_a_tunnel_end)
    if format == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = TextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
