"""The session as a playbook: what happens to a client connection in, commands out.

Every row of the failure table (docs/clients.md, "What the proxy answers") that the
session answers, in each protocol and ``http.connect_failure`` mode, and every policy
rule in the order the session asks them; no sockets, no event loop.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

import pytest

from ipv4proxy.config import load
from ipv4proxy.errors import (
    DialError,
    Failure,
    PolicyDenied,
    ProxyError,
    ResolveError,
    UpstreamError,
    UpstreamTimeout,
)
from ipv4proxy.policy import Decision, Policy
from ipv4proxy.protocols import Destination, HostKind, ProtocolKind, Send
from ipv4proxy.protocols.http import DESTINATION_FAILURES, error_response
from ipv4proxy.protocols.session import (
    Close,
    Command,
    Dial,
    LogRefusal,
    OpenUpstream,
    Session,
    Settings,
    StartForward,
    StartRelay,
)

LISTEN = ("127.0.0.1", 3128)
HOST_ADDRESS = "10.0.0.5"  # an interface address of "this host"
ALLOWED_IP = "192.0.2.10"


@dataclass(frozen=True, slots=True)
class Route:
    """What the resolver would make of a destination (``net.upstream.Route``)."""

    host: str
    port: int
    addresses: tuple[str, ...]
    literal: bool = False
    resolved: str = ""


def make_policy(text: str = "", users: tuple[tuple[str, str], ...] = ()) -> Policy:
    policy = Policy(load(text), users)
    policy.listening_on([LISTEN], [HOST_ADDRESS])
    return policy


def make_session(
    text: str = "",
    *,
    mode: str = "status",
    users: tuple[tuple[str, str], ...] = (),
    host: str = "127.0.0.1",
    max_head: int = 32768,
) -> Session:
    settings = Settings(max_head=max_head, handshake_timeout=10.0, connect_failure=mode)
    return Session(settings, make_policy(text, users), host)


# --- client bytes ------------------------------------------------------------------------


def connect(authority: str, headers: str = "") -> bytes:
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{headers}\r\n".encode()


def basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}\r\n"


def s5_greeting(*methods: int) -> bytes:
    return bytes((5, len(methods), *methods))


def s5_request(host: str, port: int, *, command: int = 1) -> bytes:
    try:
        packed = bytes(int(part) for part in host.split("."))
        if len(packed) != 4:
            raise ValueError(host)
        address = b"\x01" + packed
    except ValueError:
        address = b"\x03" + bytes((len(host),)) + host.encode()
    return bytes((5, command, 0)) + address + struct.pack(">H", port)


def s5_auth(user: str, password: str) -> bytes:
    return bytes((1, len(user))) + user.encode() + bytes((len(password),)) + password.encode()


def s4_request(host: str, port: int, user: bytes = b"") -> bytes:
    try:
        packed = bytes(int(part) for part in host.split("."))
        return b"\x04\x01" + struct.pack(">H", port) + packed + user + b"\x00"
    except ValueError:
        head = b"\x04\x01" + struct.pack(">H", port) + b"\x00\x00\x00\x01"
        return head + user + b"\x00" + host.encode() + b"\x00"


def http_request(method: str, authority: str, port: int) -> bytes:
    return {
        "connect": connect(f"{authority}:{port}"),
        "socks5": s5_greeting(0) + s5_request(authority, port),
        "socks4": s4_request(authority, port),
    }[method]


# --- the playbook ------------------------------------------------------------------------


@dataclass
class Played:
    """What a session asked for, in order, and a summary of its refusal if any."""

    commands: list[Command]

    @property
    def sent(self) -> bytes:
        return b"".join(c.data for c in self.commands if isinstance(c, Send))

    @property
    def refusal(self) -> LogRefusal | None:
        found = [c for c in self.commands if isinstance(c, LogRefusal)]
        assert len(found) <= 1
        return found[0] if found else None

    @property
    def cause(self) -> str | None:
        refusal = self.refusal
        return None if refusal is None else refusal.error.failure.cause

    @property
    def close(self) -> Close | None:
        found = [c for c in self.commands if isinstance(c, Close)]
        assert len(found) <= 1
        return found[0] if found else None


def play(
    session: Session,
    data: bytes,
    *,
    route: Route | None = None,
    failure: ProxyError | None = None,
) -> Played:
    """Accept, feed ``data``; when the session opens the upstream, resolve it to ``route``
    (by default the destination's own literal), then fail with ``failure`` or connect."""
    commands = list(session.accepted())
    if commands:
        return Played(commands)
    commands = list(session.received(data))
    opening = [c for c in commands if isinstance(c, OpenUpstream)]
    if not opening:
        return Played(commands)
    destination = opening[0].destination
    if route is None:
        literal = destination.kind is HostKind.IPV4
        addresses = (destination.host,) if literal else (ALLOWED_IP,)
        route = Route(destination.host, destination.port, addresses, literal=literal)
    more = session.resolved(route)
    commands += more
    if not isinstance(more[0], Dial):
        return Played(commands)
    if failure is not None:
        commands += session.failed(failure)
    else:
        commands += session.connected("198.51.100.1", 0x1234)
    return Played(commands)


def assert_refused(played: Played, cause: str, reply: bytes | None, *, reset: bool = False) -> None:
    """Refused with ``cause``: ``reply`` sent last before the close (None: nothing at all),
    then one close and one log line, and nothing dialled or relayed."""
    commands = played.commands
    assert played.cause == cause
    assert isinstance(commands[-1], LogRefusal)
    assert commands[-2] == Close(reset=reset)
    if reply is None:
        assert not any(isinstance(c, Send) for c in commands)
    else:
        assert isinstance(commands[-3], Send)
        assert commands[-3].data == reply
    assert not any(isinstance(c, StartRelay | StartForward) for c in commands)


def s5_code(failure: Failure) -> bytes:
    return bytes((5, failure.socks5, 0, 1)) + bytes(6)


S4_REJECTED = b"\x00\x5b" + bytes(6)


# --- the way through -----------------------------------------------------------------------


def test_connect_opens_dials_replies_and_relays_the_early_data() -> None:
    session = make_session()
    played = play(session, connect(f"{ALLOWED_IP}:443") + b"\x16\x03\x01")
    destination = Destination(ALLOWED_IP, 443, HostKind.IPV4)
    assert played.commands == [
        OpenUpstream(destination),
        Dial((ALLOWED_IP,)),
        Send(b"HTTP/1.1 200 Connection established\r\n\r\n"),
        StartRelay(b"\x16\x03\x01"),
    ]
    assert (session.protocol, session.target) == (ProtocolKind.HTTP_CONNECT, f"{ALLOWED_IP}:443")
    assert not session.received(b"more")  # the relay has the connection now
    assert not session.timed_out()


def test_socks5_greeting_request_and_success_reply() -> None:
    played = play(make_session(), s5_greeting(0) + s5_request("example.com", 443))
    assert played.commands == [
        Send(b"\x05\x00"),
        OpenUpstream(Destination("example.com", 443, HostKind.NAME)),
        Dial((ALLOWED_IP,)),
        Send(b"\x05\x00\x00\x01\xc6\x33\x64\x01\x12\x34"),
        StartRelay(b""),
    ]


def test_socks4_request_and_success_reply() -> None:
    played = play(make_session(), s4_request(ALLOWED_IP, 443))
    assert played.commands[-2:] == [Send(b"\x00\x5a\x12\x34\xc6\x33\x64\x01"), StartRelay(b"")]


def test_forward_request_goes_to_the_forwarder_unchecked_here() -> None:
    """The forwarder checks every request itself (the first included), with the same
    session checks (`check_request`, `allowed_addresses`)."""
    data = b"GET http://example.com:8080/ HTTP/1.1\r\nHost: x\r\n\r\n"
    played = play(make_session(), data)
    [command] = played.commands
    assert isinstance(command, StartForward)
    assert command.request.destination == Destination("example.com", 8080, HostKind.NAME)
    session = make_session()
    denied = session.check_request(
        ProtocolKind.HTTP_FORWARD, None, Destination("example.com", 8080, HostKind.NAME)
    )
    assert denied is not None
    assert "policy.ports" in str(denied)


def test_a_request_in_pieces_waits_and_is_the_same() -> None:
    data = s5_greeting(0) + s5_request(ALLOWED_IP, 443) + b"early"
    whole = play(make_session(), data).commands
    session = make_session()
    assert not session.accepted()
    pieces: list[Command] = []
    for index in range(len(data) - 6):
        assert session.waiting
        pieces += session.received(data[index : index + 1])
    pieces += session.received(data[-6:])  # the request's last byte, and the early data
    assert not session.waiting
    assert pieces == whole[:2]  # the method choice, then the open (early data kept)
    assert session.resolved(Route(ALLOWED_IP, 443, (ALLOWED_IP,), literal=True)) == [
        Dial((ALLOWED_IP,))
    ]
    assert session.connected("198.51.100.1", 0x1234)[-1] == StartRelay(b"early")


def test_connected_without_a_request_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        make_session().connected("198.51.100.1", 1)


# --- the failure table ---------------------------------------------------------------------

# (row, client bytes per protocol, failure): refusals made from the request alone.
REQUEST_ROWS = [
    (
        "malformed",
        {
            "connect": b"CONNECT example.com:443 HTTP/1.1\r\nBad Header\r\n\r\n",
            "socks5": b"\x05\x01\x00\x05\x01\x01\x01",  # reserved byte not 0
            "socks4": b"\x04\x01\x00\x00\x01\x02\x03\x04\x00",  # port 0
        },
        Failure.MALFORMED,
    ),
    (
        "non-canonical IPv4",
        {
            "connect": connect("127.1:443"),
            "socks5": s5_greeting(0) + s5_request("2130706433", 443),
            "socks4": b"\x04\x01\x01\xbb\x00\x00\x00\x01\x000x7f.1\x00",
        },
        Failure.MALFORMED,
    ),
    (
        "unsupported",
        {
            "connect": b"GET https://example.com/ HTTP/1.1\r\n\r\n",
            "socks5": s5_greeting(0) + s5_request(ALLOWED_IP, 443, command=2),
            "socks4": b"\x04\x02\x01\xbb\xc0\x00\x02\x0a\x00",
        },
        Failure.UNSUPPORTED,
    ),
    (
        "IPv6 literal",
        {
            "connect": connect("[2001:db8::1]:443"),
            "socks5": s5_greeting(0) + b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x01\xbb",
            "socks4": b"\x04\x01\x01\xbb\x00\x00\x00\x01\x002001:db8::1\x00",
        },
        Failure.IPV6_LITERAL,
    ),
    (
        "unknown address type",
        {"socks5": s5_greeting(0) + b"\x05\x01\x00\x09" + bytes(6)},
        Failure.BAD_ADDRESS_TYPE,
    ),
    (
        "port refused by policy.ports",
        {
            "connect": connect(f"{ALLOWED_IP}:25"),
            "socks5": s5_greeting(0) + s5_request(ALLOWED_IP, 25),
            "socks4": s4_request(ALLOWED_IP, 25),
        },
        Failure.DENIED,
    ),
]


def expected_reply(protocol: str, failure: Failure, mode: str, error: ProxyError) -> bytes | None:
    """The answer the failure table gives (None: no answer, the connection closed)."""
    if protocol == "socks5":
        return s5_code(failure)
    if protocol == "socks4":
        return S4_REJECTED
    if mode != "status" and failure in DESTINATION_FAILURES:
        return None
    return error_response(error)


@pytest.mark.parametrize("mode", ["status", "close", "reset"])
@pytest.mark.parametrize(
    ("row", "protocol", "data", "failure"),
    [
        pytest.param(row, protocol, data, failure, id=f"{row}-{protocol}")
        for row, by_protocol, failure in REQUEST_ROWS
        for protocol, data in by_protocol.items()
    ],
)
def test_request_refusals(
    row: str, protocol: str, data: bytes, failure: Failure, mode: str
) -> None:
    played = play(make_session(mode=mode), data)
    refusal = played.refusal
    assert refusal is not None, row
    assert refusal.error.failure is failure
    reply = expected_reply(protocol, failure, mode, refusal.error)
    silent = reply is None
    assert_refused(played, failure.cause, reply, reset=silent and mode == "reset")
    if protocol == "socks5" and data.startswith(s5_greeting(0)):
        assert played.sent.startswith(b"\x05\x00")  # the method choice went out first
    if protocol == "connect" and failure is not Failure.UNSUPPORTED:
        assert refusal.protocol in (ProtocolKind.HTTP_CONNECT, ProtocolKind.HTTP)


# (row, the error the resolver or the dialer raises)
UPSTREAM_ROWS = [
    ("name does not exist", ResolveError("x.test does not exist", failure=Failure.NXDOMAIN)),
    ("no A record", ResolveError("no IPv4 address for x.test", failure=Failure.NODATA)),
    ("DNS servers failed", ResolveError("DNS failed", failure=Failure.DNS_FAILURE)),
    ("DNS busy", ResolveError("256 lookups are in flight", failure=Failure.DNS_BUSY)),
    ("refused", DialError("connect failed (ECONNREFUSED)", failure=Failure.REFUSED)),
    ("host unreachable", DialError("EHOSTUNREACH", failure=Failure.HOST_UNREACHABLE)),
    ("net unreachable", DialError("ENETUNREACH", failure=Failure.NET_UNREACHABLE)),
    ("timeout", UpstreamTimeout("connect timed out after 10 s")),
    ("other connect failure", UpstreamError("parent closed the connection")),
]


@pytest.mark.parametrize("mode", ["status", "close", "reset"])
@pytest.mark.parametrize("protocol", ["connect", "socks5", "socks4"])
@pytest.mark.parametrize(("row", "error"), UPSTREAM_ROWS, ids=[row for row, _ in UPSTREAM_ROWS])
def test_upstream_failures(row: str, error: ProxyError, protocol: str, mode: str) -> None:
    played = play(
        make_session(mode=mode), http_request(protocol, "example.com", 443), failure=error
    )
    reply = expected_reply(protocol, error.failure, mode, error)
    before = b"\x05\x00" if protocol == "socks5" else b""
    assert_refused(played, error.failure.cause, reply, reset=reply is None and mode == "reset")
    assert played.sent == before + (reply or b"")
    refusal = played.refusal
    assert refusal is not None
    assert refusal.target == "example.com:443"


# The HTTP column of the table for what can fail once the request was read.
STATUSES = {
    Failure.IPV6_LITERAL: 502,
    Failure.DENIED: 403,
    Failure.NXDOMAIN: 502,
    Failure.NODATA: 502,
    Failure.DNS_FAILURE: 502,
    Failure.DNS_BUSY: 503,
    Failure.REFUSED: 502,
    Failure.HOST_UNREACHABLE: 502,
    Failure.NET_UNREACHABLE: 502,
    Failure.CONNECT_FAILED: 502,
    Failure.TIMEOUT: 504,
}


@pytest.mark.parametrize(("failure", "status"), STATUSES.items(), ids=str)
def test_the_status_codes_of_the_table(failure: Failure, status: int) -> None:
    """What the session sends in "status" mode, and that the other modes silence it
    (all but DNS_BUSY: the proxy is busy, not the destination)."""
    error = UpstreamError("reason", failure=failure)
    played = play(make_session(), connect("example.com:443"), failure=error)
    assert played.sent.startswith(f"HTTP/1.1 {status} ".encode())
    assert played.sent.endswith(b"\r\n\r\nreason\n")
    silenced = play(make_session(mode="close"), connect("example.com:443"), failure=error)
    assert (silenced.sent == b"") is (failure is not Failure.DNS_BUSY)


def test_dns_busy_keeps_its_503_in_every_mode() -> None:
    busy = ResolveError("busy", failure=Failure.DNS_BUSY)
    for mode in ("close", "reset"):
        played = play(make_session(mode=mode), connect("example.com:443"), failure=busy)
        assert played.sent.startswith(b"HTTP/1.1 503 ")


@pytest.mark.parametrize(
    ("first", "reply"),
    [
        (b"\x06", b"HTTP/1.1 400 "),  # starts no protocol: answered at once
        (b"\x16\x03\x01", None),  # TLS: closed with no answer
    ],
)
def test_foreign_first_byte(first: bytes, reply: bytes | None) -> None:
    session = make_session()
    assert not session.accepted()
    played = Played(list(session.received(first)))
    assert played.cause == "MALFORMED"
    assert played.close == Close()
    if reply is None:
        assert played.sent == b""
        assert played.refusal is not None
        assert "use an http:// proxy URL" in str(played.refusal.error)
    else:
        assert played.sent.startswith(reply)
        assert b"the first byte 0x06 starts neither" in played.sent
    assert not session.received(b"more")


@pytest.mark.parametrize(
    ("protocol", "data", "reply"),
    [
        ("connect", b"CONNECT example.com:443 HTTP/1.1\r\n", b"HTTP/1.1 408 "),
        ("socks5 before the method choice", b"\x05", b"\x05\xff"),
        ("socks5 during authentication", s5_greeting(2) + b"\x01", b"\x05\x02\x01\x01"),
        (
            "socks5 after the method choice",
            s5_greeting(0) + b"\x05",
            b"\x05\x00" + s5_code(Failure.HANDSHAKE_TIMEOUT),
        ),
        ("socks4", b"\x04\x01", S4_REJECTED),
        ("no byte at all", b"", b""),
    ],
)
def test_handshake_timeout(protocol: str, data: bytes, reply: bytes) -> None:
    session = make_session(users=(("u", "p"),) if "authentication" in protocol else ())
    commands = list(session.accepted())
    if data:
        commands += session.received(data)
    commands += session.timed_out()
    played = Played(commands)
    assert played.cause == "HANDSHAKE_TIMEOUT"
    assert played.sent.startswith(reply)
    assert "request not complete after 10 s" in str(played.refusal.error if played.refusal else "")
    assert not session.timed_out()  # refused once


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"CONNECT example.com:443 HTTP/1.1\r\n", b"HTTP/1.1 503 "),
        (b"\x05\x01\x00\x05\x01", b"\x05\x00" + s5_code(Failure.OVERLOADED)),
        (b"\x04\x01\x01\xbb", S4_REJECTED),
    ],
)
def test_over_handshake_memory(data: bytes, reply: bytes) -> None:
    session = make_session()
    commands = [*session.accepted(), *session.received(data)]
    assert session.waiting
    played = Played([*commands, *session.over_budget(16_000_000)])
    assert played.cause == "OVERLOADED"
    assert played.sent.startswith(reply)
    assert played.refusal is not None
    assert "unfinished requests hold 16000000 bytes" in str(played.refusal.error)


