"""The servers the clients reach through the proxy, all on one event loop in a thread.

They run in their own thread so that a test may block on a subprocess (curl, node) while
the servers keep answering. Every server listens on 127.0.0.1 (or [::1] for the trap) on a
port the kernel picks.

- HTTPS (aiohttp, TLS from a trustme CA): ``/hello`` (JSON about the request), ``/payload``
  (the deterministic 50 MiB `Payload`, streamed), ``/ws`` (WebSocket echo).
- HTTP (aiohttp, plain): ``/echo`` (JSON: method, path, Host, body size and sha256).
- TCP echo: returns every byte it reads, until the client closes.
- TCP half-close answerer: reads to EOF, then writes ``got N SHA256\\n`` and closes; it can
  only answer if the client's FIN came through while the other direction stayed open.
- Trap (`start_trap`): the plain HTTP app on 127.0.0.1:P and, on [::1]:P, a listener
  that records every peer that connects and closes at once.
- Recording origin (`start_recording_origin`): plain HTTP/1.1 with keep-alive (h11),
  which keeps the exact bytes each connection sent it and what each request was; it
  answers JSON about the request, or ``/download/N``: N bytes of `download_byte`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import h11
from aiohttp import WSMsgType, web

__all__ = [
    "BINARY_WS_SIZE",
    "LoopThread",
    "OriginRequest",
    "Payload",
    "RecordingOrigin",
    "TestServers",
    "Trap",
    "binary_ws_message",
    "download_byte",
    "payload_handler",
    "start_recording_origin",
    "start_servers",
    "start_trap",
    "ws_echo",
]

T = TypeVar("T")

# Bounds for anything that waits on the server thread.
_CALL_SECONDS = 30.0
_JOIN_SECONDS = 10.0
_MIB = 1024 * 1024
# The size of the binary WebSocket message clients send (larger than one TLS record, one
# TCP segment and one relay read, so it must be reassembled across several).
BINARY_WS_SIZE = 300_000
# The half-close answerer stops reading after this much, so a broken client cannot fill memory.
_HALF_CLOSE_LIMIT = 64 * _MIB


def binary_ws_message(size: int = BINARY_WS_SIZE) -> bytes:
    """The deterministic binary message the WebSocket clients send (Node computes the same)."""
    return bytes(i % 251 for i in range(size))


@dataclass(frozen=True)
class Payload:
    """A deterministic download of `blocks` MiB; each MiB differs (its index heads it)."""

    blocks: int = 50
    seed: int = 0x1B4

    @property
    def size(self) -> int:
        return self.blocks * _MIB

    @cached_property
    def _base(self) -> bytes:
        return random.Random(self.seed).randbytes(_MIB)

    def chunks(self) -> Iterator[bytes]:
        """Yield the payload one MiB at a time (one base block is kept, never the whole)."""
        base = self._base
        for index in range(self.blocks):
            yield index.to_bytes(8, "big") + base[8:]

    @cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


class LoopThread:
    """An asyncio event loop running in a daemon thread until `stop()`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="test-servers", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def call(
        self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = _CALL_SECONDS
    ) -> T:
        """Run the coroutine that `factory` makes on the loop; wait for it, bounded."""
        future = asyncio.run_coroutine_threadsafe(factory(), self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(_JOIN_SECONDS)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class _TcpServer:
    server: asyncio.Server
    port: int
    peers: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class TestServers:
    """Ports of every server, and what the trap saw. Built by `start_servers`."""

    __test__ = False  # not a pytest test class, whatever its name

    https_port: int
    http_port: int
    echo_port: int
    half_close_port: int
    _close: Callable[[], Awaitable[None]]

    async def close(self) -> None:
        await self._close()


@dataclass
class Trap:
    """The plain HTTP app on 127.0.0.1:`port` and, on [::1]:`port`, a trap that records peers."""

    port: int
    _peers: list[tuple[str, int]]
    _close: Callable[[], Awaitable[None]]

    async def peers(self) -> list[tuple[str, int]]:
        """Peers that connected to the [::1] side so far (await it on the server loop)."""
        return list(self._peers)

    async def close(self) -> None:
        await self._close()


async def _hello(request: web.Request) -> web.Response:
    return web.json_response(
        {"path": request.path_qs, "host": request.headers.get("Host", ""), "tls": request.secure}
    )


def payload_handler(payload: Payload) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler that streams `payload` (also the lab service's /media)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = payload.size
        await response.prepare(request)
        for chunk in payload.chunks():
            await response.write(chunk)
        await response.write_eof()
        return response

    return handler


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    """An aiohttp WebSocket handler that echoes every text and binary message (here and in
    the lab service)."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def _http_echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path_qs,
            "host": request.headers.get("Host", ""),
            "body_size": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "via_proxy_headers": sorted(
                h for h in request.headers if h.lower().startswith("proxy-")
            ),
        }
    )


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        for _ in range(1_000_000):  # bounded: at most ~64 GiB, far beyond any test
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _half_close_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    digest = hashlib.sha256()
    size = 0
    try:
        for _ in range(_HALF_CLOSE_LIMIT // 4096 + 1):
            data = await reader.read(65536)
            if not data:
                writer.write(f"got {size} {digest.hexdigest()}\n".encode())
                await writer.drain()
                break
            size += len(data)
            digest.update(data)
            if size > _HALF_CLOSE_LIMIT:
                break
    except ConnectionError:
        pass
    finally:
        writer.close()


def _listening(sock: socket.socket) -> socket.socket:
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _tcp_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    sock: socket.socket,
) -> _TcpServer:
    server = await asyncio.start_server(handler, sock=_listening(sock))
    return _TcpServer(server=server, port=sock.getsockname()[1])


async def _app_site(
    app: web.Application, ssl_context: ssl.SSLContext | None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock, ssl_context=ssl_context)
    await site.start()
    port: int = sock.getsockname()[1]
    return runner, port


async def start_servers(server_ssl: ssl.SSLContext, payload: Payload) -> TestServers:
    """Start every server on the running loop (the trap aside: see `start_trap`)."""
    https = web.Application()
    https.router.add_get("/hello", _hello)
    https.router.add_get("/payload", payload_handler(payload))
    https.router.add_get("/ws", ws_echo)
    https_runner, https_port = await _app_site(https, server_ssl)

    http = web.Application()
    http.router.add_route("*", "/echo", _http_echo)
    http_runner, http_port = await _app_site(http, None)

    def fresh_v4() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        return sock

    echo = await _tcp_server(_echo, fresh_v4())
    half_close = await _tcp_server(_half_close_answer, fresh_v4())

    async def close() -> None:
        for server in (echo, half_close):
            server.server.close()
        await https_runner.cleanup()
        await http_runner.cleanup()
        for server in (echo, half_close):
            await server.server.wait_closed()

    return TestServers(
        https_port=https_port,
        http_port=http_port,
        echo_port=echo.port,
        half_close_port=half_close.port,
        _close=close,
    )


async def start_trap(sockets: tuple[socket.socket, socket.socket]) -> Trap:
    """Start the trap pair on the running loop; `sockets` come from net.bind_dual_port().

    The 127.0.0.1 side serves the plain HTTP app (``/echo``), so it can be reached both
    through a tunnel and by forwarding.
    """
    target_socket, trap_socket = sockets
    app = web.Application()
    app.router.add_route("*", "/echo", _http_echo)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, target_socket).start()
    peers: list[tuple[str, int]] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peers.append((str(peer[0]), int(peer[1])))
        writer.close()

    trap = await _tcp_server(record, trap_socket)

    async def close() -> None:
        trap.server.close()
        await runner.cleanup()
        await trap.server.wait_closed()

    return Trap(port=target_socket.getsockname()[1], _peers=peers, _close=close)


def payload_json(data: bytes) -> dict[str, Any]:
    """Decode a JSON object answered by /hello or /echo."""
    decoded = json.loads(data)
    if not isinstance(decoded, dict):
        raise TypeError(f"expected a JSON object, got {decoded!r}")
    return decoded


# --- the recording origin -------------------------------------------------------------------

# Bounds of the recording origin: bytes kept per connection, requests per connection.
_RECORD_LIMIT = 64 * _MIB
_ORIGIN_REQUESTS = 1_000


def download_byte(index: int) -> int:
    """Byte ``index`` of every /download body (a pattern that shows a shift or a loss)."""
    return index % 251


@dataclass
class OriginRequest:
    """One request as the recording origin parsed it."""

    connection: int  # index into RecordingOrigin.received
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_size: int = 0
    body_sha256: str = ""


@dataclass
class RecordingOrigin:
    """A plain HTTP/1.1 origin that keeps what it received. Read the lists once the
    exchange under test is over (they are appended to on the server thread)."""

    port: int
    received: list[bytearray]  # the exact bytes, one entry per connection
    requests: list[OriginRequest]
    _close: Callable[[], Awaitable[None]]

    def bytes_received(self) -> bytes:
        return b"".join(bytes(raw) for raw in self.received)

    async def close(self) -> None:
        await self._close()


async def _download(writer: asyncio.StreamWriter, conn: h11.Connection, size: int) -> None:
    writer.write(conn.send(h11.Response(status_code=200, headers=[("Content-Length", str(size))])))
    block = bytes(download_byte(i) for i in range(251 * 1024))
    sent = 0
    while sent < size:  # bounded by size
        piece = block[: min(len(block), size - sent)]
        writer.write(conn.send(h11.Data(data=piece)))
        await writer.drain()
        sent += len(piece)
    writer.write(conn.send(h11.EndOfMessage()))


async def _answer(
    writer: asyncio.StreamWriter, conn: h11.Connection, request: OriginRequest
) -> None:
    if request.target.startswith("/download/"):
        await _download(writer, conn, int(request.target.rsplit("/", 1)[1]))
        return
    body = json.dumps(
        {
            "method": request.method,
            "target": request.target,
            "headers": request.headers,
            "body_size": request.body_size,
            "body_sha256": request.body_sha256,
        }
    ).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
    writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))


async def _record(
    origin: RecordingOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    raw = bytearray()
    origin.received.append(raw)
    index = len(origin.received) - 1
    conn = h11.Connection(h11.SERVER)
    request: OriginRequest | None = None
    digest = hashlib.sha256()
    try:
        for _ in range(_ORIGIN_REQUESTS * 100_000):  # bounded: reads and events
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if len(raw) < _RECORD_LIMIT:
                    raw += data
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = OriginRequest(
                    index,
                    event.method.decode(),
                    event.target.decode(),
                    [(k.decode(), v.decode()) for k, v in event.headers.raw_items()],
                )
                digest = hashlib.sha256()
            elif isinstance(event, h11.Data) and request is not None:
                request.body_size += len(event.data)
                digest.update(event.data)
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                request.body_sha256 = digest.hexdigest()
                origin.requests.append(request)
                await _answer(writer, conn, request)
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
            else:  # ConnectionClosed, PAUSED
                break
    except (h11.ProtocolError, ConnectionError):
        pass
    finally:
        writer.close()


async def start_recording_origin() -> RecordingOrigin:
    """Start a recording origin on 127.0.0.1 on the running loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    received: list[bytearray] = []
    requests: list[OriginRequest] = []
    holder: list[RecordingOrigin] = []
    server = await asyncio.start_server(
        lambda r, w: _record(holder[0], r, w), sock=_listening(sock)
    )

    async def close() -> None:
        server.close()
        await server.wait_closed()

    origin = RecordingOrigin(sock.getsockname()[1], received, requests, close)
    holder.append(origin)
    return origin
