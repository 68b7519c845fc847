"""SOCKS5 and SOCKS4/4a handshakes: bytes in, events and replies out."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipv4proxy.errors import DialError, Failure, PolicyDenied, ProtocolError, ProxyError
from ipv4proxy.protocols.events import (
    Authenticate,
    Connect,
    Destination,
    Event,
    HostKind,
    ProtocolKind,
    Refused,
    Send,
)
from ipv4proxy.protocols.http import HttpHandshake
from ipv4proxy.protocols.socks import Socks4Handshake, Socks5Handshake

NAME = HostKind.NAME
IPV4 = HostKind.IPV4
EXAMPLE = Destination("example.com", 443, NAME)

names = st.from_regex(
    r"[a-z0-9-]{1,20}(\.[a-z0-9_-]{1,20}){0,3}\.[a-z][a-z0-9-]{0,10}", fullmatch=True
)
ports = st.integers(1, 65535)
ipv4s = st.ip_addresses(v=4).map(str)


def s5_request(host: str, port: int, *, atyp: int | None = None, cmd: int = 1) -> bytes:
    """A SOCKS5 request; an IPv4 text host is sent as ATYP 1 unless ``atyp`` says 3."""
    if atyp is None:
        atyp = 1 if host.count(".") == 3 and host.replace(".", "").isdigit() else 3
    if atyp == 1:
        address = ipaddress.IPv4Address(host).packed
    else:
        raw = host.encode()
        address = bytes((len(raw),)) + raw
    return bytes((5, cmd, 0, atyp)) + address + struct.pack(">H", port)


def s4_request(host: str, port: int, user: bytes = b"") -> bytes:
    """A SOCKS4 request for an IPv4 host, SOCKS4a for a name."""
    try:
        ip = ipaddress.IPv4Address(host).packed
    except ValueError:
        return (
            b"\x04\x01"
            + struct.pack(">H", port)
            + b"\0\0\0\x01"
            + user
            + b"\0"
            + host.encode()
            + b"\0"
        )
    return b"\x04\x01" + struct.pack(">H", port) + ip + user + b"\0"


GREET = b"\x05\x01\x00"
REQUEST = s5_request("example.com", 443)


def refused(events: list[Event]) -> ProxyError:
    """The error of a refusal, which is always the last event."""
    assert events
    assert isinstance(events[-1], Refused)
    assert not any(isinstance(event, Refused) for event in events[:-1])
    return events[-1].error


def s5_refusal(data: bytes, **kwargs: bool) -> tuple[Failure, bytes]:
    """The failure, and every byte the client sees: the Send events, then the refusal."""
    handshake = Socks5Handshake(**kwargs)
    events = handshake.feed(data)
    error = refused(events)
    assert "\n" not in str(error)
    sent = b"".join(event.data for event in events if isinstance(event, Send))
    return error.failure, sent + handshake.error_reply(error)


# --- SOCKS5 greeting and method choice -------------------------------------------------


@pytest.mark.parametrize(
    ("methods", "require_auth", "chosen"),
    [
        (b"\x00", False, 0x00),
        (b"\x02\x00", False, 0x00),
        (b"\x02", False, 0x02),
        (b"\x01\x02\x80", False, 0x02),
        (b"\x00\x02", True, 0x02),
        (b"\x02", True, 0x02),
    ],
)
def test_method_choice(methods: bytes, require_auth: bool, chosen: int) -> None:
    handshake = Socks5Handshake(require_auth=require_auth)
    greeting = bytes((5, len(methods))) + methods
    assert handshake.feed(greeting) == [Send(bytes((5, chosen)))]


@pytest.mark.parametrize(
    ("methods", "require_auth"), [(b"\x01", False), (b"\x80\xff", False), (b"\x00", True)]
)
def test_no_acceptable_method(methods: bytes, require_auth: bool) -> None:
    greeting = bytes((5, len(methods))) + methods
    failure, reply = s5_refusal(greeting, require_auth=require_auth)
    assert failure is Failure.AUTH_REQUIRED
    assert reply == b"\x05\xff"


@pytest.mark.parametrize("greeting", [b"\x05\x00", b"\x04\x01\x00", b"\x06\x01\x00"])
def test_bad_greeting(greeting: bytes) -> None:
    assert s5_refusal(greeting) == (Failure.MALFORMED, b"\x05\xff")


def test_greeting_and_request_in_one_chunk() -> None:
    events = Socks5Handshake().feed(GREET + REQUEST + b"hello")
    assert events == [Send(b"\x05\x00"), Connect(ProtocolKind.SOCKS5, EXAMPLE, b"hello", None)]


def test_partial_messages_wait() -> None:
    handshake = Socks5Handshake()
    assert handshake.feed(b"\x05") == []
    assert handshake.feed(b"\x02\x00") == []
    assert handshake.feed(b"\x02" + REQUEST[:5]) == [Send(b"\x05\x00")]
    assert handshake.feed(REQUEST[5:-1]) == []
    assert handshake.feed(REQUEST[-1:]) == [Connect(ProtocolKind.SOCKS5, EXAMPLE, b"", None)]


# --- SOCKS5 requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "destination"),
    [
        (s5_request("1.2.3.4", 80), Destination("1.2.3.4", 80, IPV4)),
        (s5_request("Example.COM.", 443), EXAMPLE),
        (s5_request("1.2.3.4", 80, atyp=3), Destination("1.2.3.4", 80, IPV4)),
        (s5_request("a" * 63 + ".b", 65535), Destination("a" * 63 + ".b", 65535, NAME)),
    ],
)
def test_requests(request_bytes: bytes, destination: Destination) -> None:
    events = Socks5Handshake().feed(GREET + request_bytes)
    assert events == [Send(b"\x05\x00"), Connect(ProtocolKind.SOCKS5, destination, b"", None)]


@pytest.mark.parametrize(
    ("request_bytes", "failure", "code"),
    [
        (s5_request("example.com", 443, cmd=2), Failure.UNSUPPORTED, 0x07),
        (s5_request("example.com", 443, cmd=3), Failure.UNSUPPORTED, 0x07),
        (s5_request("example.com", 443, cmd=9), Failure.UNSUPPORTED, 0x07),
        (b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x01\xbb", Failure.IPV6_LITERAL, 0x08),
        (b"\x05\x01\x00\x05" + bytes(6), Failure.BAD_ADDRESS_TYPE, 0x08),
        (b"\x05\x01\x00\x00" + bytes(6), Failure.BAD_ADDRESS_TYPE, 0x08),
        (b"\x05\x01\x01\x01" + bytes(6), Failure.MALFORMED, 0x01),
        (b"\x04\x01\x00\x01" + bytes(6), Failure.MALFORMED, 0x01),
        (b"\x05\x01\x00\x03\x00\x01\xbb", Failure.MALFORMED, 0x01),
        (s5_request("example.com", 443, atyp=3)[:-2] + b"\x00\x00", Failure.MALFORMED, 0x01),
        (s5_request("::1", 443, atyp=3), Failure.IPV6_LITERAL, 0x08),
        (s5_request("[2001:db8::1]", 443, atyp=3), Failure.IPV6_LITERAL, 0x08),
        (s5_request("127.1", 443, atyp=3), Failure.MALFORMED, 0x01),
        (s5_request("ex ample.com", 443, atyp=3), Failure.MALFORMED, 0x01),
        (b"\x05\x01\x00\x03\x05b\xfccher\x01\xbb", Failure.MALFORMED, 0x01),
    ],
)
def test_request_refusals(request_bytes: bytes, failure: Failure, code: int) -> None:
    got, reply = s5_refusal(GREET + request_bytes)
    assert got is failure
    # The method choice was never sent, so it goes out ahead of the refusal.
    assert reply == b"\x05\x00" + bytes((5, code, 0, 1, 0, 0, 0, 0, 0, 0))


def test_ipv6_reason_names_the_address() -> None:
    error = refused(
        Socks5Handshake().feed(
            GREET + b"\x05\x01\x00\x04" + ipaddress.IPv6Address("2001:db8::1").packed + b"\0\x50"
        )
    )
    assert str(error).startswith("[2001:db8::1] is an IPv6 literal")


def test_error_after_method_choice_was_sent() -> None:
    handshake = Socks5Handshake()
    assert handshake.feed(GREET) == [Send(b"\x05\x00")]
    error = refused(handshake.feed(s5_request("example.com", 443, cmd=2)))
    assert handshake.error_reply(error) == b"\x05\x07\x00\x01" + bytes(6)


def test_replies_after_connect() -> None:
    handshake = Socks5Handshake()
    handshake.feed(GREET + REQUEST)
    assert (
        handshake.success_reply("10.1.2.3", 0x1234) == b"\x05\x00\x00\x01\x0a\x01\x02\x03\x12\x34"
    )
    assert handshake.success_reply("not-an-ip", 70000) == b"\x05\x00\x00\x01" + bytes(6)
    refused = DialError("example.com:443: connection refused", failure=Failure.REFUSED)
    assert handshake.error_reply(refused) == b"\x05\x05\x00\x01" + bytes(6)
    assert handshake.error_reply(PolicyDenied("no")) == b"\x05\x02\x00\x01" + bytes(6)
    with pytest.raises(RuntimeError):
        handshake.feed(b"more")


@pytest.mark.parametrize("failure", list(Failure))
def test_every_failure_has_a_socks5_reply(failure: Failure) -> None:
    handshake = Socks5Handshake()
    handshake.feed(GREET)
    reply = handshake.error_reply(ProtocolError("x", failure=failure))
    assert reply == bytes((5, failure.socks5, 0, 1)) + bytes(6)


# --- SOCKS5 username/password (RFC 1929) -----------------------------------------------


def auth(user: bytes, password: bytes) -> bytes:
    return bytes((1, len(user))) + user + bytes((len(password),)) + password


def test_auth_flow_with_everything_in_one_chunk() -> None:
    handshake = Socks5Handshake(require_auth=True)
    data = b"\x05\x01\x02" + auth(b"alice", b"s3cret") + REQUEST + b"early"
    events = handshake.feed(data)
    assert events == [Send(b"\x05\x02"), Authenticate("alice", "s3cret")]
    assert "s3cret" not in repr(events)
    assert handshake.feed(b"") == []  # nothing is parsed before authenticated()
    assert handshake.feed(b"+more") == []
    assert handshake.authenticated() == [
        Send(b"\x01\x00"),
        Connect(ProtocolKind.SOCKS5, EXAMPLE, b"early+more", ("alice", "s3cret")),
    ]


def test_auth_failure() -> None:
    handshake = Socks5Handshake(require_auth=True)
    handshake.feed(b"\x05\x01\x02" + auth(b"alice", b"wrong"))
    denied = PolicyDenied("proxy authentication failed", failure=Failure.AUTH_REQUIRED)
    assert handshake.error_reply(denied) == b"\x01\x01"


def test_authenticated_out_of_turn_is_a_bug() -> None:
    handshake = Socks5Handshake()
    with pytest.raises(RuntimeError):
        handshake.authenticated()
    handshake.feed(GREET)
    with pytest.raises(RuntimeError):
        handshake.authenticated()
    for other in (Socks4Handshake(), HttpHandshake()):
        with pytest.raises(RuntimeError):
            other.authenticated()


def test_auth_decodes_utf8_and_keeps_other_bytes() -> None:
    handshake = Socks5Handshake(require_auth=True)
    events = handshake.feed(b"\x05\x01\x02" + auth("jos\u00e9".encode(), b"\xff\x00"))
    assert events[1] == Authenticate("jos\u00e9", "\udcff\x00")
    assert isinstance(events[1], Authenticate)
    assert events[1].password.encode("utf-8", "surrogateescape") == b"\xff\x00"


def test_empty_credentials_are_passed_on() -> None:
    handshake = Socks5Handshake(require_auth=True)
    assert handshake.feed(b"\x05\x01\x02" + auth(b"", b""))[1] == Authenticate("", "")


def test_bad_auth_version() -> None:
    handshake = Socks5Handshake(require_auth=True)
    events = handshake.feed(b"\x05\x01\x02\x05\x01u\x01p")
    error = refused(events)
    assert error.failure is Failure.MALFORMED
    assert events[0] == Send(b"\x05\x02")
    assert handshake.error_reply(error) == b"\x01\x01"


def test_error_reply_during_auth() -> None:
    handshake = Socks5Handshake(require_auth=True)
    handshake.feed(b"\x05\x01\x02\x01")
    timeout = ProtocolError("handshake timed out", failure=Failure.HANDSHAKE_TIMEOUT)
    assert handshake.error_reply(timeout) == b"\x01\x01"


def test_error_reply_before_method_choice() -> None:
    handshake = Socks5Handshake()
    handshake.feed(b"\x05")
    timeout = ProtocolError("handshake timed out", failure=Failure.HANDSHAKE_TIMEOUT)
    assert handshake.error_reply(timeout) == b"\x05\xff"


# --- SOCKS4 / SOCKS4a ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"\x04\x01\x00\x50\x01\x02\x03\x04\x00",
            Connect(ProtocolKind.SOCKS4, Destination("1.2.3.4", 80, IPV4), b"", None),
        ),
        (
            b"\x04\x01\x00\x50\x01\x02\x03\x04bob\x00GET",
            Connect(ProtocolKind.SOCKS4, Destination("1.2.3.4", 80, IPV4), b"GET", ("bob", "")),
        ),
        (
            b"\x04\x01\x01\xbb\x00\x00\x00\x07\x00Example.com\x00\x16\x03",
            Connect(ProtocolKind.SOCKS4A, EXAMPLE, b"\x16\x03", None),
        ),
        (
            b"\x04\x01\x01\xbb\x00\x00\x00\xffu\x001.2.3.4\x00",
            Connect(ProtocolKind.SOCKS4A, Destination("1.2.3.4", 443, IPV4), b"", ("u", "")),
        ),
        (
            b"\x04\x01\x00\x50\x00\x00\x00\x00\x00",
            Connect(ProtocolKind.SOCKS4, Destination("0.0.0.0", 80, IPV4), b"", None),
        ),
    ],
)
def test_socks4_requests(data: bytes, expected: Connect) -> None:
    assert Socks4Handshake().feed(data) == [expected]


@pytest.mark.parametrize(
    ("data", "failure"),
    [
        (b"\x04\x02\x00\x50\x01\x02\x03\x04\x00", Failure.UNSUPPORTED),
        (b"\x04\x03\x00\x50\x01\x02\x03\x04\x00", Failure.UNSUPPORTED),
        (b"\x05\x01\x00\x50\x01\x02\x03\x04\x00", Failure.MALFORMED),
        (b"\x04\x01\x00\x00\x01\x02\x03\x04\x00", Failure.MALFORMED),
        (b"\x04\x01\x00\x50\x01\x02\x03\x04" + b"u" * 256, Failure.MALFORMED),
        (b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + b"h" * 256, Failure.MALFORMED),
        (b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00", Failure.MALFORMED),
        (b"\x04\x01\x00\x50\x00\x00\x00\x01\x00::1\x00", Failure.IPV6_LITERAL),
        (b"\x04\x01\x00\x50\x00\x00\x00\x01\x00127.1\x00", Failure.MALFORMED),
    ],
)
def test_socks4_refusals(data: bytes, failure: Failure) -> None:
    handshake = Socks4Handshake()
    error = refused(handshake.feed(data))
    assert error.failure is failure
    assert handshake.error_reply(error) == b"\x00\x5b" + bytes(6)
    with pytest.raises(RuntimeError):
        handshake.feed(b"")


def test_socks4_longest_fields() -> None:
    data = b"\x04\x01\x00\x50\x00\x00\x00\x01" + b"u" * 255 + b"\0" + b"h" * 63 + b"\0"
    [event] = Socks4Handshake().feed(data)
    assert isinstance(event, Connect)
    assert event.credentials == ("u" * 255, "")


def test_socks4_waits_for_the_whole_request() -> None:
    handshake = Socks4Handshake()
    data = b"\x04\x01\x01\xbb\x00\x00\x00\x07bob\x00example.com\x00"
    for byte in data[:-1]:
        assert handshake.feed(bytes((byte,))) == []
    assert handshake.feed(data[-1:]) == [Connect(ProtocolKind.SOCKS4A, EXAMPLE, b"", ("bob", ""))]


def test_socks4_replies() -> None:
    handshake = Socks4Handshake()
    assert handshake.success_reply("10.1.2.3", 0x1234) == b"\x00\x5a\x12\x34\x0a\x01\x02\x03"
    assert handshake.error_reply(DialError("x", failure=Failure.TIMEOUT)) == b"\x00\x5b" + bytes(6)


@pytest.mark.parametrize("failure", list(Failure))
def test_every_failure_has_a_socks4_reply(failure: Failure) -> None:
    error: ProxyError = ProtocolError("x", failure=failure)
    assert Socks4Handshake().error_reply(error) == bytes((0, failure.socks4)) + bytes(6)


# --- round trips -----------------------------------------------------------------------


@given(st.one_of(names, ipv4s), ports, st.binary(max_size=30))
def test_socks5_round_trip(host: str, port: int, early: bytes) -> None:
    kind = IPV4 if host[0].isdigit() and host.replace(".", "").isdigit() else NAME
    events = Socks5Handshake().feed(GREET + s5_request(host, port) + early)
    assert events == [
        Send(b"\x05\x00"),
        Connect(ProtocolKind.SOCKS5, Destination(host, port, kind), early, None),
    ]


@given(names, ports, st.binary(max_size=30))
def test_socks5_auth_round_trip(host: str, port: int, early: bytes) -> None:
    handshake = Socks5Handshake(require_auth=True)
    events = handshake.feed(b"\x05\x01\x02" + auth(b"u", b"p") + s5_request(host, port) + early)
    assert events == [Send(b"\x05\x02"), Authenticate("u", "p")]
    assert handshake.authenticated() == [
        Send(b"\x01\x00"),
        Connect(ProtocolKind.SOCKS5, Destination(host, port, NAME), early, ("u", "p")),
    ]


@given(
    # 0.0.0.x (x != 0) is SOCKS4a's marker that a name follows, not a destination.
    st.one_of(names, ipv4s.filter(lambda ip: not ip.startswith("0.0.0."))),
    ports,
    st.binary(max_size=20).filter(lambda b: 0 not in b),
    st.binary(max_size=30),
)
def test_socks4_round_trip(host: str, port: int, user: bytes, early: bytes) -> None:
    is_ip = host.replace(".", "").isdigit()
    kind = IPV4 if is_ip else NAME
    protocol = ProtocolKind.SOCKS4 if is_ip else ProtocolKind.SOCKS4A
    credentials = (user.decode("utf-8", "surrogateescape"), "") if user else None
    events = Socks4Handshake().feed(s4_request(host, port, user) + early)
    assert events == [Connect(protocol, Destination(host, port, kind), early, credentials)]
