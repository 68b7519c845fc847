"""The asyncio glue: accept, carry out each connection's session, dial, relay, log.

One `Client` per client connection feeds what happens to it (accepted, bytes received,
handshake timed out, route resolved, upstream connected, dial failed) to its sans-IO
`Session` (``protocols.session``) and carries out the commands it gets back: write,
close (or reset), open the upstream, hand over to the relay or the forwarder, log a
refusal. Every protocol and policy decision is the session's; this module only moves
bytes, awaits the resolver and the dialer, and keeps the books. Opening is the only task
a connection ever has; once the upstream is connected the client transport is handed to
the relay (``net.relay``) and the Client is gone. A plain-HTTP forward request hands the
connection to a `ForwardTunnel` (``net.forward``), which frames every request and asks
the Client (and through it the session) to check and dial each one.

Rules:
- Phases have their own clocks: handshake_timeout until the request is complete, then the
  resolver's and the dialer's own timeouts, then idle_timeout on the open tunnel.
- Bounds (``limits``): connections over max_connections (or max_connections_per_client
  from one address) are closed at accept, with no reply and one log line (the session
  says so); a client outside the listener's ``clients`` is refused before it is counted.
  Bytes of unfinished requests count against handshake_memory (the session refuses the
  request that would go over it); held relay bytes against relay_memory (``net.relay``).
  Idle tunnels are found by the relay's registry (`Tunnels.sweep`), every tenth of
  idle_timeout.
- A connection's count has one owner, its `_Ledger`: taken at accept, given back once,
  when the client connection (or its tunnel) closes.
- A Client takes the Proxy's settings, policy and upstream when it is accepted and keeps
  them: a reload (SIGHUP) changes what later connections get, never an open one.
- Operations (metrics, drain bookkeeping) live in the `Proxy`; a Client reports to it in
  a few places only, each marked ``# ops``: accept and close, the handover to the relay
  and the tunnel-closed callback, and a refusal's log line.
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
from ipv4proxy.errors import ConfigError, Failure, ProxyError
from ipv4proxy.linebudget import LineBudget
from ipv4proxy.log import event, lifecycle
from ipv4proxy.metrics import CLOSED_CUT, CLOSED_OK, Metrics
from ipv4proxy.net import heap
from ipv4proxy.net.forward import PROTOCOL as FORWARD_PROTOCOL
from ipv4proxy.net.forward import ForwardTunnel
from ipv4proxy.net.relay import Buffers, Pump, Tunnel, Tunnels, tune_socket
from ipv4proxy.net.resolver import Resolver
from ipv4proxy.net.upstream import DIRECT, Connection, Upstream
from ipv4proxy.policy import Policy
from ipv4proxy.protocols import Destination, Forward, Send
from ipv4proxy.protocols.forward import ForwardFramer, OriginRequest
from ipv4proxy.protocols.session import (
    Close,
    Command,
    Dial,
    LogRefusal,
    OpenUpstream,
    Session,
    Settings,
    StartForward,
    StartRelay,
)
from ipv4proxy.rules import local_addresses

__all__ = ["Client", "Proxy"]

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


def _settings(config: Config) -> tuple[Settings, ...]:
    """What the sessions of each listener are made with, under ``config``."""
    limits = config.limits
    return tuple(
        Settings(
            listener=index,
            max_head=limits.max_head,
            handshake_timeout=limits.handshake_timeout,
            handshake_memory=limits.handshake_memory,
            connect_failure=config.http.connect_failure,
        )
        for index in range(max(1, len(config.listeners)))
    )


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
        self.settings = _settings(config)
        self.tunnels = Tunnels()
        self._sweeper: asyncio.TimerHandle | None = None
        self.sessions: set[Client] = set()
        self.listening = False
        self.draining = False
        # Set by a worker (``workers: N``): its listeners join the others' on one port.
        self.reuse_port = False
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
        """Abort tunnels that moved no byte for idle_timeout; re-arm."""
        timeout = self.config.limits.idle_timeout
        self.tunnels.sweep(self.loop.time(), timeout)
        self._sweeper = self.loop.call_later(timeout / 10, self._sweep)

    async def start(self) -> list[tuple[str, int]]:
        """Bind every listener; returns the bound (host, port) pairs. Raises OSError."""
        bound: list[tuple[str, int]] = []
        for index, listener in enumerate(self.config.listeners):
            server = await self.loop.create_server(
                lambda index=index: Client(self, index),  # type: ignore[misc]
                listener.host,
                listener.port,
                backlog=1024,
                reuse_port=self.reuse_port,
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
        self.config, self.policy, self.settings = config, policy, _settings(config)

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
        count = self.tunnels.cut() + len(self.sessions)
        for session in list(self.sessions):
            session.transport.abort()
        return count

    def _check_idle(self) -> None:
        if self.draining and not self.sessions and not self.tunnels:
            self._idle.set()

    # What client connections report (the "# ops" places in Client).

    def session_ended(self, session: Client) -> None:
        self.sessions.discard(session)
        self._check_idle()

    def tunnel_opened(self, session: Client, tunnel: Tunnel, protocol: str, seconds: float) -> None:
        self.sessions.discard(session)
        self.tunnels.add(tunnel, self.loop.time())
        self.metrics.tunnel_opened(protocol, seconds)

    def tunnel_closed(self, tunnel: Tunnel, protocol: str) -> str:
        """Forget a closed tunnel and count it; returns its outcome for the access line."""
        if not self.tunnels.remove(tunnel):
            return CLOSED_OK
        if tunnel.idle:
            outcome = Failure.IDLE_TIMEOUT.cause
        else:
            outcome = CLOSED_CUT if self._cutting else CLOSED_OK
        self.metrics.tunnel_closed(protocol, outcome, tunnel.sent, tunnel.received)
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


class _Ledger:
    """What one client connection holds and reports: its slot in the connection limits
    (taken at accept, given back once, by `release`) and, once it is a tunnel, the
    tunnel's close callback: count it, give the slot back, write its access line.

    The one owner of the connection count: made at accept, it outlives the `Client` (a
    small object rather than a closure over it, so an open tunnel does not keep its
    handshake alive: 0.35 KiB less per idle tunnel).
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

    def __init__(self, proxy: Proxy, client: str, host: str) -> None:
        self.proxy = proxy
        self.client = client
        self.host = host
        self.counted = False
        # Set when a tunnel is being opened, and when its upstream is connected. The target
        # is kept as the Destination and spelled only when the access line is written.
        self.protocol = "-"
        self.target: Destination | str = "-"
        self.started = 0.0
        self.connected = 0.0
        self.address = ""
        self.via = DIRECT

    def release(self) -> None:
        """Give the connection's slot back (once)."""
        if self.counted:
            self.counted = False
            self.proxy.release(self.host)

    def __call__(self, tunnel: Tunnel) -> None:
        proxy = self.proxy
        outcome = proxy.tunnel_closed(tunnel, self.protocol)  # ops
        self.release()
        if not access.isEnabledFor(logging.INFO):
            return  # the line's fields are built only when it is written
        started = self.started
        event(
            access,
            "tunnel",
            client=self.client,
            protocol=self.protocol,
            target=str(self.target),
            address=self.address,
            via=self.via,
            connect_ms=round((self.connected - started) * 1000, 1),
            sent=tunnel.sent,
            received=tunnel.received,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            outcome=outcome,
        )


