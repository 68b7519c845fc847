"""Logging set-up and the structured event line.

Every event worth a line (listening, a tunnel's end, a refusal) is logged through
`event()`: a name plus fields. The text form is ``NAME key=value ...``, values quoted when
they hold spaces, so a line greps and parses the same way every time; the fields also ride
on the record (``record.fields``) for structured formatters.

Rules: nothing here ever receives a credential; callers pass only what may be shown.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

__all__ = ["event", "format_fields", "setup_logging"]

LEVELS = ("debug", "info", "warning", "error")


def format_fields(fields: Mapping[str, object]) -> str:
    """Render ``key=value`` pairs; a value with a space, quote or ``=`` is double-quoted."""
    parts = []
    for key, value in fields.items():
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        if not text or any(c in text for c in ' "=\\'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one structured event line (cheap when the level is off)."""
    if logger.isEnabledFor(level):
        logger.log(
            level, "%s %s", name, format_fields(fields), extra={"event": name, "fields": fields}
        )


def setup_logging(level: str) -> None:
    """Send log lines to stderr as ``time level logger message``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