def test_head_too_large() -> None:
    session = make_session(max_head=64)
    played = play(session, connect("example.com:443", "X: " + "a" * 100 + "\r\n"))
    assert_refused(played, "HEAD_TOO_LARGE", played.sent)
    assert played.sent.startswith(b"HTTP/1.1 431 ")


def test_too_many_connections_closes_with_no_reply() -> None:
    session = make_session()
    assert not session.accepted()
    played = Played(list(session.over_limit("1000 connections open (limits.max_connections)")))
    assert played.commands[0] == Close()
    assert played.cause == "TOO_MANY_CONNECTIONS"
    assert played.sent == b""
    assert played.refusal is not None
    assert (played.refusal.protocol, played.refusal.target) == ("-", "-")


# --- the rules, in the order the session asks them -----------------------------------------


def test_client_outside_the_listeners_clients_is_closed_at_accept() -> None:
    text = "listeners: [{host: 127.0.0.1, port: 3128, clients: [10.0.0.0/8]}]"
    session = make_session(text, host="192.168.1.1")
    played = Played(list(session.accepted()))
    assert played.commands[0] == Close()
    assert played.cause == "DENIED"
    assert played.sent == b""
    assert played.refusal is not None
    assert "listeners[0].clients" in str(played.refusal.error)
    assert not make_session(text, host="10.1.2.3").accepted()


