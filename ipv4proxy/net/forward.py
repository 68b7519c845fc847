"""The forward relay: a plain-HTTP client connection, framed request by request.

A `ForwardTunnel` takes a client connection once its first request head is read (the
session hands it over) and runs it to its end: every client byte goes through the framer
(``protocols.forward``) and only what the framer produces is written to an origin; every
origin byte goes through it too, on its way back.

Rules:
- Pumps as in ``net.relay``: the client and each upstream connection have a `Pump`
  subclass, reading into the shared buffer within the relay budget; what a peer's socket
  does not take at once is queued, charged to the budget, and pauses the reading side.
  Bytes the framer holds past a complete request (pipelined) are charged to the relay
  budget while they wait; an unfinished later head is charged to ``handshake_memory``
  like a first one, and refused with 503 over it.
- One request at a time. Client reading stops while a request's response is awaited,
  while an upstream connection is being opened, and while the upstream has unsent bytes.
- Each request is checked by the owner (the session) as the first was: credentials and
  destination policy. A request for the origin of the open upstream connection reuses it;
  for another origin the old connection is closed and a new one opened (its addresses
  checked by policy as for any destination).
- A refused or malformed request gets its HTTP answer with a one-line reason (nothing of
  it went upstream), one access line naming the cause, and the connection closes. A
  broken response gets 502 if nothing of it was sent, else the client connection is cut.
- One access line per upstream connection, when it closes: its target, address, bytes
  each way, requests carried, outcome.
- While the proxy drains, a kept-alive client connection is closed after its response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from ipv4proxy.errors import Failure, ProtocolError, ProxyError
from ipv4proxy.log import event
from ipv4proxy.metrics import CLOSED_OK
from ipv4proxy.net.relay import Buffers, Pump, Tunnel, tune_socket
from ipv4proxy.net.upstream import DIRECT, Connection
from ipv4proxy.protocols.events import Destination, Forward, ProtocolKind
from ipv4proxy.protocols.forward import ForwardFramer, OriginRequest, ResponseEnd, Wait
from ipv4proxy.protocols.http import error_response

__all__ = ["PROTOCOL", "ForwardOwner", "ForwardTunnel"]

log = logging.getLogger("ipv4proxy")
access = logging.getLogger("ipv4proxy.access")

PROTOCOL = ProtocolKind.HTTP_FORWARD


class ForwardOwner(Protocol):
    """What the tunnel asks of the session that handed it the connection."""

    client: str

    def forward_check(self, request: OriginRequest) -> None:
        """Credentials and destination policy; raises ProxyError."""

    async def forward_connect(self, destination: Destination, pump: Pump) -> Connection:
        """Resolve, check the addresses, connect; ``pump`` gets the transport. Raises
        ProxyError."""

    def forward_opened(self, tunnel: Tunnel, seconds: float) -> None:
        """The first upstream connection is open."""

    def forward_ended(self, tunnel: Tunnel) -> str:
        """The client connection and its last upstream are closed; returns the outcome."""

    def forward_refused(self, error: ProxyError) -> bool:
        """A request was refused (metrics); False when its line is over the log budget."""

    def forward_hold(self, delta: int) -> bool:
        """Charge ``delta`` bytes of an unfinished head; False if over the budget."""

    def forward_keep(self) -> bool:
        """Whether the client connection may wait for another request (not draining)."""


def _drop(transport: asyncio.BaseTransport) -> None:
    """Close an upstream this connection is done with. Bytes still queued to it are of no
    use and no longer counted in the relay budget: with any left it is aborted, since a
    close() would hold them until an origin that does not read takes them."""
    if isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


def _ignore(tunnel: Tunnel) -> None:
    pass


class _Leg:
    """One upstream connection, for its access line."""

    __slots__ = (
        "address",
        "connected",
        "outcome",
        "received",
        "requests",
        "sent",
        "started",
        "target",
        "via",
    )

    def __init__(self, target: str, started: float) -> None:
        self.target = target
        self.started = started
        self.connected = started
        self.address = "-"
        self.via = DIRECT
        self.sent = 0
        self.received = 0
        self.requests = 1
        self.outcome = ""  # set when a refused request ends the connection


class ClientPump(Pump):
    """The client's socket: its bytes go to the framer, never straight upstream."""

    __slots__ = ()
    tunnel: ForwardTunnel

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        self.tunnel.framer.receive_client(self.buffers.view[:nbytes])
        self.tunnel.advance()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.tunnel.framer.receive_client(data)
        self.tunnel.advance()

    def eof_received(self) -> bool:
        self.eof = True
        self.tunnel.framer.receive_client(b"")
        self.tunnel.advance()
        return True  # keep our write side open: a response may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.client_lost()


