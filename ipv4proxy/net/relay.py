"""The byte pump: two buffered asyncio protocols that write what they read to each other.

One `Pump` sits on each socket of a tunnel. No task runs per direction: the event loop reads
straight into a buffer the pump lends it (``get_buffer``) and the pump hands a view of those
bytes to the peer's transport (``buffer_updated``), so relaying costs one read and one write
system call and no copy in between; an idle tunnel costs two small objects and its two
transports, and holds no buffer.

Rules:
- Read buffers are shared by every pump of the process (`_Buffers`): a read lands in the
  current buffer, and when the peer's socket takes every byte at once (the usual case) the
  buffer is free again for the next read of any tunnel.
- Backpressure: each transport's write-buffer limits are (0, 0), so a write the kernel does
  not take whole pauses the pump that made it. The unsent bytes are a view of the shared
  buffer, so that buffer is handed to the paused pump (``held``) and the pool moves on to
  another; when the write has drained (``resume_writing``) the buffer returns to the pool and
  the pump reads again. A client that never reads holds at most one buffer in the proxy.
- Half-close: an EOF from one side is passed on with ``write_eof``; the tunnel closes when
  both sides have sent EOF, or at once when either side closes or resets.
- The `Tunnel` learns when both sockets are closed, and reports once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import cast

__all__ = ["READ_SIZE", "Pump", "Tunnel", "tune_socket"]

# One read takes up to this much: large enough that a bulk transfer costs few Python calls
# per megabyte (loopback socket buffers hold a few MiB), small enough to stay in cache.
READ_SIZE = 256 * 1024
# Buffers kept for reuse once drained; more are only ever needed while that many tunnels
# are stalled on a slow reader at once, and those are freed when they drain.
POOL_SIZE = 16


def tune_socket(sock: socket.socket | None) -> None:
    """Keepalive, so that dead peers are found.

    TCP_NODELAY (chat frames leave at once) is already set on every TCP transport by both
    uvloop and asyncio, so it is not set again here: one system call less per socket.
    """
    if sock is None:
        return
    with contextlib.suppress(OSError):  # the peer may be gone already; the relay will see it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class _Buffers:
    """The read buffers shared by every pump: the one reads go into, and spares."""

    __slots__ = ("current", "spare", "view")

    def __init__(self) -> None:
        self.spare: list[bytearray] = []
        self.current = bytearray(READ_SIZE)
        self.view = memoryview(self.current)

    def take(self) -> bytearray:
        """Give away the current buffer (a transport still holds a view of it)."""
        taken = self.current
        self.current = self.spare.pop() if self.spare else bytearray(READ_SIZE)
        self.view = memoryview(self.current)
        return taken

    def give(self, buffer: bytearray) -> None:
        """Take back a buffer no transport refers to any more."""
        if len(self.spare) < POOL_SIZE:
            self.spare.append(buffer)


_buffers = _Buffers()


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


class Pump(asyncio.BufferedProtocol):
    """One socket of a tunnel. ``received`` counts the bytes read from it."""

    __slots__ = ("eof", "held", "on_made", "peer", "received", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.peer: Pump = self
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.eof = False
        # The buffer whose bytes the peer's transport is still sending; None when idle.
        self.held: bytearray | None = None
        # Run once when the transport is adopted, before the loop reads from it (the server
        # wires the tunnel there when the loop makes the upstream transport itself).
        self.on_made: Callable[[asyncio.Transport], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Adopt ``transport``; also called by the server for the client's socket."""
        self.transport = cast(asyncio.Transport, transport)
        # Pause on any unsent byte and resume only when all are sent: see the module rules.
        self.transport.set_write_buffer_limits(0, 0)
        on_made = self.on_made
        if on_made is not None:
            self.on_made = None
            on_made(self.transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _buffers.view

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        peer = self.peer.transport
        if peer is None:
            return
        if self.held is None:
            peer.write(_buffers.view[:nbytes])
        else:  # still sending an earlier read (reading was resumed by someone else): copy
            peer.write(bytes(_buffers.view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """Never called on a buffered protocol; defined because uvloop's set_protocol()
        keeps the previous protocol's ``data_received`` when the new one has none, and
        with it the whole handshake session (1.5 KiB per idle tunnel, measured)."""
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
        # Called from inside the peer's write: the bytes left over are in the current
        # shared buffer, which now belongs to the peer until they are sent.
        peer = self.peer
        if peer.held is None:
            peer.held = _buffers.take()
        if peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer.held is not None:
            _buffers.give(peer.held)
            peer.held = None
        if peer.transport is not None:
            peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        # A buffer still held is left to the garbage collector, not the pool: the closed
        # transport may keep a view of it until it is torn down.
        self.held = None
        self.peer.held = None
        peer = self.peer.transport
        if peer is not None:
            peer.close()
        self.tunnel._side_closed()
