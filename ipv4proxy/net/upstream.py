"""The upstream layer: from a destination to a connected AF_INET transport, direct or via a
parent.

Two steps, so that the session can look between them:

    route = upstream.route_now(destination) or await upstream.resolve(destination)
    # ... the session narrows route.addresses by policy, or refuses ...
    conn = await upstream.connect(route, protocol)  # conn.transport, .address, .via

`connect` is the one way to an upstream: whichever way it was reached (one address, a
race, a parent), it gives the transport made for ``protocol``. Rules:

- Names are resolved A-only (``resolver``); IPv4 literals are taken as they are.
- Direct: the destination's addresses race (``dialer.Dialer``: memory, breaker, one
  connect_timeout).
- Via parents (``parents``): each matching parent is tried in order, each of its own
  addresses (resolved A-only) in breaker order; a parent that cannot be reached is skipped
  for the next, while one that answers settles the outcome. Through one parent the
  destination's addresses race exactly as direct, each attempt a parent handshake for an
  IPv4 literal, each under the parent's own connect_timeout. A matched destination never
  goes out directly. When every parent is down the answer is the last parent's error, with
  every parent named in the reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass

from ipv4proxy.config import Config
from ipv4proxy.errors import DialError, ResolveError, UpstreamError, UpstreamTimeout
from ipv4proxy.net.breaker import Clock, Endpoint
from ipv4proxy.net.dialer import Dialer, Opening, adopt
from ipv4proxy.net.parents import Parent, ParentUnreachable, matching, parents_of
from ipv4proxy.net.resolver import Resolver
from ipv4proxy.protocols import HostKind
from ipv4proxy.protocols.events import Destination

__all__ = ["DIRECT", "Connection", "Route", "Upstream"]

DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a destination goes: its IPv4 addresses, and the parents to go through.

    ``literal``: the client gave an IPv4 address, not a name (``addresses == (host,)``).
    ``resolved``: the name whose A records these are, when the resolv.conf search list made
    it differ from ``host`` (``db`` -> ``db.corp.example``); else empty.
    """

    host: str
    port: int
    addresses: tuple[str, ...]
    parents: tuple[Parent, ...] = ()
    literal: bool = False
    resolved: str = ""


@dataclass(frozen=True, slots=True)
class Connection:
    """A connected upstream: the transport of the protocol `Upstream.connect` was given, the
    destination address it reached, and ``via``: ``direct`` or the parent's label."""

    transport: asyncio.Transport
    address: str
    via: str = DIRECT


class Upstream:
    """Resolver, dialer and parents, shared by every session of one process."""

    def __init__(
        self, config: Config, resolver: Resolver, *, clock: Clock = time.monotonic
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.dialer = Dialer(config.dialer, clock=clock)
        self.parents = parents_of(config.parents)

    def reconfigured(self, config: Config, resolver: Resolver) -> Upstream:
        """An Upstream for a reloaded ``config``; the dialer's memory and breakers are kept
        unless the dialer's settings changed."""
        upstream = Upstream(config, resolver)
        if config.dialer == self.config.dialer:
            upstream.dialer = self.dialer
        return upstream

    def route_now(self, destination: Destination) -> Route | None:
        """The route of ``destination`` when it needs no lookup (an IPv4 literal), without
        a coroutine: the usual case for a sidecar. None for a name: `resolve` it."""
        if destination.kind is not HostKind.IPV4:
            return None
        host, port = destination.host, destination.port
        addresses = (host,)
        chosen = matching(self.parents, host, addresses, port) if self.parents else ()
        return Route(host, port, addresses, chosen, literal=True)

    async def resolve(self, destination: Destination) -> Route:
        """The route of ``destination``. Raises ResolveError."""
        literal = destination.kind is HostKind.IPV4
        resolved = ""
        if literal:
            addresses: tuple[str, ...] = (destination.host,)
        else:
            answer = await self.resolver.lookup(destination.host)
            addresses = answer.addresses
            if answer.name != destination.host:
                resolved = answer.name
        chosen = matching(self.parents, destination.host, addresses, destination.port)
        return Route(destination.host, destination.port, addresses, chosen, literal, resolved)

    async def connect(self, route: Route, protocol: Opening) -> Connection:
        """Connect along ``route``, with the transport made for ``protocol`` (its
        connection_made has run when this returns). Raises DialError, UpstreamTimeout or
        UpstreamError; OSError if the connected socket cannot be made a transport."""
        if not route.parents:
            transport, address = await self.dialer.connect(
                route.host, route.addresses, route.port, protocol
            )
            return Connection(transport, address)
        errors: list[UpstreamError] = []
        for parent, parent_address in await self._parent_endpoints(route.parents, errors):
            try:
                sock, address = await self._via(parent, parent_address, route)
            except DialError as exc:
                errors.append(exc)
                if all(isinstance(e, ParentUnreachable) for _, e in exc.attempts):
                    continue  # this parent is down: the next one may not be
                raise
            return Connection(await adopt(sock, protocol), address, parent.label)
        raise _all_down(route, errors)

    async def close(self) -> None:
        await self.resolver.close()

    async def _parent_endpoints(
        self, parents: tuple[Parent, ...], errors: list[UpstreamError]
    ) -> list[tuple[Parent, str]]:
        """Every (parent, IPv4 address) to try, in order; open breakers last."""
        endpoints: list[tuple[Parent, str]] = []
        for parent in parents:
            try:
                addresses = await self._addresses_of(parent.host)
            except ResolveError as exc:
                errors.append(ResolveError(f"parent {parent.label}: {exc}", failure=exc.failure))
                continue
            ordered = self.dialer.memory.order(parent.host, addresses)
            endpoints += [(parent, address) for address in ordered]
        breaker = self.dialer.breaker
        return sorted(endpoints, key=lambda e: breaker.is_open(Endpoint(e[1], e[0].port)))

    async def _addresses_of(self, host: str) -> tuple[str, ...]:
        try:
            return (str(ipaddress.IPv4Address(host)),)
        except ValueError:
            return await self.resolver.resolve(host)

    async def _via(
        self, parent: Parent, parent_address: str, route: Route
    ) -> tuple[socket.socket, str]:
        endpoint = Endpoint(parent_address, parent.port)
        breaker = self.dialer.breaker
        timeout = self.config.dialer.connect_timeout

        async def attempt(address: str, port: int) -> socket.socket:
            try:
                sock = await parent.connect(parent_address, address, port, timeout)
            except ParentUnreachable:
                breaker.failure(endpoint)
                raise
            breaker.success(endpoint)
            return sock

        try:
            result = await self.dialer.dial(
                route.host,
                route.addresses,
                route.port,
                connect=attempt,
                via=parent.label,
                track=False,
            )
        except UpstreamTimeout:
            # Silence through a parent cannot be told apart from a silent parent; counting it
            # against the parent moves a black-holed parent behind the others.
            breaker.failure(endpoint)
            raise
        self.dialer.memory.connected(parent.host, parent_address)
        return result


def _all_down(route: Route, errors: list[UpstreamError]) -> UpstreamError:
    """The answer when no parent could be reached: the last failure, every parent named."""
    target = f"{route.host}:{route.port}"
    if not errors:  # pragma: no cover - a route with parents always records an error
        return UpstreamError(f"no parent proxy for {target}")
    reasons = "; ".join(str(e) for e in errors)
    return UpstreamError(
        f"every parent proxy for {target} is down ({reasons})", failure=errors[-1].failure
    )
