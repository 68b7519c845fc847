"""Peers that stall a relay, for the in-process relay-memory tests (tunnels and forwarding).

A client whose small receive buffer fills because it never reads (download), or one that
writes until its socket takes no more while the destination never reads (upload); a
destination that never reads (`Sink`); and `settled`, the bytes a proxy's relay holds
once they stop changing. Every loop is bounded.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import uvloop

from ipv4proxy.server import Proxy

__all__ = ["LOOPS", "Sink", "settled", "stalled_client"]

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
CHUNK = 64 * 1024


class Sink:
    """A destination that never reads: its receive buffer fills and stays full."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)

    def reset(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


async def stalled_client(
    proxy_port: int, request: bytes, *, upload: bool, reply: bytes = b""
) -> socket.socket:
    """Connect with a 4 KiB receive buffer, send ``request``, read ``reply`` (exactly, when
    given), then never read again; ``upload`` writes until the socket takes no more (16 MiB
    at most: far past what the sockets on the way hold). Returns the client socket."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", proxy_port))
    await loop.sock_sendall(sock, request)
    if reply:
        head = await loop.sock_recv(sock, len(reply))
        assert head == reply, head
    if upload:
        chunk = b"u" * CHUNK
        for _ in range(256):
            try:
                sock.send(chunk)
            except BlockingIOError:
                break
            await asyncio.sleep(0)
    return sock


async def settled(proxy: Proxy) -> int:
    """The bytes the relay holds once they stop changing (bounded: 10 s)."""
    last = -1
    for _ in range(100):
        await asyncio.sleep(0.1)
        if proxy.buffers.held == last:
            break
        last = proxy.buffers.held
    return proxy.buffers.held
