"""Log lines: the JSON form carries the event and its fields; lifecycle lines in both forms."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest

from ipv4proxy.log import JsonFormatter, TextFormatter, event, lifecycle, setup_logging


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """What was written to stderr so far; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield lambda: capsys.readouterr().err
    root.handlers[:], root.level = saved[0], saved[1]


def test_json_event_line_carries_name_and_fields(stderr: Callable[[], str]) -> None:
    setup_logging("info", "json")
    event(logging.getLogger("ipv4proxy.access"), "tunnel", client="127.0.0.1:1", sent=5)
    line = json.loads(stderr())
    assert line["event"] == "tunnel"
    assert line["logger"] == "ipv4proxy.access"
    assert line["level"] == "info"
    assert (line["client"], line["sent"]) == ("127.0.0.1:1", 5)
    assert "message" not in line  # the fields are the line
    assert line["time"].endswith("Z")


def test_json_lifecycle_line_keeps_its_sentence(stderr: Callable[[], str]) -> None:
    setup_logging("info", "json")
    lifecycle(logging.getLogger("ipv4proxy"), "draining", "draining: 2 open", open=2)
    line = json.loads(stderr())
    assert (line["event"], line["message"], line["open"]) == ("draining", "draining: 2 open", 2)


def test_json_plain_line_and_level_filter(stderr: Callable[[], str]) -> None:
    setup_logging("warning", "json")
    logging.getLogger("ipv4proxy").info("not shown")
    logging.getLogger("ipv4proxy").warning("shown %s", "here")
    lines = [json.loads(text) for text in stderr().splitlines()]
    assert [line["message"] for line in lines] == ["shown here"]


def test_text_lines(stderr: Callable[[], str]) -> None:
    setup_logging("info", "text")
    lifecycle(logging.getLogger("ipv4proxy"), "ready", "ready")
    event(logging.getLogger("ipv4proxy.access"), "tunnel", reason="two words")
    first, second = stderr().splitlines()
    assert first.endswith(" INFO ipv4proxy ready")
    assert second.endswith(' INFO ipv4proxy.access tunnel reason="two words"')


def test_text_and_json_lines_are_stamped_in_utc() -> None:
    record = logging.LogRecord("ipv4proxy", logging.INFO, "x", 1, "ready", None, None)
    record.created, record.msecs = 1_780_470_223.709, 709.0  # 2026-06-03 07:03:43.709 UTC
    assert TextFormatter().format(record) == "2026-06-03T07:03:43.709Z INFO ipv4proxy ready"
    assert json.loads(JsonFormatter().format(record))["time"] == "2026-06-03T07:03:43.709Z"
