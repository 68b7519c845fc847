"""The protocol layer stays pure: no I/O imports, no exception but ProtocolError, and the
same answer however the client's bytes are cut into chunks."""

from __future__ import annotations

import ast
import dataclasses
import itertools
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ipv4proxy.protocols
from ipv4proxy.errors import Failure, ProtocolError
from ipv4proxy.protocols import (
    Authenticate,
    Connect,
    Event,
    Forward,
    Handshake,
    HttpHandshake,
    Refused,
    Send,
    Socks4Handshake,
    Socks5Handshake,
    new_handshake,
)

PACKAGE = Path(ipv4proxy.protocols.__file__).parent
FORBIDDEN = {"asyncio", "socket", "selectors", "ssl", "trio", "anyio", "uvloop"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_io_imports(path: Path) -> None:
    roots = {name.partition(".")[0] for name in imported_modules(path)}
    assert not roots & FORBIDDEN, f"{path.name} imports {roots & FORBIDDEN}"


def test_the_check_sees_every_module() -> None:
    names = {p.name for p in PACKAGE.glob("*.py")}
    assert {"__init__.py", "events.py", "handshake.py", "host.py", "http.py", "socks.py"} <= names


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (0x05, Socks5Handshake),
        (0x04, Socks4Handshake),
        (ord("C"), HttpHandshake),
        (0, HttpHandshake),
    ],
)
def test_new_handshake_dispatch(first: int, kind: type) -> None:
    assert isinstance(new_handshake(first), kind)


def test_new_handshake_options() -> None:
    socks5 = new_handshake(5, require_auth=True)
    assert socks5.feed(b"\x05\x02\x00\x02") == [Send(b"\x05\x02")]
    http = new_handshake(ord("G"), max_head=10)
    [refused] = http.feed(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
    assert isinstance(refused, Refused)
    assert refused.error.failure is Failure.HEAD_TOO_LARGE


# --- a client, fed in chunks -----------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What the client sees and what the session is asked to do."""

    client_bytes: bytes  # Send data, auth replies, and the error reply if any
    events: list[Event]  # Authenticate / Connect / Forward, early_data merged
    failure: Failure | None


def run(data: bytes, cuts: list[int]) -> Outcome:
    """Feed ``data`` cut at ``cuts`` as a session would, accepting any credentials."""
    handshake: Handshake = new_handshake(data[0] if data else 0, max_head=512)
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    out = Outcome(b"", [], None)
    for index, chunk in enumerate(chunks):
        events = handshake.feed(chunk)
        while events and isinstance(events[-1], Authenticate):
            out.events.append(events.pop())
            out.client_bytes += b"".join(e.data for e in events if isinstance(e, Send))
            events = handshake.authenticated()
        for event in events:
            if isinstance(event, Send):
                out.client_bytes += event.data
            elif isinstance(event, Refused):
                out.client_bytes += handshake.error_reply(event.error)
                out.failure = event.error.failure
                return out
            elif isinstance(event, Connect | Forward):
                rest = b"".join(chunks[index + 1 :])
                out.events.append(dataclasses.replace(event, early_data=event.early_data + rest))
                return out
            else:
                raise AssertionError(f"unexpected event {event!r}")
    return out


def s5(host: bytes, port: int) -> bytes:
    return b"\x05\x01\x00\x03" + bytes((len(host),)) + host + struct.pack(">H", port)


SAMPLES = [
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n\x16\x03\x01",
    b"GET http://example.com/a?b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nbody",
    b"POST http://a.example:8080/ HTTP/1.1\r\nContent-Length: 3\r\nProxy-Authorization: "
    b"Basic dTpw\r\n\r\nabc",
    b"GET http://example.com/ HTTP/1.1\nHost: x\n\n",
    b"\x05\x01\x00" + s5(b"example.com", 443) + b"early",
    b"\x05\x02\x00\x02" + b"\x05\x01\x00\x01\x01\x02\x03\x04\x00\x50",
    b"\x05\x01\x02\x01\x01u\x01p" + s5(b"example.com", 443) + b"early",
    b"\x04\x01\x00\x50\x01\x02\x03\x04bob\x00tail",
    b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00example.com\x00tail",
]


@st.composite
def client_input(draw: st.DrawFn) -> bytes:
    """Valid requests, requests with a byte changed or cut short, and random bytes."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.binary(min_size=1, max_size=600))
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    if choice >= 2:
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if choice == 3:
        data = data[: draw(st.integers(1, len(data)))]
    return bytes(data) + draw(st.binary(max_size=20))


@settings(max_examples=500)
@given(client_input(), st.lists(st.integers(0, 700), max_size=10))
def test_chunking_does_not_change_the_outcome(data: bytes, cuts: list[int]) -> None:
    whole = run(data, [])
    assert run(data, cuts) == whole
    assert run(data, list(range(len(data)))) == whole


@settings(max_examples=500)
@given(st.binary(max_size=700), st.booleans())
def test_any_bytes_give_events_or_a_final_refusal(data: bytes, require_auth: bool) -> None:
    handshakes: tuple[Handshake, ...] = (
        HttpHandshake(max_head=256),
        Socks5Handshake(require_auth=require_auth),
        Socks4Handshake(),
    )
    for handshake in handshakes:
        events = handshake.feed(data)
        refusals = [event for event in events if isinstance(event, Refused)]
        assert refusals in ([], events[-1:])
        if refusals:
            error = refusals[0].error
            assert isinstance(error, ProtocolError)
            assert isinstance(handshake.error_reply(error), bytes)
            assert "\n" not in str(error)
            with pytest.raises(RuntimeError):
                handshake.feed(b"")


@pytest.mark.parametrize("sample", SAMPLES)
def test_samples_byte_by_byte(sample: bytes) -> None:
    assert run(sample, list(range(len(sample)))) == run(sample, [])