class Client(asyncio.Protocol):
    """One client connection, from accept until its relay starts: the I/O of its
    `Session`, whose commands it carries out (``protocols.session``). It decides nothing."""

    transport: asyncio.Transport  # set by connection_made, before any other call
    session: Session
    ledger: _Ledger

    def __init__(self, proxy: Proxy, listener: int = 0) -> None:
        self.proxy = proxy
        # Taken at accept: a reload never changes an open connection.
        self.settings = proxy.settings[listener]
        self.policy = proxy.policy
        self.upstream = proxy.upstream
        self.client = "-"
        # Bytes of the unfinished request counted against limits.handshake_memory.
        self.held = 0
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        # The tunnel being opened (its upstream pump reports the connect), then relayed.
        self.tunnel: Tunnel | None = None
        # Plain-HTTP forwarding: the relay that owns the connection from its first request.
        self.forward: ForwardTunnel | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        proxy = self.proxy
        proxy.sessions.add(self)  # ops: the drain waits for sessions too
        peer = transport.get_extra_info("peername")
        self.client = _address(peer)
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        self.session = session = Session(self.settings, self.policy, host)
        self.ledger = ledger = _Ledger(proxy, self.client, host)
        commands = session.accepted()
        if not commands:
            over = proxy.admit(host)
            if over is None:
                ledger.counted = True
                timeout = self.settings.handshake_timeout
                self.timer = proxy.loop.call_later(timeout, self._timed_out)
                return
            commands = session.over_limit(over)
        self._run(commands)

    def data_received(self, data: bytes) -> None:
        session = self.session
        commands = session.received(data)
        if commands:
            self._run(commands)
        if session.waiting and not self.transport.is_closing():
            self._hold(len(data))

    def eof_received(self) -> bool:
        return False  # a client that ends before its request is complete is done

    def connection_lost(self, exc: Exception | None) -> None:
        self._unhold()
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()
        self.ledger.release()
        self.proxy.session_ended(self)  # ops

    def _timed_out(self) -> None:
        self.timer = None
        self._run(self.session.timed_out())

    def _hold(self, nbytes: int) -> None:
        """Count ``nbytes`` more of an unfinished request against limits.handshake_memory
        (or let the session refuse it). A request that arrives whole (the usual case)
        completes in one feed and is never counted."""
        proxy = self.proxy
        if proxy.handshake_bytes + nbytes > self.settings.handshake_memory:
            self._run(self.session.over_budget(proxy.handshake_bytes))
            return
        self.held += nbytes
        proxy.handshake_bytes += nbytes

    def _unhold(self) -> None:
        self.proxy.handshake_bytes -= self.held
        self.held = 0

    # carrying out commands

    def _run(self, commands: Sequence[Command]) -> None:
        transport = self.transport
        if transport.is_closing():
            return  # the client is gone: nothing to answer, nobody to log for
        for command in commands:
            if isinstance(command, Send):
                transport.write(command.data)
            elif isinstance(command, OpenUpstream):
                self._request_done()
                transport.pause_reading()  # what the client sends now is for the tunnel
                self.task = self.proxy.loop.create_task(
                    self._open(command.destination), name=f"open {self.client}"
                )
                self.task.add_done_callback(self._opened)
            elif isinstance(command, Close):
                if command.reset:
                    _reset(transport)
                transport.close()
            elif isinstance(command, LogRefusal):
                self._log_refusal(command)
            elif isinstance(command, StartForward):
                self._request_done()
                self._forward(command.request)
            else:  # Dial and StartRelay are asked for by their own inputs
                raise TypeError(f"unexpected command {command!r}")

    def _request_done(self) -> None:
        self._unhold()  # the handshake has handed its bytes over
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _log_refusal(self, refusal: LogRefusal) -> None:
        error = refusal.error
        proxy = self.proxy
        proxy.metrics.refused(error)  # ops
        if not proxy.refusal_logged(error.failure.cause):
            return
        event(
            access,
            "tunnel",
            client=self.client,
            protocol=refusal.protocol,
            target=refusal.target,
            address="-",
            outcome=error.failure.cause,
            reason=str(error),
        )

    # opening the tunnel

    async def _open(self, destination: Destination) -> None:
        session = self.session
        ledger = self.ledger
        ledger.protocol, ledger.target = session.protocol, destination
        ledger.started = time.monotonic()
        tunnel = self.tunnel = Tunnel(ledger, self.proxy.buffers)
        pump = tunnel.upstream
        # "Upstream connected" arrives when the upstream transport exists, before it is
        # read from (`_made`), however the transport was made.
        pump.on_made = self._made
        try:
            upstream = self.upstream
            route = upstream.route_now(destination) or await upstream.resolve(destination)
            commands = session.resolved(route)
            dial = commands[0]
            if not isinstance(dial, Dial):
                self._run(commands)
                return
            if dial.addresses is not route.addresses:
                route = dataclasses.replace(route, addresses=dial.addresses)
            # The access line's address: the one dialled when there is one and no parent
            # (known before the relay starts); else what the race or the parent reached.
            ledger.address = route.addresses[0]
            connection = await upstream.connect(route, pump)
            ledger.address, ledger.via = connection.address, connection.via
        except ProxyError as exc:
            self._run(session.failed(exc))
        finally:
            pump.on_made = None

    def _opened(self, task: asyncio.Task[None]) -> None:
        """A tunnel set-up that died of something unexpected (an OSError making the
        transport, or a bug) must not leave its client paused forever: log it, drop it."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("setting up the tunnel of %s failed", self.client, exc_info=task.exception())
        self.transport.abort()

    def _made(self, upstream: asyncio.Transport) -> None:
        """The upstream is connected: start the relay before anything is read from it.
        A failure here must not leave the client paused forever: log it, drop both."""
        try:
            self._relay(upstream)
        except Exception:
            log.exception("setting up the tunnel of %s failed", self.client)
            upstream.abort()
            self.transport.abort()

    def _relay(self, upstream: asyncio.Transport) -> None:
        client = self.transport
        tunnel = self.tunnel
        assert tunnel is not None
        if client.is_closing():  # the client left while the upstream was connecting
            upstream.close()
            return
        ledger = self.ledger
        ledger.connected = connected = time.monotonic()
        self.proxy.tunnel_opened(self, tunnel, ledger.protocol, connected - ledger.started)  # ops
        tune_socket(upstream.get_extra_info("socket"))  # the client's has it from its listener
        local = upstream.get_extra_info("sockname")
        # The reply goes out before any upstream byte can (the loop reads the upstream only
        # after this returns): a server that speaks first must not have its bytes land
        # ahead of "200 Connection established".
        for command in self.session.connected(local[0], local[1]):
            if isinstance(command, Send):
                client.write(command.data)
            elif isinstance(command, StartRelay):
                # From here only the tunnel can end this connection; its ledger gives the
                # slot back, and nothing refers to this Client any more.
                tunnel.relay(client, command.first)

    # plain-HTTP forwarding (net.forward): the relay asks the session for these

    def _forward(self, request: Forward) -> None:
        """Hand the connection to a forward relay, which checks and dials every request
        itself, the first one included; the session stays its owner until it ends."""
        framer = ForwardFramer(max_head=self.settings.max_head)
        self.forward = ForwardTunnel(self, self.proxy.buffers, framer, self.proxy.loop)
        self.forward.start(self.transport, request)

    def forward_check(self, request: OriginRequest) -> None:
        denied = self.session.check_request(
            FORWARD_PROTOCOL, request.credentials, request.destination
        )
        if denied is not None:
            raise denied

    async def forward_connect(self, destination: Destination, pump: Pump) -> Connection:
        upstream = self.upstream
        route = upstream.route_now(destination) or await upstream.resolve(destination)
        addresses = self.session.allowed_addresses(route)
        if addresses is not route.addresses:
            route = dataclasses.replace(route, addresses=addresses)
        return await upstream.connect(route, pump)

    def forward_opened(self, tunnel: Tunnel, seconds: float) -> None:
        self.proxy.tunnel_opened(self, tunnel, FORWARD_PROTOCOL, seconds)  # ops

    def forward_ended(self, tunnel: Tunnel) -> str:
        proxy = self.proxy
        if tunnel in proxy.tunnels:
            outcome = proxy.tunnel_closed(tunnel, FORWARD_PROTOCOL)  # ops
        else:
            outcome = CLOSED_OK
            proxy.session_ended(self)  # ops: it never opened an upstream
        self.ledger.release()
        self.forward = None
        return outcome

    def forward_refused(self, error: ProxyError) -> bool:
        self.proxy.metrics.refused(error)  # ops
        return self.proxy.refusal_logged(error.failure.cause)

    def forward_keep(self) -> bool:
        return not self.proxy.draining

    def forward_hold(self, delta: int) -> bool:
        proxy = self.proxy
        if delta > 0 and proxy.handshake_bytes + delta > self.settings.handshake_memory:
            return False
        proxy.handshake_bytes += delta
        return True
