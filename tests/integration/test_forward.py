"""The forward path request by request, over real sockets: what an origin receives.

A recording origin (tests/helpers/servers.py) keeps the exact bytes each connection sent
it. Every request on a client connection must reach it rewritten (origin-form, no
Proxy-* or hop-by-hop header) and re-framed, or not at all: a pipelined second request,
bogus chunk framing with a request smuggled behind it, conflicting Content-Length values,
a second request for another origin, a later request that policy refuses, 10 MiB each
way, and curl's own keep-alive.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.programs import run_curl
from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.servers import (
    LoopThread,
    RecordingOrigin,
    TestServers,
    download_byte,
    payload_json,
    start_recording_origin,
)
from helpers.wire import WIRE_SECONDS, HttpReply, Tunnel, open_tunnel_socket, read_http_reply

MIB = 1024 * 1024
BIG = 10 * MIB
PIECE = 64 * 1024


@pytest.fixture
def origin(server_loop: LoopThread) -> Iterator[RecordingOrigin]:
    started = server_loop.call(start_recording_origin)
    yield started
    server_loop.call(started.close)


@pytest.fixture
def other_origin(server_loop: LoopThread) -> Iterator[RecordingOrigin]:
    started = server_loop.call(start_recording_origin)
    yield started
    server_loop.call(started.close)


@pytest.fixture(scope="module")
def auth_proxy(proxy_factory: ProxyFactory) -> Iterator[ProxyProcess]:
    process = proxy_factory(("--auth-users", "alice:secret"))
    yield process
    process.stop()


ALICE = "Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n"  # alice:secret


def get(url: str, host: str, extra: str = "") -> bytes:
    return f"GET {url} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


async def send(tunnel: Tunnel, data: bytes) -> None:
    tunnel.writer.write(data)
    async with asyncio.timeout(WIRE_SECONDS):
        await tunnel.writer.drain()


async def reply(tunnel: Tunnel) -> HttpReply:
    return await read_http_reply(tunnel, read_body=True)


async def refused(proxy: ProxyProcess, data: bytes) -> tuple[Tunnel, HttpReply, bytes]:
    """Send ``data`` on a new connection; the answer, and what follows it until the close."""
    tunnel = await open_tunnel_socket(proxy.port)
    await send(tunnel, data)
    answer = await reply(tunnel)
    rest = await tunnel.read_to_eof()
    await tunnel.close()
    return tunnel, answer, rest


def assert_clean(raw: bytes) -> None:
    """What an origin received holds no Proxy-* and no hop-by-hop header."""
    lowered = raw.lower()
    for name in (b"\r\nproxy-", b"\r\nconnection:", b"\r\nkeep-alive:", b"\r\nx-hop:"):
        assert name not in lowered, raw


async def test_pipelined_second_request_is_rewritten(
    proxy: ProxyProcess, origin: RecordingOrigin
) -> None:
    """Two requests in one write: the origin gets both rewritten, on one connection."""
    base = f"http://127.0.0.1:{origin.port}"
    host = f"127.0.0.1:{origin.port}"
    hop = "Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\n"
    tunnel = await open_tunnel_socket(proxy.port)
    await send(
        tunnel,
        get(f"{base}/one", host, hop)
        + get(f"{base}/two?q=1", "evil.example", hop + "Connection: X-Hop\r\nX-Hop: 1\r\n"),
    )
    first, second = await reply(tunnel), await reply(tunnel)
    await tunnel.close()
    assert (first.status, second.status) == (200, 200), (first, second)
    assert json.loads(first.body)["target"] == "/one"
    assert json.loads(second.body)["target"] == "/two?q=1"
    assert len(origin.received) == 1  # the upstream connection was kept for the second
    raw = origin.bytes_received()
    one = f"GET /one HTTP/1.1\r\nHost: {host}\r\n\r\n"
    two = f"GET /two?q=1 HTTP/1.1\r\nHost: {host}\r\n\r\n"
    assert raw == (one + two).encode()
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened, protocol="http-forward")
    assert fields["requests"] == "2", fields
    assert fields["outcome"] == "ok", fields


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        (b"100000000000000000000\r\nabc\r\n0\r\n\r\n", "illegal chunk header"),
        (
            b"5\r\nhelloXX\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            "malformed chunk footer",
        ),
        (b"5\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", "chunk header"),
        (b"z\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", "illegal chunk header"),
    ],
    ids=["absurd-size", "bad-footer-smuggle", "bare-lf-smuggle", "not-hex-smuggle"],
)
async def test_bogus_chunked_is_400_and_nothing_unparsed_reaches_the_origin(
    proxy: ProxyProcess, origin: RecordingOrigin, body: bytes, cause: str
) -> None:
    host = f"127.0.0.1:{origin.port}"
    head = f"POST http://{host}/up HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
    tunnel, answer, rest = await refused(proxy, head.encode() + body)
    assert answer.status == 400, answer
    assert cause in answer.body_text, answer
    assert answer.body_text.count("\n") == 1, answer
    assert rest == b""  # and the connection closed
    # The origin saw the rewritten head and at most the chunks that were well framed, in
    # our framing; never the bogus bytes or the request behind them, and no whole request.
    raw = origin.bytes_received()
    expected = f"POST /up HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert raw in (b"", expected.encode(), expected.encode() + b"5\r\nhello\r\n"), raw
    assert not origin.requests
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened, outcome="MALFORMED")
    assert cause in fields["reason"], fields


async def test_content_length_5_and_005_is_400(
    proxy: ProxyProcess, origin: RecordingOrigin
) -> None:
    """RFC 9110 8.6 lets a recipient reject repeated Content-Length values, and h11 does
    when they are written differently; forwarding both (as before) lets the origin and
    any other hop read the body two ways. RFC 9112 6.3 (5): invalid framing is answered
    400 and the connection closed."""
    host = f"127.0.0.1:{origin.port}"
    data = (
        f"POST http://{host}/up HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Length: 5\r\nContent-Length: 005\r\n\r\nhello"
    ).encode()
    tunnel, answer, _ = await refused(proxy, data)
    assert answer.status == 400, answer
    assert "Content-Length" in answer.body_text, answer
    assert origin.received == []  # refused before anything was dialled
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened, outcome="MALFORMED")
    assert "Content-Length" in fields["reason"], fields


async def test_later_request_with_bad_framing_is_400(
    proxy: ProxyProcess, origin: RecordingOrigin
) -> None:
    """The checks of the first request hold for a later one on the same connection."""
    host = f"127.0.0.1:{origin.port}"
    later = (
        f"POST http://{host}/two HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ).encode()
    tunnel = await open_tunnel_socket(proxy.port)
    await send(tunnel, get(f"http://{host}/one", host) + later)
    first, second = await reply(tunnel), await reply(tunnel)
    assert await tunnel.read_to_eof() == b""
    await tunnel.close()
    assert (first.status, second.status) == (200, 400), (first, second)
    assert [r.target for r in origin.requests] == ["/one"]
    assert b"/two" not in origin.bytes_received()


async def test_second_origin_gets_its_own_connection(
    proxy: ProxyProcess, origin: RecordingOrigin, other_origin: RecordingOrigin
) -> None:
    """Keep-alive across origins: the client connection stays; each origin gets its own
    upstream connection and only its own requests."""
    a, b = f"127.0.0.1:{origin.port}", f"127.0.0.1:{other_origin.port}"
    tunnel = await open_tunnel_socket(proxy.port)
    answers = []
    for url, host in ((f"http://{a}/1", a), (f"http://{b}/2", b), (f"http://{a}/3", a)):
        await send(tunnel, get(url, host, "Proxy-Connection: keep-alive\r\n"))
        answers.append(await reply(tunnel))
    await tunnel.close()
    assert [answer.status for answer in answers] == [200, 200, 200], answers
    assert [r.target for r in origin.requests] == ["/1", "/3"]
    assert [r.target for r in other_origin.requests] == ["/2"]
    assert len(origin.received) == 2  # closed when the client went to b, dialled again
    assert_clean(origin.bytes_received() + other_origin.bytes_received())
    for target in (b, a):
        fields = await proxy.access(client=tunnel.client, after=tunnel.opened, target=target)
        assert fields["outcome"] == "ok", fields


async def test_later_request_is_checked_by_policy(
    proxy: ProxyProcess, origin: RecordingOrigin
) -> None:
    host = f"127.0.0.1:{origin.port}"
    metadata = get("http://169.254.169.254/latest/meta-data/", "169.254.169.254")
    tunnel = await open_tunnel_socket(proxy.port)
    await send(tunnel, get(f"http://{host}/ok", host) + metadata)
    first, second = await reply(tunnel), await reply(tunnel)
    await tunnel.close()
    assert (first.status, second.status) == (200, 403), (first, second)
    assert [r.target for r in origin.requests] == ["/ok"]
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened, outcome="DENIED")
    assert fields["target"] == "169.254.169.254:80", fields


async def test_later_request_without_credentials_is_407(
    auth_proxy: ProxyProcess, origin: RecordingOrigin
) -> None:
    host = f"127.0.0.1:{origin.port}"
    tunnel = await open_tunnel_socket(auth_proxy.port)
    await send(tunnel, get(f"http://{host}/1", host, ALICE) + get(f"http://{host}/2", host))
    first, second = await reply(tunnel), await reply(tunnel)
    await tunnel.close()
    assert (first.status, second.status) == (200, 407), (first, second)
    assert [r.target for r in origin.requests] == ["/1"]
    assert_clean(origin.bytes_received())


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_10_mib_upload_streams_through(
    proxy: ProxyProcess, origin: RecordingOrigin, framing: str
) -> None:
    host = f"127.0.0.1:{origin.port}"
    block = bytes(range(256)) * (PIECE // 256)
    digest = hashlib.sha256()
    if framing == "chunked":
        header = "Transfer-Encoding: chunked\r\n"
    else:
        header = f"Content-Length: {BIG}\r\n"
    tunnel = await open_tunnel_socket(proxy.port)
    await send(tunnel, f"PUT http://{host}/up HTTP/1.1\r\nHost: {host}\r\n{header}\r\n".encode())
    for _ in range(BIG // PIECE):
        digest.update(block)
        piece = block if framing != "chunked" else b"%x\r\n%s\r\n" % (len(block), block)
        await send(tunnel, piece)
    if framing == "chunked":
        await send(tunnel, b"0\r\n\r\n")
    answer = await reply(tunnel)
    await tunnel.close()
    assert answer.status == 200, answer
    seen = json.loads(answer.body)
    assert (seen["body_size"], seen["body_sha256"]) == (BIG, digest.hexdigest())


async def test_10_mib_download_streams_through(
    proxy: ProxyProcess, origin: RecordingOrigin
) -> None:
    host = f"127.0.0.1:{origin.port}"
    tunnel = await open_tunnel_socket(proxy.port)
    await send(tunnel, get(f"http://{host}/download/{BIG}", host))
    head = await read_http_reply(tunnel, read_body=False)
    assert head.status == 200, head
    assert head.headers["content-length"] == str(BIG)
    expected = bytes(download_byte(i) for i in range(251 * 1024))
    got = 0
    async with asyncio.timeout(WIRE_SECONDS * 2):
        for _ in range(BIG):  # each pass reads at least one byte
            if got == BIG:
                break
            data = await tunnel.reader.read(min(PIECE, BIG - got))
            assert data, f"closed after {got} bytes"
            start = got % len(expected)
            window = (
                (expected * 2)[start : start + len(data)] if len(data) <= len(expected) else b""
            )
            assert data == window, f"bytes differ at {got}"
            got += len(data)
    # The connection is still open for another request.
    await send(tunnel, get(f"http://{host}/after", host))
    after = await reply(tunnel)
    await tunnel.close()
    assert after.status == 200, after


def test_curl_keeps_the_connection_alive(proxy: ProxyProcess, origin: RecordingOrigin) -> None:
    """curl with two URLs reuses its proxy connection; the origin's is reused too."""
    base = f"http://v4.test:{origin.port}"
    mark = proxy.mark()
    result = run_curl(["-v", "--proxy", proxy.url, f"{base}/first", f"{base}/second"])
    assert result.returncode == 0, result.stderr.decode()
    assert b"Re-using existing connection" in result.stderr, result.stderr.decode()
    assert [r.target for r in origin.requests] == ["/first", "/second"]
    assert len(origin.received) == 1
    assert_clean(origin.bytes_received())
    fields = proxy.wait_for_access(since=mark, protocol="http-forward", requests="2")
    assert fields["outcome"] == "ok", fields
    assert not proxy.crash_lines()


def test_curl_expect_100_continue_upload(
    proxy: ProxyProcess, servers: TestServers, tmp_path: Path
) -> None:
    """The origin's 100 Continue reaches curl, which then sends the body."""
    body = bytes(range(256)) * (MIB // 2 // 256)  # under aiohttp's 1 MiB body limit
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    url = f"http://v4.test:{servers.http_port}/echo"
    args = ["-v", "-H", "Expect: 100-continue", "--data-binary", f"@{upload}", url]
    result = run_curl(["--proxy", proxy.url, *args])
    assert result.returncode == 0, result.stderr.decode()
    assert b"< HTTP/1.1 100 Continue" in result.stderr, result.stderr.decode()
    answer = payload_json(result.stdout)
    assert answer["body_size"] == len(body)
    assert answer["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert answer["via_proxy_headers"] == []
