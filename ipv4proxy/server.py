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
  resolver's and the dialer's own timeouts, then idle_timeout on the open tunnel.
- Bounds (``limits``): connections over max_connections (or max_connections_per_client
  from one address) are closed at accept, with no reply and one log line. Idle tunnels
  are found by one sweep per process, not a timer per tunnel or per read: every tenth of
  idle_timeout it compares each tunnel's byte counters with the last sweep's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from typing import cast

from ipv4proxy.config import Config
from ipv4proxy.errors import Failure, PolicyDenied, ProtocolError, ProxyError
from ipv4proxy.log import event
from ipv4proxy.net.dialer import dial
from ipv4proxy.net.relay import Tunnel, tune_socket
from ipv4proxy.net.resolver import Resolver
from ipv4proxy.policy import Policy, require
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

    def __init__(self, config: Config, resolver: Resolver, policy: Policy | None = None) -> None:
        self.config = config
        self.resolver = resolver
        self.policy = policy if policy is not None else Policy(config)
        self.loop = asyncio.get_running_loop()
        self._servers: list[asyncio.Server] = []
        self.connections = 0
        self.per_client: dict[str, int] = {}
        # Open tunnels -> [bytes moved at the last sweep, loop time they last changed].
        self.tunnels: dict[Tunnel, list[float]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def admit(self, host: str) -> str | None:
        """Count a new client connection; or the reason it is over a limit."""
        limits = self.config.limits
        if self.connections >= limits.max_connections:
            return f"{self.connections} connections open (limits.max_connections)"
        per_client = self.per_client.get(host, 0)
        if 0 < limits.max_connections_per_client <= per_client:
            return f"{per_client} connections open from {host} (limits.max_connections_per_client)"
        self.connections += 1
        self.per_client[host] = per_client + 1
        return None

    def release(self, host: str) -> None:
        self.connections -= 1
        left = self.per_client.pop(host, 1) - 1
        if left > 0:
            self.per_client[host] = left

    def _sweep(self) -> None:
        """Abort tunnels that moved no byte for idle_timeout; re-arm. O(open tunnels)."""
        now = self.loop.time()
        timeout = self.config.limits.idle_timeout
        for tunnel, seen in list(self.tunnels.items()):
            moved = tunnel.client.received + tunnel.upstream.received
            if moved != seen[0]:
                seen[0], seen[1] = moved, now
            elif now - seen[1] >= timeout:
                seen[1] = -1.0  # marks the close as idle for the tunnel's log line
                for pump in (tunnel.client, tunnel.upstream):
                    if pump.transport is not None:
                        pump.transport.abort()  # close() would wait on a reader that never reads
        self._sweeper = self.loop.call_later(timeout / 10, self._sweep)

    async def start(self) -> list[tuple[str, int]]:
        """Bind every listener; returns the bound (host, port) pairs. Raises OSError."""
        bound: list[tuple[str, int]] = []
        for index, listener in enumerate(self.config.listeners):
            server = await self.loop.create_server(
                lambda index=index: Session(self, index),  # type: ignore[misc]
                listener.host,
                listener.port,
                backlog=1024,
            )
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                bound.append((host, port))
                log.info("listening on %s", _address((host, port)))
        self.policy.listening_on(bound)
        self._sweeper = self.loop.call_later(self.config.limits.idle_timeout / 10, self._sweep)
        return bound

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()


class Session(asyncio.Protocol):
    """One client connection, from its first byte until its tunnel is handed to the relay."""

    transport: asyncio.Transport  # set by connection_made, before any other call

    def __init__(self, proxy: Proxy, listener: int = 0) -> None:
        self.proxy = proxy
        self.listener = listener
        self.client = "-"
        self.host = "-"  # the client's address, without the port: what limits count
        self.counted = False
        self.denied: PolicyDenied | None = None
        self.handshake: Handshake | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client = _address(peer)
        self.host = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        over = self.proxy.admit(self.host)
        if over is not None:
            error = ProxyError(
                f"too many connections: {over}", failure=Failure.TOO_MANY_CONNECTIONS
            )
            self._refuse(error, "-")  # no handshake yet: closed with no reply
            return
        self.counted = True
        decision = self.proxy.policy.client(self.listener, self.host)
        if not decision.allowed:
            self.denied = decision.error()  # answered in the client's protocol, first byte
        timeout = self.proxy.config.limits.handshake_timeout
        self.timer = self.proxy.loop.call_later(timeout, self._handshake_timeout)

    def release(self) -> None:
        """Uncount this connection (once), when it or its tunnel has closed."""
        if self.counted:
            self.counted = False
            self.proxy.release(self.host)

    def data_received(self, data: bytes) -> None:
        handshake = self.handshake
        if handshake is None:
            handshake = new_handshake(
                data[0],
                max_head=self.proxy.config.limits.max_head,
                require_auth=self.proxy.policy.auth_required,
            )
            self.handshake = handshake
            if self.denied is not None:
                self._refuse(self.denied, handshake.protocol)
                return
        try:
            self._act(handshake, handshake.feed(data))
        except ProtocolError as exc:
            self._refuse(exc, handshake.protocol, handshake.target)

    def eof_received(self) -> bool:
        return False  # a client that ends before its request is complete is done

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()
        self.release()

    # handshake

    def _act(self, handshake: Handshake, events: Sequence[object]) -> None:
        pending = list(events)
        while pending:
            item = pending.pop(0)
            if isinstance(item, Send):
                self.transport.write(item.data)
            elif isinstance(item, Authenticate):
                decision = self.proxy.policy.credentials((item.username, item.password))
                self.transport.write(handshake.auth_result(decision.allowed))  # type: ignore[union-attr]
                if not decision.allowed:
                    self.handshake = None  # the RFC 1929 failure reply is the whole answer
                    self._refuse(decision.error(), handshake.protocol)
                    return
                pending.extend(handshake.feed(b""))
            elif isinstance(item, Connect | Forward):
                if self.timer is not None:
                    self.timer.cancel()
                self.transport.pause_reading()
                self.task = self.proxy.loop.create_task(
                    self._open(handshake, item), name=f"open {self.client}"
                )
                return

    def _handshake_timeout(self) -> None:
        timeout = self.proxy.config.limits.handshake_timeout
        error = ProtocolError(
            f"request not complete after {timeout:g} s", failure=Failure.HANDSHAKE_TIMEOUT
        )
        handshake = self.handshake
        if handshake is None:
            self._refuse(error, "-")
        else:
            self._refuse(error, handshake.protocol, handshake.target)

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
        policy = self.proxy.policy
        try:
            require(policy.credentials(request.credentials))
            require(policy.destination(destination))
            if destination.kind is HostKind.IPV4:
                require(policy.address(destination.host, destination.port))
                addresses: tuple[str, ...] = (destination.host,)
            else:
                resolved = await self.proxy.resolver.resolve(destination.host)
                addresses, decision = policy.addresses(resolved, destination.port, destination.host)
                require(decision)
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
        tunnels = self.proxy.tunnels

        def closed(tunnel: Tunnel) -> None:
            seen = tunnels.pop(tunnel, None)
            self.release()
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
                outcome=Failure.IDLE_TIMEOUT.cause if seen and seen[1] < 0 else "ok",
            )

        tunnel = Tunnel(closed)
        tunnels[tunnel] = [0, loop.time()]
        tune_socket(sock)
        tune_socket(client.get_extra_info("socket"))
        local = sock.getsockname()
        # The reply goes out before any upstream byte can: a server that speaks first must
        # not have its bytes land ahead of "200 Connection established".
        client.write(handshake.success_reply(local[0], local[1]))
        tunnel.client.transport = client
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
