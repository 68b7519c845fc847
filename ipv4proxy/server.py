"""The asyncio glue: accept, sniff, run a handshake, resolve, dial, relay, log.

One `Session` per client connection feeds the client's bytes to the handshake its first
byte selects (``protocols``), and acts on the events: write, authenticate, or open a tunnel.
Opening is the only task a connection ever has; once the upstream socket is connected the
client transport is handed to a `Pump` (``net.relay``) and the session is gone. A first
byte no protocol starts with is refused at once (``protocols.sniff``). A plain-HTTP
forward request hands the connection at once to a `ForwardTunnel` (``net.forward``),
which frames, checks and dials every request itself through the ``forward_*`` methods.

Rules:
- Every decision that needs no I/O is made in ``protocols`` or ``policy``; this module only
  moves bytes and awaits the resolver and the dialer.
- Each expected failure is a ProxyError: the client gets the handshake's error reply (for
  a failed CONNECT, what ``http.connect_failure`` says: a reset, a close or the status),
  the log gets one ``tunnel`` line naming the cause. Nothing else is sent or logged for it.
- Phases have their own clocks: handshake_timeout until the request is complete, then the
  resolver's and the dialer's own timeouts, then idle_timeout on the open tunnel.
- Bounds (``limits``): a client address outside the listener's ``clients``, and
  connections over max_connections (or max_connections_per_client from one address), are
  closed at accept, with no reply and one log line; the first is never counted. Bytes of
  unfinished requests count against handshake_memory (a request that would go over it is
  refused with 503); held relay bytes against relay_memory (``net.relay``). Idle tunnels
  are found by one sweep per process, not a timer per tunnel or per read: every tenth of
  idle_timeout it compares each tunnel's byte counters with the last sweep's.
- A session takes the Proxy's configuration and policy when it is accepted and keeps them:
  a reload (SIGHUP) changes what later connections get, never an open one.
- Operations (metrics, drain bookkeeping) live in the `Proxy`; a session reports to it in
  a few places only, each marked ``# ops``: accept and close, the handover to the relay
  and the tunnel-closed callback, and `_refuse`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import socket
import struct
import time
from collections.abc import Sequence
from typing import cast

from ipv4proxy.config import Config
from ipv4proxy.errors import ConfigError, Failure, ProtocolError, ProxyError
from ipv4proxy.linebudget import LineBudget
from ipv4proxy.log import event, lifecycle
from ipv4proxy.metrics import CLOSED_CUT, CLOSED_OK, Metrics
from ipv4proxy.net import heap
from ipv4proxy.net.forward import PROTOCOL as FORWARD_PROTOCOL
from ipv4proxy.net.forward import ForwardTunnel
from ipv4proxy.net.relay import Buffers, Pump, Tunnel, tune_socket
from ipv4proxy.net.resolver import Resolver
from ipv4proxy.net.upstream import DIRECT, Connection, Route, Upstream
from ipv4proxy.policy import Policy, require
from ipv4proxy.protocols import (
    Authenticate,
    Connect,
    Forward,
    Handshake,
    HttpHandshake,
    Send,
    new_handshake,
)
from ipv4proxy.protocols.events import Destination
from ipv4proxy.protocols.forward import ForwardFramer, OriginRequest
from ipv4proxy.protocols.sniff import foreign
from ipv4proxy.rules import local_addresses

__all__ = ["Proxy", "Session"]

log = logging.getLogger("ipv4proxy")
access = logging.getLogger("ipv4proxy.access")


def _address(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "-"


# Memory is given back (`heap.trim`) once open connections fall to half of a peak of at
# least this many, a second after they do: a burst worth the trouble, trimmed once.
_TRIM_PEAK = 256
_TRIM_DELAY = 1.0

# After the tunnels are cut at the end of a drain, how long to wait for their close
# callbacks (access lines, metrics) and for the listeners to finish closing.
_CLOSE_SECONDS = 2.0


def local_addresses_now(path: str = "/proc/net/fib_trie") -> frozenset[str]:
    """This host's IPv4 interface addresses (Linux); none when the file cannot be read, and
    the loop guard then knows only 0.0.0.0/8, loopback and the listen addresses."""
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return local_addresses(file.read())
    except OSError as exc:
        log.warning("cannot read %s (%s): the loop guard knows loopback only", path, exc)
        return frozenset()


def _reset(transport: asyncio.Transport) -> None:
    """Make the coming close an abortive one: an RST, which every client reads as an error."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Proxy:
    """The listeners of one process, what every session shares, and the open connections.

    ``config`` and ``policy`` are the current ones (replaced by `reload`); ``sessions`` are
    client connections still in their handshake, ``tunnels`` the relayed ones: the drain
    waits for both to empty.
    """

    def __init__(
        self,
        config: Config,
        resolver: Resolver | None = None,
        policy: Policy | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.resolver = resolver if resolver is not None else self._resolver(config)
        self.policy = policy if policy is not None else Policy(config)
        self.upstream = Upstream(config, self.resolver)
        self.buffers = Buffers(config.limits.relay_memory)
        # Bytes held by the handshakes of sessions whose request is not complete yet.
        self.handshake_bytes = 0
        self.loop = asyncio.get_running_loop()
        self._servers: list[asyncio.Server] = []
        self._bound: list[tuple[str, int]] = []
        self._local: frozenset[str] = frozenset()
        self.connections = 0
        self.per_client: dict[str, int] = {}
        self.metrics.watch(
            lambda: self.connections,
            lambda: self.buffers.held,
            lambda: self.handshake_bytes,
        )
        self.refusal_lines = LineBudget(config.log.refusals_per_second)
        self._summary: asyncio.TimerHandle | None = None
        # The most connections open since the heap was last trimmed, and the trim to come.
        self._peak = 0
        self._trim: asyncio.TimerHandle | None = None
        # Open tunnels -> [bytes moved at the last sweep, loop time they last changed].
        self.tunnels: dict[Tunnel, list[float]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.sessions: set[Session] = set()
        self.listening = False
        self.draining = False
        self._cutting = False
        self._idle = asyncio.Event()

    def _resolver(self, config: Config) -> Resolver:
        return Resolver(config.resolver, on_lookup=self.metrics.dns_lookup)

    @property
    def ready(self) -> bool:
        """Listening and not draining: what /readyz answers."""
        return self.listening and not self.draining

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
        self._peak = max(self._peak, self.connections)
        return None

    def release(self, host: str) -> None:
        self.connections -= 1
        left = self.per_client.pop(host, 1) - 1
        if left > 0:
            self.per_client[host] = left
        if self._peak >= _TRIM_PEAK and self.connections <= self._peak // 2 and self._trim is None:
            self._trim = self.loop.call_later(_TRIM_DELAY, self._trim_heap)

    def _trim_heap(self) -> None:
        """Give back what a burst left in the heap (see `net.heap`). A tunnel's pumps and
        its Tunnel refer to each other, so a burst's closed tunnels wait for the cyclic
        collector's oldest generation, which may not run for a long time: collect first
        (once per burst; 4,000 closed tunnels left 15 MiB behind without it, 6 MiB with)."""
        self._trim = None
        self._peak = self.connections
        gc.collect()
        heap.trim()

    def refusal_logged(self, cause: str) -> bool:
        """Take a refusal line for ``cause`` from the log budget; when it is spent, count the
        line for the summary that ends the window instead."""
        if self.refusal_lines.take(cause, self.loop.time()):
            return True
        if self._summary is None:
            self._summary = self.loop.call_later(1.0, self._log_suppressed)
        return False

    def _log_suppressed(self) -> None:
        self._summary = None
        for cause, count in self.refusal_lines.take_suppressed().items():
            event(access, "refusals-suppressed", logging.WARNING, outcome=cause, count=count)

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
                # Accepted sockets inherit SO_KEEPALIVE from the listener on Linux: one
                # system call here instead of one per client connection.
                tune_socket(sock)
                host, port = sock.getsockname()[:2]
                bound.append((host, port))
                address = _address((host, port))
                lifecycle(log, "listening", f"listening on {address}", address=address)
        self._bound = list(bound)
        self._local = local_addresses_now()
        self.policy.listening_on(self._bound, self._local)
        self._sweeper = self.loop.call_later(self.config.limits.idle_timeout / 10, self._sweep)
        self.listening = True
        self.metrics.ready.set(1)
        return bound

    def reload(self, config: Config, policy: Policy | None = None) -> None:
        """Make ``config`` (and its ``policy``) what new connections get. Raises ConfigError
        when it changes what cannot change in a running process."""
        if config.listeners != self.config.listeners:
            raise ConfigError("listeners cannot change on reload; restart")
        if config.admin != self.config.admin:
            raise ConfigError("admin.listen cannot change on reload; restart")
        if config.dns.listen != self.config.dns.listen:
            raise ConfigError("dns.listen cannot change on reload; restart")
        policy = policy if policy is not None else Policy(config)
        policy.listening_on(self._bound, self._local)
        if config.resolver != self.config.resolver:
            self.resolver = self._resolver(config)  # open lookups finish on the old one
        self.upstream = self.upstream.reconfigured(config, self.resolver)
        self.buffers.budget = config.limits.relay_memory
        self.refusal_lines.per_second = config.log.refusals_per_second
        self.config, self.policy = config, policy

    def listening_also(self, address: tuple[str, int]) -> None:
        """Another listener of this process (the admin one): requests to it are loops too."""
        self._bound.append(address)
        self.policy.listening_on(self._bound, self._local)

    async def drain(self, grace: float, force: asyncio.Event) -> int:
        """Stop accepting, wait up to ``grace`` seconds (or until ``force`` is set) for the
        open connections to end, then cut the rest. Returns how many were cut."""
        self.draining = True
        self.metrics.ready.set(0)
        for server in self._servers:
            server.close()
        self._check_idle()
        waiters = [
            asyncio.ensure_future(self._idle.wait()),
            asyncio.ensure_future(force.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        cut = self.cut()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_SECONDS):
                await self._idle.wait()
                await self.close()
        return cut

    def cut(self) -> int:
        """Abort every open connection now; returns how many there were."""
        self._cutting = True
        count = len(self.tunnels) + len(self.sessions)
        for tunnel in list(self.tunnels):
            for pump in (tunnel.client, tunnel.upstream):
                if pump.transport is not None:
                    pump.transport.abort()
        for session in list(self.sessions):
            session.transport.abort()
        return count

    def _check_idle(self) -> None:
        if self.draining and not self.sessions and not self.tunnels:
            self._idle.set()

    # What sessions report (the "# ops" places in Session).

    def session_ended(self, session: Session) -> None:
        self.sessions.discard(session)
        self._check_idle()

    def tunnel_opened(
        self, session: Session, tunnel: Tunnel, protocol: str, seconds: float
    ) -> None:
        self.sessions.discard(session)
        self.tunnels[tunnel] = [0, self.loop.time()]
        self.metrics.tunnel_opened(protocol, seconds)

    def tunnel_closed(self, tunnel: Tunnel, protocol: str) -> str:
        """Forget a closed tunnel and count it; returns its outcome for the access line."""
        seen = self.tunnels.pop(tunnel, None)
        if seen is None:
            return CLOSED_OK
        if seen[1] < 0:
            outcome = Failure.IDLE_TIMEOUT.cause
        else:
            outcome = CLOSED_CUT if self._cutting else CLOSED_OK
        self.metrics.tunnel_closed(
            protocol, outcome, tunnel.client.received, tunnel.upstream.received
        )
        self._check_idle()
        return outcome

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._trim is not None:
            self._trim.cancel()
        if self._summary is not None:
            self._summary.cancel()
            self._log_suppressed()
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        await self.upstream.close()


class _TunnelEnd:
    """A relayed tunnel's close callback: count it, uncount its client connection, log it.

    A small object rather than a closure over the session, so an open tunnel does not keep
    its handshake session (and the handshake) alive: 0.35 KiB less per idle tunnel.
    """

    __slots__ = (
        "address",
        "client",
        "connected",
        "counted",
        "host",
        "protocol",
        "proxy",
        "started",
        "target",
        "via",
    )

    def __init__(
        self,
        proxy: Proxy,
        *,
        client: str,
        protocol: str,
        target: str,
        started: float,
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.protocol = protocol
        self.target = target
        self.started = started
        # Set when the upstream is connected.
        self.address = ""
        self.via = DIRECT
        self.connected = started
        # Handed over by the session once the tunnel alone owns the connection.
        self.host = "-"
        self.counted = False

    def __call__(self, tunnel: Tunnel) -> None:
        proxy = self.proxy
        outcome = proxy.tunnel_closed(tunnel, self.protocol)  # ops
        if self.counted:
            self.counted = False
            proxy.release(self.host)
        started = self.started
        event(
            access,
            "tunnel",
            client=self.client,
            protocol=self.protocol,
            target=self.target,
            address=self.address,
            via=self.via,
            connect_ms=round((self.connected - started) * 1000, 1),
            sent=tunnel.client.received,
            received=tunnel.upstream.received,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            outcome=outcome,
        )


class Session(asyncio.Protocol):
    """One client connection, from its first byte until its tunnel is handed to the relay."""

    transport: asyncio.Transport  # set by connection_made, before any other call

    def __init__(self, proxy: Proxy, listener: int = 0) -> None:
        self.proxy = proxy
        self.listener = listener
        # Taken at accept: a reload never changes an open session.
        self.config = proxy.config
        self.policy = proxy.policy
        self.client = "-"
        self.host = "-"  # the client's address, without the port: what limits count
        self.counted = False
        self.handshake: Handshake | None = None
        # Bytes fed to the handshake while the request is not complete (`_hold`).
        self.held = 0
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        # While the tunnel is being opened: what `_made` wires, and the route dialled.
        self.opening: tuple[Handshake, Connect, Tunnel] | None = None
        self.route: Route | None = None
        # Plain-HTTP forwarding: the relay that owns the connection from its first request.
        self.forward: ForwardTunnel | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.proxy.sessions.add(self)  # ops: the drain waits for sessions too
        peer = transport.get_extra_info("peername")
        self.client = _address(peer)
        self.host = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        # Refused before it is counted, and closed with no reply (no handshake yet): a
        # client outside the listener's clients never takes a slot or waits for a byte.
        decision = self.policy.client(self.listener, self.host)
        if not decision.allowed:
            self._refuse(decision.error(), "-")
            return
        over = self.proxy.admit(self.host)
        if over is not None:
            error = ProxyError(
                f"too many connections: {over}", failure=Failure.TOO_MANY_CONNECTIONS
            )
            self._refuse(error, "-")
            return
        self.counted = True
        timeout = self.config.limits.handshake_timeout
        self.timer = self.proxy.loop.call_later(timeout, self._handshake_timeout)

    def release(self) -> None:
        """Uncount this connection (once), when it or its tunnel has closed."""
        if self.counted:
            self.counted = False
            self.proxy.release(self.host)

    def data_received(self, data: bytes) -> None:
        handshake = self.handshake
        if handshake is None:
            refusal = foreign(data[0])
            if refusal is not None:  # no protocol starts so: refused now, not at the timeout
                self.transport.write(refusal.reply)
                self._refuse(refusal.error, "-")
                return
            handshake = new_handshake(
                data[0],
                max_head=self.config.limits.max_head,
                require_auth=self.policy.auth_required,
            )
            self.handshake = handshake
        try:
            self._act(handshake, handshake.feed(data))
        except ProtocolError as exc:
            self._refuse(exc, handshake.protocol, handshake.target)
            return
        if self.task is None and self.forward is None and not self.transport.is_closing():
            self._hold(len(data), handshake)

    def _hold(self, nbytes: int, handshake: Handshake) -> None:
        """Count ``nbytes`` more of an unfinished request against limits.handshake_memory;
        refuse the request that would go over it. A request that arrives whole (the usual
        case) completes in one feed and is never counted."""
        proxy = self.proxy
        budget = self.config.limits.handshake_memory
        if proxy.handshake_bytes + nbytes > budget:
            error = ProxyError(
                f"unfinished requests hold {proxy.handshake_bytes} bytes"
                f" (limits.handshake_memory {budget}): try again",
                failure=Failure.OVERLOADED,
            )
            self._refuse(error, handshake.protocol, handshake.target)
            return
        self.held += nbytes
        proxy.handshake_bytes += nbytes

    def _unhold(self) -> None:
        self.proxy.handshake_bytes -= self.held
        self.held = 0

    def eof_received(self) -> bool:
        return False  # a client that ends before its request is complete is done

    def connection_lost(self, exc: Exception | None) -> None:
        self._unhold()
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()
        self.release()
        self.proxy.session_ended(self)  # ops

    # handshake

    def _act(self, handshake: Handshake, events: Sequence[object]) -> None:
        pending = list(events)
        while pending:
            item = pending.pop(0)
            if isinstance(item, Send):
                self.transport.write(item.data)
            elif isinstance(item, Authenticate):
                decision = self.policy.credentials((item.username, item.password))
                self.transport.write(handshake.auth_result(decision.allowed))  # type: ignore[union-attr]
                if not decision.allowed:
                    self.handshake = None  # the RFC 1929 failure reply is the whole answer
                    self._refuse(decision.error(), handshake.protocol)
                    return
                pending.extend(handshake.feed(b""))
            elif isinstance(item, Connect | Forward):
                self._unhold()  # the handshake has handed its bytes over
                if self.timer is not None:
                    self.timer.cancel()
                if isinstance(item, Forward):
                    self._forward(item)
                    return
                self.transport.pause_reading()
                self.task = self.proxy.loop.create_task(
                    self._open(handshake, item), name=f"open {self.client}"
                )
                self.task.add_done_callback(self._opened)
                return

    def _opened(self, task: asyncio.Task[None]) -> None:
        """A tunnel set-up that died of something unexpected (an OSError making the
        transport, or a bug) must not leave its client paused forever: log it, drop it."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("setting up the tunnel of %s failed", self.client, exc_info=task.exception())
        self.transport.abort()

    def _handshake_timeout(self) -> None:
        timeout = self.config.limits.handshake_timeout
        error = ProtocolError(
            f"request not complete after {timeout:g} s", failure=Failure.HANDSHAKE_TIMEOUT
        )
        handshake = self.handshake
        if handshake is None:
            self._refuse(error, "-")
        else:
            self._refuse(error, handshake.protocol, handshake.target)

    def _refuse(self, error: ProxyError, protocol: str, target: str = "-") -> None:
        """Send the handshake's answer for ``error``, close, and log the cause.

        The log line is the same whatever ``http.connect_failure`` makes of the answer.
        """
        if self.transport.is_closing():
            return
        handshake = self.handshake
        if isinstance(handshake, HttpHandshake):
            mode = self.proxy.config.http.connect_failure
            if handshake.resets(error, mode):
                _reset(self.transport)
            self.transport.write(handshake.error_reply(error, connect_failure=mode))
        elif handshake is not None:
            self.transport.write(handshake.error_reply(error))
        self.transport.close()
        self.proxy.metrics.refused(error)  # ops
        if not self.proxy.refusal_logged(error.failure.cause):
            return
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

    async def _open(self, handshake: Handshake, request: Connect) -> None:
        destination = request.destination
        target = f"{destination.host}:{destination.port}"
        proxy = self.proxy
        closed = _TunnelEnd(
            proxy,
            client=self.client,
            protocol=request.protocol,
            target=target,
            started=time.monotonic(),
        )
        tunnel = Tunnel(closed, proxy.buffers)
        pump = tunnel.upstream
        # The tunnel is wired when the upstream transport exists, before it is read from
        # (`_made`), whichever way the transport was made.
        self.opening = (handshake, request, tunnel)
        pump.on_made = self._made
        policy = self.policy
        try:
            require(policy.credentials(request.credentials, protocol=request.protocol))
            require(policy.destination(destination))
            # Resolve, let the policy narrow the addresses, then connect (maybe via a parent).
            # One address, direct: the loop connects and makes the transport in one step.
            upstream = await proxy.upstream.open(destination, check=self._allowed, protocol=pump)
            sock = upstream.sock
            if sock is not None:  # a race of several addresses, or through a parent
                closed.address, closed.via = upstream.address, upstream.via
                try:
                    if self.transport.is_closing():
                        sock.close()
                        return
                    await proxy.loop.create_connection(lambda: pump, sock=sock)
                except BaseException:
                    sock.close()
                    raise
            elif pump.transport is None:  # pragma: no cover - the loop closed it unadopted
                assert upstream.transport is not None
                upstream.transport.close()
                self.transport.abort()
        except ProxyError as exc:
            self._refuse(exc, request.protocol, target)
        finally:
            pump.on_made = None
            self.opening = None

    def _allowed(self, route: Route) -> Route:
        """The route with only the addresses the policy allows; raises PolicyDenied."""
        if route.literal:
            require(self.policy.address(route.host, route.port))
        else:
            if route.resolved:  # the search list made it another name: judge that one too
                require(self.policy.resolved_name(route.host, route.resolved, route.port))
            addresses, decision = self.policy.addresses(route.addresses, route.port, route.host)
            require(decision)
            route = dataclasses.replace(route, addresses=addresses)
        self.route = route  # for `_made`: the one address a direct transport was made to
        return route

    def _made(self, upstream: asyncio.Transport) -> None:
        """Wire the tunnel once its upstream transport exists, before anything is read from
        it; the session ends here. A failure here must not leave the client paused
        forever: log it, drop both sides."""
        try:
            self._wire(upstream)
        except Exception:
            log.exception("setting up the tunnel of %s failed", self.client)
            upstream.abort()
            self.transport.abort()

    def _wire(self, upstream: asyncio.Transport) -> None:
        opening = self.opening
        assert opening is not None
        self.opening = None
        handshake, request, tunnel = opening
        client = self.transport
        if client.is_closing():  # the client left while the upstream was connecting
            upstream.close()
            return
        proxy = self.proxy
        closed = cast(_TunnelEnd, tunnel.on_closed)
        closed.connected = connected = time.monotonic()
        if not closed.address:  # made directly by the loop: the route's one address
            assert self.route is not None
            closed.address = self.route.addresses[0]
        proxy.tunnel_opened(self, tunnel, request.protocol, connected - closed.started)  # ops
        tune_socket(upstream.get_extra_info("socket"))  # the client's has it from its listener
        local = upstream.get_extra_info("sockname")
        # The reply goes out before any upstream byte can (the loop reads the upstream only
        # after this returns): a server that speaks first must not have its bytes land
        # ahead of "200 Connection established".
        client.write(handshake.success_reply(local[0], local[1]))
        tunnel.client.connection_made(client)  # adopts it and sets its flow control
        client.set_protocol(tunnel.client)
        # From here only the tunnel can end this connection: its end uncounts it (once), and
        # nothing refers to this session any more.
        closed.host, closed.counted, self.counted = self.host, self.counted, False
        first = request.early_data
        if first:
            tunnel.client.received += len(first)
            upstream.write(first)
        # If the destination did not take the first bytes whole, the write paused the client:
        # the upstream pump's resume_writing resumes it, not us.
        if not upstream.get_write_buffer_size():
            client.resume_reading()

    # plain-HTTP forwarding (net.forward): the relay asks the session for these

    def _forward(self, request: Forward) -> None:
        """Hand the connection to a forward relay, which checks and dials every request
        itself, the first one included; the session stays its owner until it ends."""
        limits = self.config.limits
        framer = ForwardFramer(max_head=limits.max_head)
        self.forward = ForwardTunnel(self, self.proxy.buffers, framer, self.proxy.loop)
        self.forward.start(self.transport, request)

    def forward_check(self, request: OriginRequest) -> None:
        require(self.policy.credentials(request.credentials, protocol=FORWARD_PROTOCOL))
        require(self.policy.destination(request.destination))

    async def forward_connect(self, destination: Destination, pump: Pump) -> Connection:
        upstream = await self.proxy.upstream.open(destination, check=self._allowed, protocol=pump)
        sock = upstream.sock
        if sock is not None:  # a race of several addresses, or through a parent
            try:
                await self.proxy.loop.create_connection(lambda: pump, sock=sock)
            except BaseException:
                sock.close()
                raise
        return upstream

    def forward_opened(self, tunnel: Tunnel, seconds: float) -> None:
        self.proxy.tunnel_opened(self, tunnel, FORWARD_PROTOCOL, seconds)  # ops

    def forward_ended(self, tunnel: Tunnel) -> str:
        proxy = self.proxy
        if tunnel in proxy.tunnels:
            outcome = proxy.tunnel_closed(tunnel, FORWARD_PROTOCOL)  # ops
        else:
            outcome = CLOSED_OK
            proxy.session_ended(self)  # ops: it never opened an upstream
        self.release()
        self.forward = None
        return outcome

    def forward_refused(self, error: ProxyError) -> bool:
        self.proxy.metrics.refused(error)  # ops
        return self.proxy.refusal_logged(error.failure.cause)

    def forward_keep(self) -> bool:
        return not self.proxy.draining

    def forward_hold(self, delta: int) -> bool:
        proxy = self.proxy
        if delta > 0 and proxy.handshake_bytes + delta > self.config.limits.handshake_memory:
            return False
        proxy.handshake_bytes += delta
        return True
