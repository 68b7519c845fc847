"""The forward framer (protocols.forward), pure: tables and properties.

The properties drive the framer as the glue does (check each request, answer each with a
canned response) and read what it sent upstream as an origin would, with a separate h11
server: whatever the client sends, fed whole or byte by byte, the origin sees the same
requests and the client the same verdict, and what the origin sees always parses.
"""

from __future__ import annotations

import dataclasses
import itertools

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipv4proxy.errors import Failure, ProtocolError
from ipv4proxy.protocols.events import Destination, HostKind
from ipv4proxy.protocols.forward import ForwardFramer, OriginRequest, ResponseEnd, Wait

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"  # a fit answer to any method, HEAD too
# Bounds of one drive: requests on a connection, events per feed.
MAX_REQUESTS = 20
MAX_STEPS = 100_000


@dataclasses.dataclass
class Run:
    upstream: list[bytes]  # the bytes sent upstream, one entry per upstream connection
    requests: list[OriginRequest]
    to_client: bytes
    failure: Failure | None = None
    closed: bool = False


def drive(chunks: list[bytes], response: bytes = NO_CONTENT) -> Run:
    """Feed ``chunks`` as the glue would; each request is answered with ``response``."""
    framer = ForwardFramer(max_head=4096)
    run = Run([], [], b"")
    pending = list(chunks)
    for _ in range(MAX_STEPS):
        item: object
        try:
            item = framer.next_client()
        except ProtocolError as exc:
            run.failure = exc.failure
            return run
        if isinstance(item, OriginRequest):
            run.requests.append(item)
            if len(run.requests) > MAX_REQUESTS:
                return run
            if not item.reuse:
                run.upstream.append(b"")
            run.upstream[-1] += framer.start_request(fresh=not item.reuse)
        elif isinstance(item, bytes):
            run.upstream[-1] += item
        elif item is Wait.RESPONSE:
            framer.receive_upstream(response)
            end = _respond(framer, run)
            if end is None or not end.keep_client:
                run.closed = True
                return run
        elif item is Wait.NEED_DATA:
            if not pending:
                return run
            framer.receive_client(pending.pop(0))
        else:
            run.closed = True
            return run
    raise AssertionError("the framer did not settle")


def _respond(framer: ForwardFramer, run: Run) -> ResponseEnd | None:
    for _ in range(MAX_STEPS):
        item = framer.next_upstream()
        if isinstance(item, bytes):
            run.to_client += item
        elif isinstance(item, ResponseEnd):
            run.to_client += item.data
            return item
        else:
            return None
    raise AssertionError("the response did not end")


