"""The byte pump: two buffered asyncio protocols that write what they read to each other.

One `Pump` sits on each socket of a tunnel. No task runs per direction: the event loop reads
straight into a buffer the pump lends it (``get_buffer``), and the pump writes those bytes to
the peer's socket at once (``buffer_updated``), so relaying costs one read and one write
system call and no copy in between; an idle tunnel costs two small objects and its two
transports, and holds no buffer.

Rules:
- One read buffer for every pump of the process (`Buffers`): a read lands in it and is
  written to the peer's socket straight from it (``os.write`` on the peer's descriptor
  while the peer's transport has nothing queued, so the order of bytes is kept). When the
  peer's socket takes every byte (the usual case) nothing is left behind and the buffer
  is free for the next read of any tunnel.
- Backpressure: bytes the peer's socket did not take are copied out, exactly those bytes,
  and queued on the peer's transport, whose write-buffer limits are (0, 0): any unsent
  byte pauses the pump that read them (``pause_writing``), and it reads again once they
  are all sent (``resume_writing``). A stalled tunnel holds only what it could not send.
- One budget for every byte held that way in the process (``Buffers.budget``, the setting
  ``limits.relay_memory``). While less than a whole read is left of it, reads are cut to
  what is left, and to MIN_READ when nothing is: no read can then leave more than that
  behind. Held bytes are therefore at most ``budget + MIN_READ`` per pump stalled while
  the budget was spent, never READ_SIZE per stalled tunnel; tunnels that are not stalled
  keep moving (in smaller reads) and hold nothing.
- Half-close: an EOF from one side is passed on with ``write_eof``; the tunnel closes when
  both sides have sent EOF, or at once when either side closes or resets. A closing
  transport is never written to (its descriptor may already be another socket's).
- The `Tunnel` learns when both sockets are closed, and reports once.
- The open tunnels of a process are a `Tunnels` registry: the server adds and removes
  them, and asks it to sweep idle ones, to cut them all, and what each moved; nothing
  outside this module touches a pump's fields. Idle tunnels are found by one sweep per
  process, not a timer per tunnel or per read: each sweep compares a tunnel's byte
  counters with the last sweep's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import cast

__all__ = ["MIN_READ", "READ_SIZE", "Buffers", "Pump", "Tunnel", "Tunnels", "tune_socket"]

# One read takes up to this much: large enough that a bulk transfer costs few Python calls
# per megabyte (loopback socket buffers hold a few MiB), small enough to stay in cache.
READ_SIZE = 256 * 1024
# The read size once the budget is spent: one page. It bounds what a tunnel that stalls
# then can hold (4,000 such tunnels: 16 MiB), while the others still move ~100 MB/s each.
MIN_READ = 4096


def tune_socket(sock: socket.socket | None) -> None:
    """Keepalive, so that dead peers are found.

    TCP_NODELAY (chat frames leave at once) is already set on every TCP transport by both
    uvloop and asyncio, so it is not set again here: one system call less per socket.
    """
    if sock is None:
        return
    with contextlib.suppress(OSError):  # the peer may be gone already; the relay will see it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class Buffers:
    """The read buffer every pump shares, and the budget of bytes held for slow peers.

    ``held`` is the sum of every pump's ``held``: bytes read but not yet taken by the
    peer's socket. One instance per Proxy.
    """

    __slots__ = ("budget", "buffer", "held", "view")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held = 0
        self.buffer = bytearray(READ_SIZE)
        self.view = memoryview(self.buffer)

    def release(self, pump: Pump) -> None:
        """Give the budget back the bytes ``pump`` held (sent, or dropped with a socket)."""
        self.held -= pump.held
        pump.held = 0

    def read_view(self) -> memoryview:
        """Where the next read goes: the whole buffer, or only what the budget allows."""
        free = self.budget - self.held
        if free >= READ_SIZE:
            return self.view
        return self.view[: max(MIN_READ, free)]


class Tunnel:
    """Both pumps of one tunnel, and the callback to run once both have closed.

    ``moved`` and ``since`` are the `Tunnels` sweep's: the bytes moved at the last sweep
    and the loop time they last changed; ``idle`` says the sweep aborted it."""

    __slots__ = ("client", "idle", "moved", "on_closed", "open_sides", "since", "upstream")

    def __init__(self, on_closed: Callable[[Tunnel], None], buffers: Buffers) -> None:
        self.client = Pump(self, buffers)
        self.upstream = Pump(self, buffers)
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        self.on_closed = on_closed
        self.open_sides = 2
        self.moved = 0
        self.since = 0.0
        self.idle = False

    @property
    def sent(self) -> int:
        """Bytes read from the client (sent upstream, or on their way)."""
        return self.client.received

    @property
    def received(self) -> int:
        """Bytes read from the upstream (sent to the client, or on their way)."""
        return self.upstream.received

    def close(self) -> None:
        """Close both sockets, flushing what is buffered."""
        for pump in (self.client, self.upstream):
            if pump.transport is not None:
                pump.transport.close()

    def abort(self) -> None:
        """Close both sockets now, dropping what is buffered (close() would wait on a
        reader that never reads)."""
        for pump in (self.client, self.upstream):
            if pump.transport is not None:
                pump.transport.abort()

    def relay(self, client: asyncio.Transport, first: bytes) -> None:
        """Relay between ``client`` (until now another protocol's) and the upstream, whose
        transport the upstream pump has; ``first`` (the client's early data) goes upstream
        before anything else. Reading the client resumes once the upstream took it all."""
        upstream = self.upstream.transport
        assert upstream is not None
        pump = self.client
        pump.connection_made(client)  # adopts it and sets its flow control
        client.set_protocol(pump)
        if first:
            pump.received += len(first)
            upstream.write(first)
        # If the destination did not take the first bytes whole, the write paused the
        # client: the upstream pump's resume_writing resumes it, not us.
        if not upstream.get_write_buffer_size():
            client.resume_reading()

    def _side_closed(self) -> None:
        self.open_sides -= 1
        if self.open_sides == 0:
            self.on_closed(self)


class Pump(asyncio.BufferedProtocol):
    """One socket of a tunnel. ``received`` counts the bytes read from it; ``held`` is how
    many of them the peer's transport has still to send."""

    __slots__ = (
        "buffers",
        "eof",
        "fd",
        "held",
        "on_made",
        "peer",
        "received",
        "transport",
        "tunnel",
    )

    def __init__(self, tunnel: Tunnel, buffers: Buffers) -> None:
        self.tunnel = tunnel
        self.buffers = buffers
        self.peer: Pump = self
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.received = 0
        self.eof = False
        self.held = 0
        # Run once when the transport is adopted, before the loop reads from it: the
        # server's "upstream connected", where it starts the relay (`Tunnel.relay`), so
        # the success reply goes out before any upstream byte can.
        self.on_made: Callable[[asyncio.Transport], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Adopt ``transport``; also called by the server for the client's socket."""
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        # Pause on any unsent byte and resume only when all are sent: see the module rules.
        self.transport.set_write_buffer_limits(0, 0)
        on_made = self.on_made
        if on_made is not None:
            self.on_made = None
            on_made(self.transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffers.read_view()

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        self._send(self.buffers.view[:nbytes])

    def data_received(self, data: bytes) -> None:
        """Never called on a buffered protocol; defined because uvloop's set_protocol()
        keeps the previous protocol's ``data_received`` when the new one has none, and
        with it the whole handshake session (1.5 KiB per idle tunnel, measured)."""
        self.received += len(data)
        self._send(memoryview(data))

    def _send(self, data: memoryview) -> None:
        """Write ``data`` to the peer's socket; queue (a copy of) what it does not take."""
        peer = self.peer
        transport = peer.transport
        if transport is None or transport.is_closing():
            return  # the tunnel is closing: nobody will read these bytes
        sent = 0
        if peer.fd >= 0 and not transport.get_write_buffer_size():
            try:
                sent = os.write(peer.fd, data)
            except BlockingIOError:
                pass
            except OSError:
                # Reset or broken: let the transport meet the error and close the tunnel.
                transport.write(bytes(data))
                return
            if sent == len(data):
                return
        rest = bytes(data[sent:])
        self.held += len(rest)
        self.buffers.held += len(rest)
        transport.write(rest)  # pauses us: see pause_writing

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer.transport
        if peer is None or self.peer.eof or not peer.can_write_eof():
            return False  # both directions are done: let the transport close
        peer.write_eof()
        return True  # keep our write side open for the peer's remaining bytes

    def pause_writing(self) -> None:
        # Our transport did not send everything the peer read: stop the peer reading.
        transport = self.peer.transport
        if transport is not None:
            transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        self.buffers.release(peer)
        if peer.transport is not None:
            peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        # What the peer read and our transport still held is gone with it. (What we read
        # is in the peer's transport, which is closed below: its connection_lost counts it.)
        self.buffers.release(self.peer)
        peer = self.peer.transport
        if peer is not None:
            peer.close()
        self.tunnel._side_closed()


class Tunnels:
    """The open tunnels of one process: what the server asks of the relay as a whole."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: set[Tunnel] = set()

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, tunnel: Tunnel) -> bool:
        return tunnel in self._open

    def add(self, tunnel: Tunnel, now: float) -> None:
        tunnel.moved, tunnel.since = 0, now
        self._open.add(tunnel)

    def remove(self, tunnel: Tunnel) -> bool:
        """Forget a closed tunnel; False when it was not open (or forgotten already)."""
        if tunnel not in self._open:
            return False
        self._open.discard(tunnel)
        return True

    def sweep(self, now: float, timeout: float) -> int:
        """Abort the tunnels that moved no byte for ``timeout`` seconds (they are marked
        ``idle``); returns how many. O(open tunnels)."""
        aborted = 0
        for tunnel in list(self._open):
            moved = tunnel.client.received + tunnel.upstream.received
            if moved != tunnel.moved:
                tunnel.moved, tunnel.since = moved, now
            elif now - tunnel.since >= timeout and not tunnel.idle:
                tunnel.idle = True
                tunnel.abort()
                aborted += 1
        return aborted

    def cut(self) -> int:
        """Abort every open tunnel; returns how many there were."""
        count = len(self._open)
        for tunnel in list(self._open):
            tunnel.abort()
        return count