class UpstreamPump(Pump):
    """One upstream connection: its bytes go to the framer, on their way to the client."""

    __slots__ = ("leg",)
    tunnel: ForwardTunnel

    def __init__(self, tunnel: ForwardTunnel, buffers: Buffers, leg: _Leg) -> None:
        super().__init__(tunnel, buffers)
        self.leg = leg

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.tunnel.upstream_made()
        if self is not self.tunnel.upstream or self.tunnel.ended_client():
            transport.close()  # made after its client (or its request) went away

    def buffer_updated(self, nbytes: int) -> None:
        self._take(self.buffers.view[:nbytes])

    def data_received(self, data: bytes) -> None:
        self._take(data)

    def _take(self, data: bytes | memoryview) -> None:
        self.received += len(data)
        self.leg.received += len(data)
        if self is self.tunnel.upstream:
            self.tunnel.framer.receive_upstream(data)
            self.tunnel.respond()

    def eof_received(self) -> bool:
        self.eof = True
        if self is self.tunnel.upstream:
            self.tunnel.framer.receive_upstream(b"")
            self.tunnel.respond()
        return False  # the origin is done with this connection: close it

    def pause_writing(self) -> None:
        if self is self.tunnel.upstream:
            self.tunnel.blocked = True
            self.tunnel.want_client()

    def resume_writing(self) -> None:
        if self is self.tunnel.upstream:  # else the client's held bytes are another's
            self.buffers.release(self.peer)
            self.tunnel.blocked = False
            self.tunnel.want_client()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.upstream_lost(self)


