"""Text log lines cannot be forged: every value is escaped, quoted as needed, and read back.

Tables pin the escapes; hypothesis checks that any text or bytes, in any field a client
controls (a SOCKS5 domain, a SOCKS4a host, an HTTP CONNECT target, the reason naming them,
a logged message or a traceback), gives exactly one line, and that `unescape` and
`parse_fields` give back exactly what was logged.
"""

from __future__ import annotations

import ast
import io
import logging
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipv4proxy.log import (
    TextFormatter,
    escape,
    event,
    format_fields,
    format_value,
    parse_fields,
    unescape,
)
from ipv4proxy.protocols.events import Refused
from ipv4proxy.protocols.http import HttpHandshake
from ipv4proxy.protocols.socks import Socks4Handshake, Socks5Handshake

# Every character some reader takes as the end of a line: str.splitlines() knows them all
# (LF, VT, FF, CR, FS, GS, RS, NEL, LS, PS); a byte-oriented reader splits on LF (and CR).
LINE_BREAKS = "\n\x0b\x0c\r\x1c\x1d\x1e\x85\u2028\u2029"

ESCAPES = [
    ("", ""),
    ("plain", "plain"),
    ("\\", "\\\\"),
    ('"', '\\"'),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\t", "\\t"),
    ("\x00", "\\x00"),
    ("\x1b[2J", "\\x1b[2J"),
    ("\x7f", "\\x7f"),
    ("\x85", "\\x85"),  # NEL (C1)
    ("\x9b", "\\x9b"),  # CSI (C1)
    ("\u2028", "\\u2028"),  # LINE SEPARATOR
    ("\u2029", "\\u2029"),  # PARAGRAPH SEPARATOR
    ("\u202e", "\\u202e"),  # RIGHT-TO-LEFT OVERRIDE (Cf)
    ("\u200b", "\\u200b"),  # ZERO WIDTH SPACE (Cf)
    ("\ufeff", "\\ufeff"),  # BOM (Cf)
    ("\udcff", "\\udcff"),  # a lone surrogate (surrogateescape)
    ("\U000e0001", "\\U000e0001"),  # LANGUAGE TAG (Cf, astral)
    ("é ü \u00a0 ✓", "é ü \u00a0 ✓"),  # printable non-ASCII stays as it is
]