USERS = (("alice", "s3cret"),)


@pytest.mark.parametrize(
    ("row", "data", "reply"),
    [
        ("HTTP, none", connect(f"{ALLOWED_IP}:443"), b"HTTP/1.1 407 "),
        ("HTTP, wrong", connect(f"{ALLOWED_IP}:443", basic("alice", "no")), b"HTTP/1.1 407 "),
        ("SOCKS5, no method", s5_greeting(0), b"\x05\xff"),
        ("SOCKS5, wrong", s5_greeting(2) + s5_auth("alice", "no"), b"\x05\x02\x01\x01"),
        ("SOCKS4", s4_request(ALLOWED_IP, 443, b"alice"), S4_REJECTED),
    ],
)
def test_credentials_refused(row: str, data: bytes, reply: bytes) -> None:
    played = play(make_session(users=USERS), data)
    assert played.cause == "AUTH_REQUIRED", row
    assert played.sent.startswith(reply)
    assert played.close == Close()
    assert not any(isinstance(c, OpenUpstream) for c in played.commands)
    if reply.startswith(b"HTTP"):
        assert b'Proxy-Authenticate: Basic realm="ipv4proxy"' in played.sent


@pytest.mark.parametrize(
    "data",
    [
        connect(f"{ALLOWED_IP}:443", basic("alice", "s3cret")),
        s5_greeting(2) + s5_auth("alice", "s3cret") + s5_request(ALLOWED_IP, 443),
    ],
)
def test_credentials_accepted(data: bytes) -> None:
    played = play(make_session(users=USERS), data)
    assert played.refusal is None
    assert isinstance(played.commands[-1], StartRelay)