class ForwardTunnel(Tunnel):
    """A forwarding client connection and its current upstream; see the module rules."""

    __slots__ = (
        "blocked",
        "buffers",
        "dialing",
        "ended",
        "framer",
        "head_held",
        "loop",
        "owner",
        "parked",
        "reading",
        "registered",
        "task",
        "waiting",
    )

    client: ClientPump
    upstream: Pump

    def __init__(
        self,
        owner: ForwardOwner,
        buffers: Buffers,
        framer: ForwardFramer,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(_ignore, buffers)
        self.buffers = buffers
        self.owner = owner
        self.framer = framer
        self.loop = loop
        self.client = ClientPump(self, buffers)
        self.client.peer = self.upstream  # a Pump with no transport until the first dial
        self.upstream.peer = self.client
        self.open_sides = 1  # the client; each connected upstream adds one
        self.task: asyncio.Task[None] | None = None
        self.dialing = False  # an upstream connection is being opened
        self.waiting = False  # the request is complete, its response is not
        self.blocked = False  # the upstream has unsent bytes
        self.reading = True  # whether the client transport is reading
        self.registered = False  # the owner reported the tunnel open
        self.ended = False
        self.parked = 0  # pipelined client bytes held while waiting (relay budget)
        self.head_held = 0  # bytes of an unfinished later head (handshake budget)

    def start(self, client: asyncio.Transport, first: Forward) -> None:
        """Take over ``client``, whose first request the session has read: ``first``."""
        self.client.connection_made(client)
        client.set_protocol(self.client)
        try:
            self.framer.receive_first(first)
        except ProtocolError as exc:
            self._refuse(exc, self.framer.target)
            return
        self.advance()

    # --- client bytes

    def advance(self) -> None:
        """Act on what the framer has for the client's bytes, as far as it can go now."""
        framer = self.framer
        while not self.dialing and not self._client_gone():
            try:
                item = framer.next_client()
            except ProtocolError as exc:
                self._refuse(exc, framer.target)
                return
            if isinstance(item, bytes):
                self._send_up(item)
            elif isinstance(item, OriginRequest):
                if not self._request(item):
                    return
            elif item is Wait.NEED_DATA:
                self._wait(waiting=False)
                return
            elif item is Wait.RESPONSE:
                self._wait(waiting=True)
                return
            else:  # Wait.CLOSED: the client ended between requests
                if not framer.in_flight:
                    self._close_client()
                return

    def _request(self, request: OriginRequest) -> bool:
        """Check ``request`` and send its head (now, or once connected); False to stop."""
        self._hold_head(0)
        try:
            self.owner.forward_check(request)
        except ProxyError as exc:
            self._refuse(exc, request.target)
            return False
        upstream = self.upstream
        if request.reuse and upstream.transport is not None and not upstream.transport.is_closing():
            assert isinstance(upstream, UpstreamPump)
            upstream.leg.requests += 1
            self._send_up(self.framer.start_request(fresh=False))
            return True
        self._dial(request)
        return False

    def _send_up(self, data: bytes) -> None:
        if data:
            upstream = self.upstream
            if isinstance(upstream, UpstreamPump):
                upstream.leg.sent += len(data)
            self.client._send(memoryview(data))

    def _wait(self, *, waiting: bool) -> None:
        self.waiting = waiting
        if waiting:
            self._park(self.framer.buffered_body())
        else:
            self._park(0)
            self._hold_head(self.framer.buffered_head())
        self.want_client()

    def _park(self, nbytes: int) -> None:
        self.buffers.held += nbytes - self.parked
        self.parked = nbytes

    def _hold_head(self, nbytes: int) -> None:
        """Charge an unfinished later head to the handshake budget; 503 over it."""
        delta = nbytes - self.head_held
        if delta and not self.owner.forward_hold(delta):
            error = ProxyError(
                "unfinished requests hold limits.handshake_memory: try again",
                failure=Failure.OVERLOADED,
            )
            self._refuse(error, self.framer.target)
            return
        self.head_held = nbytes

    def want_client(self) -> None:
        """Read the client when nothing stands in the way, else pause it."""
        transport = self.client.transport
        if transport is None or transport.is_closing():
            return
        want = not (self.waiting or self.blocked or self.dialing)
        if want != self.reading:
            self.reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def ended_client(self) -> bool:
        """The client connection is closed or closing."""
        return self._client_gone()

    def _client_gone(self) -> bool:
        transport = self.client.transport
        return transport is None or transport.is_closing()

    # --- opening an upstream connection

    def _dial(self, request: OriginRequest) -> None:
        self.dialing = True
        self.want_client()
        old = self.upstream
        if old.transport is not None:
            self.buffers.release(self.client)  # what was queued to the old origin goes with it
            _drop(old.transport)
            self.blocked = False  # that was the old upstream's backlog; the new one has none
        self.framer.drop_upstream()
        head = self.framer.start_request(fresh=True)
        leg = _Leg(request.target, time.monotonic())
        pump = UpstreamPump(self, self.buffers, leg)
        pump.peer = self.client
        # Response bytes of the old origin still queued to the client: the client pump's
        # resume_writing releases them through its peer, which is the new pump now.
        pump.held, old.held = old.held, 0
        pump.received = old.received  # the connection's total, for metrics and the idle sweep
        self.upstream = self.client.peer = pump
        self.task = self.loop.create_task(
            self._connect(request, pump, head), name=f"forward {self.owner.client}"
        )
        self.task.add_done_callback(self._connected)

    async def _connect(self, request: OriginRequest, pump: UpstreamPump, head: bytes) -> None:
        try:
            connection = await self.owner.forward_connect(request.destination, pump)
        except ProxyError as exc:
            self._refuse(exc, request.target)
            return
        transport = pump.transport
        if transport is None:  # pragma: no cover - closed before it was adopted
            return
        leg = pump.leg
        leg.address, leg.via = connection.address, connection.via
        leg.connected = now = time.monotonic()
        tune_socket(transport.get_extra_info("socket"))
        if self._client_gone():
            transport.close()
            return
        if not self.registered:
            self.registered = True
            self.owner.forward_opened(self, now - leg.started)
        self.dialing = False
        self._send_up(head)
        self.want_client()
        self.advance()

    def _connected(self, task: asyncio.Task[None]) -> None:
        """A set-up that died of something unexpected must not leave the client paused."""
        self.task = None
        if task.cancelled() or task.exception() is None:
            return
        log.error("forwarding for %s failed", self.owner.client, exc_info=task.exception())
        self._abort()

    # --- origin bytes

    def respond(self) -> None:
        """Act on what the framer has for the origin's bytes."""
        framer = self.framer
        while not self._client_gone():
            try:
                item = framer.next_upstream()
            except ProtocolError as exc:
                self._bad_response(exc)
                return
            if isinstance(item, bytes):
                if item:
                    self.upstream._send(memoryview(item))
            elif isinstance(item, ResponseEnd):
                self._response_end(item)
                return
            else:
                if item is Wait.CLOSED:
                    self._close_upstream()
                return

    def _response_end(self, end: ResponseEnd) -> None:
        if end.data:
            self.upstream._send(memoryview(end.data))
        if not end.keep_upstream:
            self._close_upstream()
        if not end.keep_client or not self.owner.forward_keep():
            self._close_client()
            return
        self.waiting = False
        self._park(0)
        self.advance()

    def _bad_response(self, error: ProxyError) -> None:
        framer = self.framer
        if framer.in_flight and not framer.responding:
            self._refuse(error, framer.target)
        elif framer.in_flight:  # the client has part of a response: only a cut tells it
            self._log_refusal(error, framer.target)
            self._abort()
        else:
            self._close_upstream()  # bytes from an idle origin: drop that connection

    # --- ends

    def _refuse(self, error: ProxyError, target: str) -> None:
        """Answer ``error`` (nothing of this request went upstream), log it, close."""
        transport = self.client.transport
        if transport is None or transport.is_closing():
            return
        transport.write(error_response(error))
        upstream = self.upstream
        if self.framer.in_flight and isinstance(upstream, UpstreamPump):
            upstream.leg.outcome = error.failure.cause  # the refused request went there
        self._log_refusal(error, target)
        self._close_client()

    def _log_refusal(self, error: ProxyError, target: str) -> None:
        if not self.owner.forward_refused(error):
            return  # over log.refusals_per_second: counted, not logged
        event(
            access,
            "tunnel",
            client=self.owner.client,
            protocol=PROTOCOL,
            target=target,
            address="-",
            outcome=error.failure.cause,
            reason=str(error),
        )

    def _close_upstream(self) -> None:
        self.framer.drop_upstream()
        transport = self.upstream.transport
        if transport is not None:
            _drop(transport)

    def _close_client(self) -> None:
        """Close the client (flushing the answer) and the upstream with it."""
        self._close_upstream()
        transport = self.client.transport
        if transport is not None:
            transport.close()

    def _abort(self) -> None:
        for pump in (self.client, self.upstream):
            if pump.transport is not None:
                pump.transport.abort()

    def client_lost(self) -> None:
        self.buffers.release(self.upstream)  # what the origin sent that the client never took
        self._park(0)
        if self.head_held:
            self.owner.forward_hold(-self.head_held)
            self.head_held = 0
        if self.task is not None:
            self.task.cancel()
        transport = self.upstream.transport
        if transport is not None:
            transport.close()
        self.open_sides -= 1
        if self.open_sides == 0:
            self._finish()

    def upstream_made(self) -> None:
        self.open_sides += 1

    def upstream_lost(self, pump: UpstreamPump) -> None:
        if pump is self.upstream:
            self.buffers.release(self.client)  # what the client sent that the origin never took
            self.framer.drop_upstream()
            if self.framer.in_flight:
                error = ProtocolError(
                    "the origin closed the connection before its response was complete",
                    failure=Failure.BAD_RESPONSE,
                )
                self._bad_response(error)
            self.blocked = False
            self.want_client()
        self.open_sides -= 1
        outcome = self._finish() if self.open_sides == 0 else CLOSED_OK
        self._log_leg(pump.leg, pump.leg.outcome or outcome)

    def _finish(self) -> str:
        """Every socket is closed: report the end (once); returns the outcome."""
        if self.ended:
            return CLOSED_OK
        self.ended = True
        return self.owner.forward_ended(self)

    def _log_leg(self, leg: _Leg, outcome: str) -> None:
        event(
            access,
            "tunnel",
            client=self.owner.client,
            protocol=PROTOCOL,
            target=leg.target,
            address=leg.address,
            via=leg.via,
            connect_ms=round((leg.connected - leg.started) * 1000, 1),
            sent=leg.sent,
            received=leg.received,
            requests=leg.requests,
            duration_ms=round((time.monotonic() - leg.started) * 1000, 1),
            outcome=outcome,
        )