@pytest.mark.parametrize(("raw", "escaped"), ESCAPES)
def test_escape_table(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped
    assert unescape(escaped) == raw


def test_a_message_keeps_its_quotes() -> None:
    assert escape('say "hi"\n', quote=False) == 'say "hi"\\n'
    assert unescape('say "hi"\\n') == 'say "hi"\n'


VALUES = [
    ("web.whatsapp.com:443", "web.whatsapp.com:443"),
    ("", '""'),
    ("two words", '"two words"'),
    ("a=b", '"a=b"'),
    ('q"q', '"q\\"q"'),
    ("back\\slash", '"back\\\\slash"'),
    ("nbsp\u00a0here", '"nbsp\u00a0here"'),  # any Unicode space is quoted
    ("ideographic\u3000space", '"ideographic\u3000space"'),
    ("x\ny", '"x\\ny"'),
    ("é", "é"),
    (0, "0"),
    (12.345, "12.3"),
]


@pytest.mark.parametrize(("value", "shown"), VALUES)
def test_value_quoting_table(value: object, shown: str) -> None:
    assert format_value(value) == shown
    expected = f"{value:.1f}" if isinstance(value, float) else str(value)
    assert parse_fields(f"k={shown}") == {"k": expected}


@pytest.mark.parametrize("bad", ["\\", "a\\", "\\q", "\\x4", "\\u12", "\\xZZ"])
def test_unescape_refuses_what_escape_never_writes(bad: str) -> None:
    with pytest.raises(ValueError, match="escape"):
        unescape(bad)


def test_parse_fields_skips_the_words_before_the_fields() -> None:
    line = '2026-12-03T06:00:00.000Z INFO ipv4proxy.access tunnel client=127.0.0.1:1 reason="a b"'
    assert parse_fields(line) == {"client": "127.0.0.1:1", "reason": "a b"}


# The forging shapes of issue 12: a line break, a whole access line, a terminal escape.
FORGED = (
    "x\n2026-12-03T06:00:00.000Z INFO ipv4proxy.access tunnel client=1.2.3.4:1 outcome=ok\x1b[2J"
)


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")


def _single_line(text: str) -> None:
    """``text`` is one record of a text log: no line break of any kind, encodable."""
    assert text.endswith("\n")
    body = text[:-1]
    assert not any(char in LINE_BREAKS for char in body), body
    assert "\x1b" not in body
    assert "\x00" not in body
    assert body.encode("utf-8").count(b"\n") == 0


def _text_logger() -> tuple[logging.Logger, io.StringIO]:
    """A logger that writes through the text formatter into a buffer (not propagated).

    Built once for the module (hypothesis runs a test body many times per fixture)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("test.log_escape")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


LOGGER, STREAM = _text_logger()


def _fresh() -> str:
    """What was logged since the last call."""
    text = STREAM.getvalue()
    STREAM.seek(0)
    STREAM.truncate()
    return text


@given(st.text())
def test_escape_round_trips_any_text(text: str) -> None:
    for quote in (True, False):
        escaped = escape(text, quote=quote)
        assert unescape(escaped) == text
        assert not any(_unsafe(char) for char in escaped)  # no control, format, separator
        escaped.encode("utf-8")  # no lone surrogate left


@given(st.text())
def test_python_reads_the_escapes_too(text: str) -> None:
    """docs/operations.md's alternative: the escapes are Python's own."""
    assert ast.literal_eval('"' + escape(text) + '"') == text


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), st.text()))
def test_any_fields_are_one_line_and_read_back(fields: dict[str, str]) -> None:
    line = format_fields(fields)
    assert len(line.splitlines()) <= 1
    line.encode("utf-8")
    assert parse_fields(line) == fields


@given(st.text(), st.text())
def test_an_event_with_any_values_is_one_line(target: str, reason: str) -> None:
    logger = LOGGER
    _fresh()
    event(logger, "tunnel", client="127.0.0.1:1", target=target, outcome="malformed", reason=reason)
    line = _fresh()
    _single_line(line)
    fields = parse_fields(line)
    assert (fields["target"], fields["reason"], fields["outcome"]) == (target, reason, "malformed")


@given(st.text())
def test_a_message_and_a_traceback_with_any_text_are_one_line(text: str) -> None:
    logger = LOGGER
    _fresh()
    logger.warning("setting up %s failed", text)
    line = _fresh()
    _single_line(line)
    assert unescape(line.split(" ", 3)[3][:-1]) == f"setting up {text} failed"
    try:
        raise ValueError(f"<{text}>")
    except ValueError:
        logger.exception("failed")
    line = _fresh()
    _single_line(line)
    traceback = parse_fields(line)["exception"]
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert traceback.endswith(f"ValueError: <{text}>")


Handshake = Socks5Handshake | Socks4Handshake | HttpHandshake


def _log_refusal(logger: logging.Logger, handshake: Handshake, data: bytes) -> None:
    """What the server does: feed the client's bytes, and log the refusal as its access line."""
    events = handshake.feed(data)
    if events and isinstance(events[-1], Refused):
        error = events[-1].error
        outcome, reason = error.failure.cause, str(error)
        event(logger, "tunnel", target=handshake.target, outcome=outcome, reason=reason)
    else:
        event(logger, "tunnel", target=handshake.target, outcome="ok")


CLIENT_BYTES = st.one_of(st.binary(max_size=255), st.just(FORGED.encode()))


@given(CLIENT_BYTES)
def test_any_socks5_domain_gives_one_line(domain: bytes) -> None:
    logger = LOGGER
    _fresh()
    request = b"\x05\x01\x00\x05\x01\x00\x03" + bytes((len(domain),)) + domain + b"\x01\xbb"
    _log_refusal(logger, Socks5Handshake(), request)
    line = _fresh()
    _single_line(line)
    assert parse_fields(line)["target"] in ("-", domain.decode("latin-1") + ":443")


@given(CLIENT_BYTES, st.binary(max_size=64))
def test_any_socks4a_host_gives_one_line(host: bytes, user: bytes) -> None:
    logger = LOGGER
    _fresh()
    host, user = host.replace(b"\x00", b""), user.replace(b"\x00", b"")
    request = b"\x04\x01\x01\xbb\x00\x00\x00\x01" + user + b"\x00" + host + b"\x00"
    _log_refusal(logger, Socks4Handshake(), request)
    line = _fresh()
    _single_line(line)
    assert parse_fields(line)["target"] == host.decode("latin-1") + ":443"


@given(CLIENT_BYTES)
def test_any_connect_target_gives_one_line(target: bytes) -> None:
    logger = LOGGER
    _fresh()
    _log_refusal(logger, HttpHandshake(), b"CONNECT " + target + b" HTTP/1.1\r\n\r\n")
    _single_line(_fresh())


@pytest.mark.parametrize(
    ("handshake", "request_bytes"),
    [
        (
            Socks5Handshake(),
            b"\x05\x01\x00\x05\x01\x00\x03" + bytes((len(FORGED),)) + FORGED.encode() + b"\x01\xbb",
        ),
        (Socks4Handshake(), b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00" + FORGED.encode() + b"\x00"),
    ],
    ids=["socks5-domain", "socks4a-host"],
)
def test_the_issue_forging_shapes(handshake: Handshake, request_bytes: bytes) -> None:
    logger = LOGGER
    _fresh()
    _log_refusal(logger, handshake, request_bytes)
    line = _fresh()
    _single_line(line)
    fields = parse_fields(line)
    assert fields["outcome"] == "MALFORMED"
    assert fields["target"] == FORGED + ":443"
