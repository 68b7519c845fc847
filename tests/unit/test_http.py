"""HTTP proxy heads: CONNECT, absolute-form forwarding, refusals and replies."""

from __future__ import annotations

import base64
import contextlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipv4proxy.errors import Failure, PolicyDenied, ProtocolError, ProxyError, UpstreamTimeout
from ipv4proxy.protocols.events import (
    Connect,
    Destination,
    Event,
    Forward,
    HostKind,
    ProtocolKind,
    Refused,
)
from ipv4proxy.protocols.http import HttpHandshake

NAME = HostKind.NAME
EXAMPLE_443 = Destination("example.com", 443, NAME)
EXAMPLE_80 = Destination("example.com", 80, NAME)

names = st.from_regex(
    r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}\.[a-z][a-z0-9-]{0,10}", fullmatch=True
)
ports = st.integers(1, 65535)
paths = st.from_regex(
    r"(/[A-Za-z0-9._~%!$&'()*+,;=:@-]*){0,4}(\?[A-Za-z0-9=&/?-]*)?", fullmatch=True
)


def feed(data: bytes, **kwargs: int) -> list[Event]:
    return HttpHandshake(**kwargs).feed(data)


def refused(events: list[Event]) -> ProxyError:
    """The error of a refusal: the last event, and the only one of an HTTP handshake."""
    assert len(events) == 1
    assert isinstance(events[0], Refused)
    return events[0].error


def refusal(data: bytes, **kwargs: int) -> Failure:
    error = refused(HttpHandshake(**kwargs).feed(data))
    assert isinstance(error, ProtocolError)
    assert "\n" not in str(error)
    return error.failure


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


# --- CONNECT ---------------------------------------------------------------------------


def test_connect() -> None:
    data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    assert feed(data) == [Connect(ProtocolKind.HTTP_CONNECT, EXAMPLE_443, b"", None)]


def test_connect_keeps_early_data_and_http10() -> None:
    data = b"CONNECT Example.COM:443 HTTP/1.0\r\n\r\n\x16\x03\x01\r\n\r\nrest"
    assert feed(data) == [
        Connect(ProtocolKind.HTTP_CONNECT, EXAMPLE_443, b"\x16\x03\x01\r\n\r\nrest", None)
    ]


def test_connect_credentials() -> None:
    data = b"CONNECT example.com:443 HTTP/1.1\r\nProxy-Authorization: " + basic("u", "p:w")
    [event] = feed(data + b"\r\n\r\n")
    assert isinstance(event, Connect)
    assert event.credentials == ("u", "p:w")
    assert "p:w" not in repr(event)


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer abc",
        b"Basic",
        b"Basic !!!",
        b"Basic " + base64.b64encode(b"nocolon"),
        b"Basic " + base64.b64encode(b"u:p")[:-1],
    ],
)
def test_malformed_credentials_are_none(value: bytes) -> None:
    data = b"CONNECT example.com:443 HTTP/1.1\r\nProxy-Authorization: " + value + b"\r\n\r\n"
    [event] = feed(data)
    assert isinstance(event, Connect)
    assert event.credentials is None


def test_credentials_keep_every_byte() -> None:
    token = base64.b64encode("jos\u00e9:\u00fc".encode() + b"\xff")
    [event] = feed(
        b"CONNECT a.example:1 HTTP/1.1\r\nProxy-Authorization: basic " + token + b"\r\n\r\n"
    )
    assert isinstance(event, Connect)
    assert event.credentials is not None
    user, password = event.credentials
    assert user == "jos\u00e9"
    assert password.encode("utf-8", "surrogateescape") == "\u00fc".encode() + b"\xff"


def test_incomplete_head_gives_nothing() -> None:
    handshake = HttpHandshake()
    assert handshake.feed(b"CONNECT example.com:443 HTTP/1.1\r\n") == []
    assert handshake.feed(b"Host: x\r\n\r") == []
    assert handshake.feed(b"\n") == [Connect(ProtocolKind.HTTP_CONNECT, EXAMPLE_443, b"", None)]