class CountingPolicy(Policy):
    """A policy that counts how often it was asked about credentials."""

    __slots__ = ("asked",)

    def __init__(self, users: tuple[tuple[str, str], ...]) -> None:
        super().__init__(load(), users)
        self.asked = 0

    def credentials(
        self,
        credentials: tuple[str, str] | None,
        *,
        protocol: ProtocolKind = ProtocolKind.HTTP_CONNECT,
    ) -> Decision:
        self.asked += 1
        return super().credentials(credentials, protocol=protocol)


def test_socks5_credentials_are_checked_once() -> None:
    policy = CountingPolicy(USERS)
    session = Session(Settings(), policy, "127.0.0.1")
    data = s5_greeting(2) + s5_auth("alice", "s3cret") + s5_request(ALLOWED_IP, 443)
    played = play(session, data)
    assert played.sent.startswith(b"\x05\x02\x01\x00")
    assert policy.asked == 1


def test_credentials_come_before_the_destination() -> None:
    """A request with no credentials to a refused port hears 407, not 403."""
    played = play(make_session(users=USERS), connect(f"{ALLOWED_IP}:25"))
    assert played.cause == "AUTH_REQUIRED"


# (row, configuration, destination, route the resolver gives, refused with a reason matching)
POLICY_ROWS = [
    ("port", "", f"{ALLOWED_IP}:8080", None, "policy.ports"),
    (
        "deny_domains",
        "policy: {deny_domains: ['*.bad.test']}",
        "x.bad.test:443",
        None,
        "policy.deny_domains[0]",
    ),
    (
        "allow_domains",
        "policy: {allow_domains: [good.test]}",
        "other.test:443",
        None,
        "matches no name in policy.allow_domains",
    ),
    (
        "allow_domains and a literal",
        "policy: {allow_domains: [good.test]}",
        f"{ALLOWED_IP}:443",
        None,
        "an IPv4 literal matches no name",
    ),
    (
        "search list name",
        "policy: {deny_domains: ['*.corp.test']}",
        "db:443",
        Route("db", 443, (ALLOWED_IP,), resolved="db.corp.test"),
        "looked up as db.corp.test",
    ),
    (
        "loop: own listen address",
        "policy: {ports: ['3128']}",
        "127.0.0.1:3128",
        None,
        "own listen address",
    ),
    (
        "loop: this host's address",
        "policy: {ports: ['3128'], allow_cidrs: [10.0.0.0/8]}",
        f"{HOST_ADDRESS}:3128",
        None,
        "a loop",
    ),
    (
        "loop even when allowed",
        "policy: {ports: ['3128'], allow_cidrs: [0.0.0.0/0]}",
        "0.0.0.0:3128",
        None,
        "a loop",
    ),
    (
        "deny_cidrs",
        "policy: {deny_cidrs: [192.0.2.0/24]}",
        f"{ALLOWED_IP}:443",
        None,
        "policy.deny_cidrs[0]",
    ),
    ("special range", "", "169.254.169.254:80", None, "link-local (cloud metadata)"),
    ("loopback", "", "127.0.0.1:443", None, "special range loopback"),
    (
        "outside allow_cidrs",
        "policy: {allow_cidrs: [10.0.0.0/8]}",
        f"{ALLOWED_IP}:443",
        None,
        "in no network of policy.allow_cidrs",
    ),
    (
        "a name's only address refused",
        "",
        "meta.test:80",
        Route("meta.test", 80, ("169.254.169.254",)),
        "resolves only to refused addresses",
    ),
]


