"""The byte pump: two asyncio protocols that write what they read to each other.

One `Pump` sits on each socket of a tunnel. No task runs per direction: the event loop calls
``data_received`` and the pump hands the bytes straight to the peer's transport, so an idle
tunnel costs two small objects and its two transports.

Rules:
- Backpressure: when a transport's write buffer passes its high-water mark, the loop calls
  ``pause_writing`` on the pump that owns it, and that pump stops reading from its peer until
  ``resume_writing`` (uvicorn's flow control). A client that never reads holds at most one
  buffer's worth of the destination's bytes in the proxy.
- Half-close: an EOF from one side is passed on with ``write_eof``; the tunnel closes when
  both sides have sent EOF, or at once when either side closes or resets.
- The `Tunnel` learns when both sockets are closed, and reports once.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import cast

__all__ = ["Pump", "Tunnel", "tune_socket"]


def tune_socket(sock: socket.socket | None) -> None:
    """TCP_NODELAY (chat frames leave at once) and keepalive (dead peers are found)."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass  # the peer may already be gone; the relay will see it


class Tunnel:
    """Both pumps of one tunnel, and the callback to run once both have closed."""

    __slots__ = ("client", "on_closed", "open_sides", "upstream")

    def __init__(self, on_closed: Callable[[Tunnel], None]) -> None:
        self.client = Pump(self)
        self.upstream = Pump(self)
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        self.on_closed = on_closed
        self.open_sides = 2

    def close(self) -> None:
        """Close both sockets, flushing what is buffered."""
        for pump in (self.client, self.upstream):
            if pump.transport is not None:
                pump.transport.close()

    def _side_closed(self) -> None:
        self.open_sides -= 1
        if self.open_sides == 0:
            self.on_closed(self)


class Pump(asyncio.Protocol):
    """One socket of a tunnel. ``received`` counts the bytes read from it."""

    __slots__ = ("eof", "peer", "received", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.peer: Pump = self
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        peer = self.peer.transport
        if peer is not None:
            peer.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer.transport
        if peer is None or self.peer.eof or not peer.can_write_eof():
            return False  # both directions are done: let the transport close
        peer.write_eof()
        return True  # keep our write side open for the peer's remaining bytes

    def pause_writing(self) -> None:
        peer = self.peer.transport
        if peer is not None:
            peer.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer.transport
        if peer is not None:
            peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer.transport
        if peer is not None:
            peer.close()
        self.tunnel._side_closed()