def origin_view(raw: bytes) -> list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, bool]]:
    """What an origin reads from ``raw``: (method, target, headers, body, complete) per
    request. Raises h11.RemoteProtocolError if it is not well framed."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    seen: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, bool]] = []
    for _ in range(MAX_STEPS):
        event = conn.next_event()
        if isinstance(event, h11.Request):
            seen.append((event.method, event.target, list(event.headers.raw_items()), b"", False))
        elif isinstance(event, h11.Data):
            method, target, headers, body, _ = seen[-1]
            seen[-1] = (method, target, headers, body + event.data, False)
        elif isinstance(event, h11.EndOfMessage):
            method, target, headers, body, _ = seen[-1]
            seen[-1] = (method, target, headers, body, True)
            conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return seen
            conn.start_next_cycle()
        else:
            return seen
    raise AssertionError("the origin did not settle")


# --- tables ------------------------------------------------------------------------------

HOST = "a.test"
DEST = Destination(HOST, 80, HostKind.NAME)


def test_head_is_rewritten_for_the_origin() -> None:
    run = drive(
        [
            b"POST http://A.test/p?q HTTP/1.1\r\nHost: evil\r\nUser-Agent: t\r\n"
            b"Proxy-Authorization: Basic dTpw\r\nProxy-Connection: keep-alive\r\n"
            b"Connection: keep-alive, X-Hop, Content-Length\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n"
            b"TE: trailers\r\nTrailer: X\r\nUpgrade: websocket\r\nProxy-Foo: 1\r\n"
            b"Content-Length: 3\r\n\r\nabc"
        ],
        OK,
    )
    assert run.failure is None
    assert run.requests == [OriginRequest(DEST, "a.test:80", ("u", "p"), reuse=False)]
    assert run.upstream == [
        b"POST /p?q HTTP/1.1\r\nHost: a.test\r\nUser-Agent: t\r\nContent-Length: 3\r\n\r\nabc"
    ]
    assert run.to_client == OK


def test_pipelined_requests_wait_for_the_response() -> None:
    get = b"GET http://a.test/%d HTTP/1.1\r\nHost: a.test\r\nProxy-Authorization: x\r\n\r\n"
    run = drive([get % 1 + get % 2], OK)
    assert [r.reuse for r in run.requests] == [False, True]
    assert run.upstream == [
        b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n"
    ]
    assert run.to_client == OK + OK


def test_another_origin_is_a_new_upstream_connection() -> None:
    run = drive([b"GET http://a.test/ HTTP/1.1\r\n\r\nGET http://b.test:81/ HTTP/1.1\r\n\r\n"])
    assert [(r.target, r.reuse) for r in run.requests] == [
        ("a.test:80", False),
        ("b.test:81", False),
    ]
    assert run.upstream == [
        b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: b.test:81\r\n\r\n",
    ]


def test_chunked_is_reframed_and_extensions_dropped() -> None:
    body = b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
    run = drive([b"POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body])
    assert run.failure is None
    [raw] = run.upstream
    assert raw.endswith(b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n")


@pytest.mark.parametrize(
    ("data", "failure"),
    [
        (b"Transfer-Encoding: chunked\r\n\r\n100000000000000000000\r\n", Failure.MALFORMED),
        (b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", Failure.MALFORMED),
        (b"Transfer-Encoding: chunked\r\n\r\nz\r\n", Failure.MALFORMED),
        (b"Content-Length: 5\r\nContent-Length: 005\r\n\r\nhello", Failure.MALFORMED),
        (b"Content-Length: 5, 6\r\n\r\nhello", Failure.MALFORMED),
        (b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", Failure.MALFORMED),
        (b"Transfer-Encoding: gzip, chunked\r\n\r\n", Failure.MALFORMED),
    ],
    ids=["absurd-chunk", "chunk-footer", "not-hex", "cl-005", "cl-list", "cl-te", "te-list"],
)
def test_bad_framing_is_refused(data: bytes, failure: Failure) -> None:
    run = drive([b"POST http://a.test/ HTTP/1.1\r\n" + data])
    assert run.failure is failure
    for raw in run.upstream:
        for *_, complete in origin_view(raw):
            assert not complete  # no request the client framed badly ever completes


def test_later_head_has_the_first_heads_checks() -> None:
    first = b"GET http://a.test/ HTTP/1.1\r\n\r\n"
    run = drive([first + b"GET http://a.test/ HTTP/1.1\r\nX: a\r\n b\r\n\r\n"])  # obs-fold
    assert len(run.requests) == 1
    assert run.failure is Failure.MALFORMED


def test_connect_after_a_forward_is_refused() -> None:
    run = drive([b"GET http://a.test/ HTTP/1.1\r\n\r\nCONNECT a.test:443 HTTP/1.1\r\n\r\n"])
    assert run.failure is Failure.MALFORMED


def test_connection_close_ends_after_the_response() -> None:
    run = drive([b"GET http://a.test/ HTTP/1.1\r\nConnection: close\r\n\r\nGET http://a.test/2"])
    assert len(run.requests) == 1
    assert run.closed
    assert b"Connection: close" in run.to_client


def test_http10_client_is_not_kept_alive() -> None:
    run = drive([b"GET http://a.test/ HTTP/1.0\r\n\r\n"])
    assert run.closed
    assert run.requests[0].reuse is False


def test_later_head_too_large_is_431() -> None:
    first = b"GET http://a.test/ HTTP/1.1\r\n\r\n"
    run = drive([first + b"GET http://a.test/ HTTP/1.1\r\nX: " + b"a" * 5000])
    assert run.failure is Failure.HEAD_TOO_LARGE


@pytest.mark.parametrize(
    "response",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", b"garbage\r\n\r\n"],
)
def test_bad_response_is_bad_response(response: bytes) -> None:
    framer = ForwardFramer()
    framer.receive_client(b"GET http://a.test/ HTTP/1.1\r\n\r\n")
    assert isinstance(framer.next_client(), OriginRequest)
    framer.start_request(fresh=True)
    framer.receive_upstream(response)
    with pytest.raises(ProtocolError) as info:
        _respond(framer, Run([], [], b""))
    assert info.value.failure is Failure.BAD_RESPONSE
    assert not framer.responding


def test_response_hop_by_hop_headers_are_removed() -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n"
        b"Proxy-Authenticate: Basic\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    run = drive([b"GET http://a.test/ HTTP/1.1\r\n\r\n"], response)
    assert run.to_client == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )


# --- properties --------------------------------------------------------------------------

_hosts = st.sampled_from([b"a.test", b"b.test:81", b"A.test:80"])
_headers = st.lists(
    st.sampled_from(
        [
            b"Proxy-Authorization: Basic dTpw",
            b"Proxy-Connection: keep-alive",
            b"Connection: close",
            b"Connection: X-Hop",
            b"X-Hop: 1",
            b"Keep-Alive: 5",
            b"Upgrade: h2c",
            b"TE: trailers",
            b"Expect: 100-continue",
            b"Accept: */*",
            b"Host: other",
        ]
    ),
    max_size=4,
)


@st.composite
def _body(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    data = draw(st.binary(max_size=40))
    kind = draw(st.sampled_from(["none", "cl", "cl-twice", "chunked", "chunked-bogus"]))
    if kind == "none":
        return [], b""
    if kind == "cl":
        return [b"Content-Length: %d" % len(data)], data
    if kind == "cl-twice":
        other = draw(st.sampled_from([b"%d" % len(data), b"0%d" % len(data), b"99"]))
        return [b"Content-Length: %d" % len(data), b"Content-Length: " + other], data
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    pieces = [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)]) if b > a]
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    if kind == "chunked-bogus":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"X", b"\n", b"ffffffffffffffffffffff\r\n"]))
        body += body[at:]
    return [b"Transfer-Encoding: chunked"], body


@st.composite
def _request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT"]))
    host = draw(_hosts)
    framing, body = draw(_body())
    lines = [method + b" http://" + host + b"/p HTTP/1.1", *draw(_headers), *framing]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_connections = st.one_of(
    st.lists(_request(), min_size=1, max_size=3).map(b"".join),
    st.tuples(st.lists(_request(), max_size=2).map(b"".join), st.binary(max_size=60)).map(b"".join),
)


@settings(max_examples=300, deadline=None)
@given(_connections)
def test_whole_or_byte_by_byte_the_origin_sees_the_same(data: bytes) -> None:
    whole = drive([data])
    bytewise = drive([data[i : i + 1] for i in range(len(data))])
    assert whole.failure == bytewise.failure
    assert whole.requests == bytewise.requests
    assert whole.to_client == bytewise.to_client
    assert len(whole.upstream) == len(bytewise.upstream)
    for a, b in zip(whole.upstream, bytewise.upstream, strict=True):
        # Chunk sizes follow the reads; what the origin reads from them does not.
        assert _merged(origin_view(a)) == _merged(origin_view(b))


def _merged(view: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, bool]]) -> object:
    return [(m, t, h, body, done) for m, t, h, body, done in view]


@settings(max_examples=300, deadline=None)
@given(_connections, st.lists(st.integers(0, 400), max_size=6))
def test_what_reaches_the_origin_is_well_framed_and_clean(data: bytes, cuts: list[int]) -> None:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    run = drive([data[a:b] for a, b in itertools.pairwise(bounds)])
    complete = 0
    for raw in run.upstream:
        for method, target, headers, _, done in origin_view(raw):  # parses, or this raises
            assert target == b"/p"
            assert method.endswith((b"GET", b"POST", b"HEAD", b"PUT"))  # bogus bytes may lead
            names = [name.lower() for name, _ in headers]
            assert names[0] == b"host"
            assert names.count(b"host") == 1
            assert not [n for n in names if n.startswith(b"proxy-")]
            assert not {b"connection", b"keep-alive", b"upgrade", b"te"} & set(names)
            assert names.count(b"content-length") <= 1
            complete += done
    # Every request the origin saw whole was one the framer checked and let through.
    assert complete <= len(run.requests)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_framed_or_refused(data: bytes) -> None:
    run = drive([b"GET http://a.test/ HTTP/1.1\r\n\r\n" + data])
    for raw in run.upstream:
        origin_view(raw)
    assert run.failure in (None, Failure.MALFORMED, Failure.HEAD_TOO_LARGE, Failure.UNSUPPORTED)