@pytest.mark.parametrize("mode", ["status", "reset"])
@pytest.mark.parametrize(
    ("row", "text", "target", "route", "reason"),
    POLICY_ROWS,
    ids=[row[0] for row in POLICY_ROWS],
)
def test_policy_refusals(
    *, row: str, text: str, target: str, route: Route | None, reason: str, mode: str
) -> None:
    host, _, port = target.rpartition(":")
    for protocol in ("connect", "socks5"):
        played = play(
            make_session(text, mode=mode), http_request(protocol, host, int(port)), route=route
        )
        assert played.cause == "DENIED", (row, protocol)
        assert played.refusal is not None
        assert reason in str(played.refusal.error), (row, str(played.refusal.error))
        assert not any(isinstance(c, Dial) for c in played.commands)
        if protocol == "socks5":
            assert played.sent == b"\x05\x00" + s5_code(Failure.DENIED)
        elif mode == "reset":
            assert (played.sent, played.close) == (b"", Close(reset=True))
        else:
            assert played.sent.startswith(b"HTTP/1.1 403 ")


@pytest.mark.parametrize(
    ("row", "text", "target", "route", "dialled"),
    [
        (
            "allow_cidrs opens a special range",
            "policy: {allow_cidrs: [127.0.0.0/8]}",
            "127.0.0.1:443",
            None,
            ("127.0.0.1",),
        ),
        (
            "open_cidrs opens a special range",
            "policy: {open_cidrs: [169.254.0.0/16]}",
            "169.254.1.1:80",
            None,
            ("169.254.1.1",),
        ),
        ("private ranges are allowed", "", "10.1.2.3:443", None, ("10.1.2.3",)),
        (
            "allow_domains match",
            "policy: {allow_domains: ['*.good.test']}",
            "a.good.test:443",
            None,
            (ALLOWED_IP,),
        ),
        (
            "refused addresses are dropped",
            "",
            "mixed.test:443",
            Route("mixed.test", 443, ("127.0.0.1", ALLOWED_IP)),
            (ALLOWED_IP,),
        ),
        (
            "loop guard only on own ports",
            "policy: {allow_cidrs: [127.0.0.0/8]}",
            "127.0.0.1:80",
            None,
            ("127.0.0.1",),
        ),
    ],
)
def test_policy_allows(
    row: str, text: str, target: str, route: Route | None, dialled: tuple[str, ...]
) -> None:
    host, _, port = target.rpartition(":")
    played = play(make_session(text), connect(target), route=route)
    assert played.refusal is None, (row, played.refusal)
    assert Dial(dialled) in played.commands
    assert isinstance(played.commands[-1], StartRelay)
    del host, port


def test_settings_are_the_ones_the_session_was_made_with() -> None:
    """A session keeps its connect_failure: a later configuration is another session's."""
    refused = DialError("refused", failure=Failure.REFUSED)
    status = make_session(mode="status")
    reset = make_session(mode="reset")
    assert play(status, connect("example.com:443"), failure=refused).sent.startswith(
        b"HTTP/1.1 502"
    )
    assert play(reset, connect("example.com:443"), failure=refused).close == Close(reset=True)


def test_allowed_addresses_raise_for_the_forwarder() -> None:
    session = make_session()
    with pytest.raises(PolicyDenied, match="special range loopback"):
        session.allowed_addresses(Route("127.0.0.1", 80, ("127.0.0.1",), literal=True))