def test_feed_after_event_is_a_bug() -> None:
    handshake = HttpHandshake()
    handshake.feed(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    with pytest.raises(RuntimeError):
        handshake.feed(b"x")


def test_feed_after_error_is_a_bug() -> None:
    handshake = HttpHandshake()
    refused(handshake.feed(b"BAD\r\n\r\n"))
    with pytest.raises(RuntimeError):
        handshake.feed(b"x")


# --- forwarding ------------------------------------------------------------------------


def test_forward_hands_on_a_checked_head() -> None:
    """Origin-form line, Host from the URI first, every Host line the client sent dropped
    (RFC 9112 3.2.2), the rest as sent: protocols.forward rewrites it for the origin."""
    data = (
        b"POST http://Example.com:8080/a/b?q=1 HTTP/1.1\r\n"
        b"Host: evil.example\r\n"
        b"User-Agent: t\r\n"
        b"Proxy-Authorization: " + basic("u", "p") + b"\r\n"
        b"host: other.example\r\n"
        b"Content-Length:  3 \r\n"
        b"\r\nabc"
    )
    [event] = feed(data)
    assert event == Forward(
        ProtocolKind.HTTP_FORWARD,
        Destination("example.com", 8080, NAME),
        b"POST /a/b?q=1 HTTP/1.1\r\n"
        b"Host: example.com:8080\r\n"
        b"User-Agent: t\r\n"
        b"Proxy-Authorization: " + basic("u", "p") + b"\r\n"
        b"Content-Length: 3\r\n\r\n",
        b"abc",
        ("u", "p"),
    )


@pytest.mark.parametrize(
    ("target", "destination", "line"),
    [
        (b"http://example.com", EXAMPLE_80, b"GET / HTTP/1.1\r\nHost: example.com\r\n"),
        (b"http://example.com/", EXAMPLE_80, b"GET / HTTP/1.1\r\nHost: example.com\r\n"),
        (b"HTTP://example.com:80/x", EXAMPLE_80, b"GET /x HTTP/1.1\r\nHost: example.com\r\n"),
        (b"http://example.com:/x", EXAMPLE_80, b"GET /x HTTP/1.1\r\nHost: example.com\r\n"),
        (b"http://example.com?q", EXAMPLE_80, b"GET /?q HTTP/1.1\r\nHost: example.com\r\n"),
        (
            b"http://1.2.3.4:81/",
            Destination("1.2.3.4", 81, HostKind.IPV4),
            b"GET / HTTP/1.1\r\nHost: 1.2.3.4:81\r\n",
        ),
    ],
)
def test_forward_targets(target: bytes, destination: Destination, line: bytes) -> None:
    [event] = feed(b"GET " + target + b" HTTP/1.1\r\n\r\n")
    assert isinstance(event, Forward)
    assert event.destination == destination
    assert event.head == line + b"\r\n"


def test_forward_keeps_chunked() -> None:
    data = b"POST http://example.com/ HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n"
    [event] = feed(data)
    assert isinstance(event, Forward)
    assert b"\r\nTransfer-Encoding: Chunked\r\n" in event.head
    assert event.early_data == b"0\r\n\r\n"


def test_forward_accepts_repeated_equal_content_length() -> None:
    data = b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 02\r\n\r\n"
    [event] = feed(data)
    assert isinstance(event, Forward)


# --- refusals --------------------------------------------------------------------------

CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\n"
POST = b"POST http://example.com/ HTTP/1.1\r\n"


@pytest.mark.parametrize(
    ("data", "failure"),
    [
        # request line
        (b"\r\n\r\n", Failure.MALFORMED),
        (b"GET\r\n\r\n", Failure.MALFORMED),
        (b"GET http://example.com/ HTTP/2.0\r\n\r\n", Failure.MALFORMED),
        (b"GET http://example.com/ http/1.1\r\n\r\n", Failure.MALFORMED),
        (b"GET  http://example.com/ HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"GET http://example.com/  HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"GET http://example.com/\tx HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"G(T http://example.com/ HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"GET http://ex\xc3\xa4mple.com/ HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        # line ends
        (b"GET http://example.com/ HTTP/1.1\nHost: x\r\n\r\n", Failure.MALFORMED),
        (b"GET http://example.com/ HTTP/1.1\r\nHost: x\rY: z\r\n\r\n", Failure.MALFORMED),
        (b"GET http://example.com/ HTTP/1.1\n\n", Failure.MALFORMED),
        (CONNECT + b"Host: x\n\r\n\r\n", Failure.MALFORMED),
        # headers
        (CONNECT + b" Host: x\r\n\r\n", Failure.MALFORMED),
        (CONNECT + b"X: a\r\n\tb\r\n\r\n", Failure.MALFORMED),
        (CONNECT + b"Host : x\r\n\r\n", Failure.MALFORMED),
        (CONNECT + b"Ho st: x\r\n\r\n", Failure.MALFORMED),
        (CONNECT + b": x\r\n\r\n", Failure.MALFORMED),
        (CONNECT + b"NoColon\r\n\r\n", Failure.MALFORMED),
        (CONNECT + b"X: a\x00b\r\n\r\n", Failure.MALFORMED),
        (CONNECT + b"X: a\x7fb\r\n\r\n", Failure.MALFORMED),
        (CONNECT + b"X: a\x1bb\r\n\r\n", Failure.MALFORMED),
        # framing
        (POST + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", Failure.MALFORMED),
        (POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", Failure.MALFORMED),
        (POST + b"Content-Length: 1, 1\r\n\r\n", Failure.MALFORMED),
        (POST + b"Content-Length: -1\r\n\r\n", Failure.MALFORMED),
        (POST + b"Content-Length: +1\r\n\r\n", Failure.MALFORMED),
        (POST + b"Content-Length:\r\n\r\n", Failure.MALFORMED),
        (POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n", Failure.MALFORMED),
        (
            POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            Failure.MALFORMED,
        ),
        (POST + b"Transfer-Encoding: identity\r\n\r\n", Failure.MALFORMED),
        (
            b"POST http://example.com/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            Failure.MALFORMED,
        ),
        # CONNECT targets
        (b"CONNECT example.com HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"CONNECT http://example.com:443 HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"CONNECT 127.1:443 HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n", Failure.IPV6_LITERAL),
        (b"CONNECT example.com:0 HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        # absolute-form targets
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", Failure.MALFORMED),
        (b"OPTIONS * HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"GET example.com:80 HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"GET https://example.com/ HTTP/1.1\r\n\r\n", Failure.UNSUPPORTED),
        (b"GET ftp://example.com/ HTTP/1.1\r\n\r\n", Failure.UNSUPPORTED),
        (b"GET 1ttp://example.com/ HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"GET http://evil.example#@good.example/ HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"GET http:///x HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"GET http://[::1]/ HTTP/1.1\r\n\r\n", Failure.IPV6_LITERAL),
        (b"GET http://[::1]:8080/ HTTP/1.1\r\n\r\n", Failure.IPV6_LITERAL),
        (b"GET http://0x7f.1/ HTTP/1.1\r\n\r\n", Failure.MALFORMED),
        (b"GET http://example.com:99999/ HTTP/1.1\r\n\r\n", Failure.MALFORMED),
    ],
)
def test_refusals(data: bytes, failure: Failure) -> None:
    assert refusal(data) is failure


def test_origin_form_reason_explains_the_proxy() -> None:
    error = refused(feed(b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n"))
    assert re.search(r"absolute URI.*CONNECT", str(error))


def test_https_reason_says_use_connect() -> None:
    error = refused(feed(b"GET https://example.com/ HTTP/1.1\r\n\r\n"))
    assert "use CONNECT for https://" in str(error)


def test_head_size_limit() -> None:
    head = CONNECT + b"X: " + b"a" * 50 + b"\r\n\r\n"
    assert feed(head, max_head=len(head))
    assert refusal(head, max_head=len(head) - 1) is Failure.HEAD_TOO_LARGE
    handshake = HttpHandshake(max_head=100)
    assert handshake.feed(b"a" * 100) == []
    assert refused(handshake.feed(b"a")).failure is Failure.HEAD_TOO_LARGE


def test_header_count_limit() -> None:
    lines = b"".join(b"X-%d: 1\r\n" % i for i in range(5))
    assert feed(CONNECT + lines + b"\r\n", max_headers=5)
    assert refusal(CONNECT + lines + b"\r\n", max_headers=4) is Failure.HEAD_TOO_LARGE


# --- replies ---------------------------------------------------------------------------


def test_success_replies() -> None:
    connect = HttpHandshake()
    connect.feed(CONNECT + b"\r\n")
    assert connect.success_reply("1.2.3.4", 5) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    forward = HttpHandshake()
    forward.feed(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
    assert forward.success_reply("1.2.3.4", 5) == b""


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            ProtocolError("bad request line", failure=Failure.MALFORMED),
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 17\r\nConnection: close\r\n\r\nbad request line\n",
        ),
        (
            ProtocolError("credentials required", failure=Failure.AUTH_REQUIRED),
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 21\r\n"
            b'Proxy-Authenticate: Basic realm="ipv4proxy"\r\n'
            b"Connection: close\r\n\r\ncredentials required\n",
        ),
        (
            PolicyDenied("port 25 is not allowed"),
            b"HTTP/1.1 403 Forbidden\r\n"
            b'Proxy-Status: ipv4proxy; error=http_request_denied; details="port 25 is not allowed"'
            b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 23\r\nConnection: close\r\n\r\nport 25 is not allowed\n",
        ),
        (
            UpstreamTimeout("example.com:443: no answer in 10s"),
            b"HTTP/1.1 504 Gateway Timeout\r\n"
            b"Proxy-Status: ipv4proxy; error=connection_timeout; "
            b'details="example.com:443: no answer in 10s"\r\n'
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 34\r\nConnection: close\r\n\r\nexample.com:443: no answer in 10s\n",
        ),
        (
            ProtocolError("\u00fcber\r\nX: y", failure=Failure.IPV6_LITERAL),
            b"HTTP/1.1 502 Bad Gateway\r\n"
            b'Proxy-Status: ipv4proxy; error=destination_ip_unroutable; details="?ber X: y"\r\n'
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 11\r\nConnection: close\r\n\r\n\xc3\xbcber X: y\n",
        ),
        (
            ProtocolError("too big", failure=Failure.HEAD_TOO_LARGE),
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 8\r\n"
            b"Connection: close\r\n\r\ntoo big\n",
        ),
    ],
)
def test_error_replies(error: ProxyError, expected: bytes) -> None:
    assert HttpHandshake().error_reply(error) == expected


@pytest.mark.parametrize("failure", list(Failure))
def test_every_failure_has_a_well_formed_reply(failure: Failure) -> None:
    reply = HttpHandshake().error_reply(ProtocolError("reason", failure=failure))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % failure.http_status)
    assert b"Content-Length: %d\r\n" % len(body) in head + b"\r\n"
    assert body == b"reason\n"


# --- properties ------------------------------------------------------------------------


@given(names, ports, st.binary(max_size=50))
def test_connect_round_trip(name: str, port: int, early: bytes) -> None:
    data = f"CONNECT {name}:{port} HTTP/1.1\r\nHost: {name}:{port}\r\n\r\n".encode() + early
    expected = Connect(ProtocolKind.HTTP_CONNECT, Destination(name, port, NAME), early, None)
    assert feed(data) == [expected]


@given(names, ports, paths, st.sampled_from([b"GET", b"POST", b"DELETE", b"PATCH"]))
def test_absolute_form_round_trip(name: str, port: int, path: str, method: bytes) -> None:
    target = f"http://{name}:{port}{path}".encode()
    data = method + b" " + target + b" HTTP/1.1\r\nAccept: */*\r\nHost: elsewhere\r\n\r\n"
    [event] = feed(data)
    assert isinstance(event, Forward)
    assert event.destination == Destination(name, port, NAME)
    origin = path if path.startswith("/") else "/" + path
    host = name if port == 80 else f"{name}:{port}"
    assert (
        event.head == method + f" {origin} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode()
    )


@given(st.binary(max_size=200), st.integers(0, 200))
def test_any_bytes_after_a_prefix(tail: bytes, max_head: int) -> None:
    """Arbitrary bytes after a plausible start: an event or a ProtocolError, nothing else."""
    for prefix in (b"", b"GET http://a.example/ HTTP/1.1\r\n", CONNECT):
        with contextlib.suppress(ProtocolError):
            HttpHandshake(max_head=max_head).feed(prefix + tail)
