"""The asyncio glue: accept, sniff, run a handshake, resolve, dial, relay, log.

One `Session` per client connection feeds the client's bytes to the handshake its first
byte selects (``protocols``), and acts on the events: write, authenticate, or open a tunnel.
Opening is the only task a connection ever has; once the upstream socket is connected the
client transport is handed to a `Pump` (``net.relay``) and the session is gone.

Rules:
- Every decision that needs no I/O is made in ``protocols`` or ``policy``; this module only
  moves bytes and awaits the resolver and the dialer.
- Each expected failure is a ProxyError: the client gets the handshake's error reply, the
  log gets one ``tunnel`` line naming the cause. Nothing else is sent or logged for it.
- Phases have their own clocks: handshake_timeout until the request is complete, then the
  resolver's and the dialer's own timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from typing import cast

from ipv4proxy.config import Config
from ipv4proxy.errors import Failure, ProtocolError, ProxyError
from ipv4proxy.log import event
from ipv4proxy.net.dialer import dial
from ipv4proxy.net.relay import Tunnel, tune_socket
from ipv4proxy.net.resolver import Resolver
from ipv4proxy.protocols import (
    Authenticate,
    Connect,
    Forward,
    Handshake,
    HostKind,
    Send,
    new_handshake,
)

__all__ = ["Proxy", "Session"]

log = logging.getLogger("ipv4proxy")
access = logging.getLogger("ipv4proxy.access")

Request = Connect | Forward


def _address(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "-"


class Proxy:
    """The listeners of one process, and what every session shares."""

    def __init__(self, config: Config, resolver: Resolver) -> None:
        self.config = config
        self.resolver = resolver
        self.loop = asyncio.get_running_loop()
        self._servers: list[asyncio.Server] = []

    async def start(self) -> list[tuple[str, int]]:
        """Bind every listener; returns the bound (host, port) pairs. Raises OSError."""
        bound: list[tuple[str, int]] = []
        for listener in self.config.listeners:
            server = await self.loop.create_server(
                lambda: Session(self), listener.host, listener.port, backlog=1024
            )
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                bound.append((host, port))
                log.info("listening on %s", _address((host, port)))
        return bound

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()


class Session(asyncio.Protocol):
    """One client connection, from its first byte until its tunnel is handed to the relay."""

    transport: asyncio.Transport  # set by connection_made, before any other call

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.client = "-"
        self.handshake: Handshake | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.client = _address(transport.get_extra_info("peername"))
        timeout = self.proxy.config.limits.handshake_timeout
        self.timer = self.proxy.loop.call_later(timeout, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        handshake = self.handshake
        if handshake is None:
            handshake = new_handshake(data[0], max_head=self.proxy.config.limits.max_head)
            self.handshake = handshake
        try:
            self._act(handshake, handshake.feed(data))
        except ProtocolError as exc:
            self._refuse(exc, self._protocol_name())

    def eof_received(self) -> bool:
        return False  # a client that ends before its request is complete is done

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()

    # handshake

    def _act(self, handshake: Handshake, events: Sequence[object]) -> None:
        pending = list(events)
        while pending:
            item = pending.pop(0)
            if isinstance(item, Send):
                self.transport.write(item.data)
            elif isinstance(item, Authenticate):
                # Credentials are accepted until the policy layer checks them.
                self.transport.write(handshake.auth_result(True))  # type: ignore[union-attr]
                pending.extend(handshake.feed(b""))
            elif isinstance(item, Connect | Forward):
                if self.timer is not None:
                    self.timer.cancel()
                self.transport.pause_reading()
                self.task = self.proxy.loop.create_task(
                    self._open(handshake, item), name=f"open {self.client}"
                )
                return

    def _protocol_name(self) -> str:
        name = type(self.handshake).__name__.removesuffix("Handshake").lower()
        return name or "-"

    def _handshake_timeout(self) -> None:
        timeout = self.proxy.config.limits.handshake_timeout
        error = ProtocolError(
            f"request not complete after {timeout:g} s", failure=Failure.HANDSHAKE_TIMEOUT
        )
        self._refuse(error, self._protocol_name())

    def _refuse(self, error: ProxyError, protocol: str, target: str = "-") -> None:
        """Send the handshake's answer for ``error``, close, and log the cause."""
        if self.transport.is_closing():
            return
        if self.handshake is not None:
            self.transport.write(self.handshake.error_reply(error))
        self.transport.close()
        event(
            access,
            "tunnel",
            client=self.client,
            protocol=protocol,
            target=target,
            address="-",
            outcome=error.failure.cause,
            reason=str(error),
        )

    # opening the tunnel

    async def _open(self, handshake: Handshake, request: Request) -> None:
        destination = request.destination
        target = f"{destination.host}:{destination.port}"
        started = self.proxy.loop.time()
        try:
            if destination.kind is HostKind.IPV4:
                addresses: tuple[str, ...] = (destination.host,)
            else:
                addresses = await self.proxy.resolver.resolve(destination.host)
            sock, address = await dial(
                addresses, destination.port, self.proxy.config.dialer, name=destination.host
            )
        except ProxyError as exc:
            self._refuse(exc, request.protocol, target)
            return
        try:
            await self._relay(handshake, request, sock, address=address, started=started)
        except BaseException:
            sock.close()
            raise

    async def _relay(
        self,
        handshake: Handshake,
        request: Request,
        sock: socket.socket,
        *,
        address: str,
        started: float,
    ) -> None:
        """Wire the connected upstream socket to the client; the session ends here."""
        client = self.transport
        if client.is_closing():
            sock.close()
            return
        loop = self.proxy.loop
        connected = loop.time()
        protocol = request.protocol
        target = f"{request.destination.host}:{request.destination.port}"
        client_name = self.client

        def closed(tunnel: Tunnel) -> None:
            event(
                access,
                "tunnel",
                client=client_name,
                protocol=protocol,
                target=target,
                address=address,
                connect_ms=round((connected - started) * 1000, 1),
                sent=tunnel.client.received,
                received=tunnel.upstream.received,
                duration_ms=round((loop.time() - started) * 1000, 1),
                outcome="ok",
            )

        tunnel = Tunnel(closed)
        tune_socket(sock)
        tune_socket(client.get_extra_info("socket"))
        local = sock.getsockname()
        # The reply goes out before any upstream byte can: a server that speaks first must
        # not have its bytes land ahead of "200 Connection established".
        client.write(handshake.success_reply(local[0], local[1]))
        tunnel.client.connection_made(client)  # adopts it and sets its flow control
        await loop.create_connection(lambda: tunnel.upstream, sock=sock)
        upstream = tunnel.upstream.transport
        assert upstream is not None
        client.set_protocol(tunnel.client)
        if client.is_closing():  # the client left while the upstream transport was made
            tunnel.client.connection_lost(None)
            return
        first = request.early_data
        if isinstance(request, Forward):
            first = request.head + first
        if first:
            tunnel.client.received += len(first)
            upstream.write(first)
        client.resume_reading()
