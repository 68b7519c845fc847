"""Parent proxies: which destinations go through which parent, and one attempt through one.

The rules are pure (`Parent.matches`); the attempt uses python-socks' public asyncio API
(``python_socks.async_.asyncio.Proxy``), always with IPv4 literals on both sides:

- the parent's own name is resolved A-only by our resolver and python-socks is given the
  IPv4 address, so its socket to the parent is AF_INET and it never resolves anything;
- the destination is resolved locally too, so the parent is handed an IPv4 literal and
  cannot pick an IPv6 address of its own (``rdns`` stays off: there is no name to send).

Errors: a parent that cannot be reached is `ParentUnreachable` (its failure from the errno;
the next parent is tried); a parent that answers with an error for the destination is an
UpstreamError whose failure follows the parent's reply code (a SOCKS5 "connection refused"
is answered as ECONNREFUSED, an HTTP 403 as DENIED ...). Every reason names the parent by
its label, never with its credentials.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

import python_socks
from python_socks.async_.asyncio import Proxy as SocksProxy

from ipv4proxy.config import ParentConfig
from ipv4proxy.errors import Failure, Socks5Reply, UpstreamError, failure_for_errno
from ipv4proxy.rules import DomainPattern

__all__ = ["Parent", "ParentUnreachable", "matching", "parents_of"]

# Domain patterns, CIDRs and port ranges are the policy's syntax (``ipv4proxy.rules``).

_SCHEMES = {
    "socks5": python_socks.ProxyType.SOCKS5,
    "socks4": python_socks.ProxyType.SOCKS4,
    "http": python_socks.ProxyType.HTTP,
}

# RFC 1928 section 6 reply codes, as the same failures a direct connect would give.
_SOCKS5_REPLIES: dict[int, Failure] = {
    Socks5Reply.NOT_ALLOWED: Failure.DENIED,
    Socks5Reply.NETWORK_UNREACHABLE: Failure.NET_UNREACHABLE,
    Socks5Reply.HOST_UNREACHABLE: Failure.HOST_UNREACHABLE,
    Socks5Reply.CONNECTION_REFUSED: Failure.REFUSED,
    Socks5Reply.TTL_EXPIRED: Failure.TIMEOUT,
}
# HTTP parents answer CONNECT with a status; these two say something precise.
_HTTP_REPLIES = {403: Failure.DENIED, 504: Failure.TIMEOUT}


class ParentUnreachable(UpstreamError):
    """The parent itself could not be reached (its address refused, timed out ...)."""


@dataclass(frozen=True, slots=True)
class Parent:
    """One parent proxy, with its rules. ``repr`` never shows the password."""

    label: str
    kind: python_socks.ProxyType
    host: str
    port: int
    username: str | None
    password: str | None
    domains: tuple[DomainPattern, ...]
    networks: tuple[ipaddress.IPv4Network, ...]
    ports: frozenset[int]

    def __repr__(self) -> str:
        return f"Parent({self.label!r}, {self.kind.name} {self.host}:{self.port})"

    @classmethod
    def from_config(cls, config: ParentConfig) -> Parent:
        parts = urllib.parse.urlsplit(config.url)
        return cls(
            label=config.label,
            kind=_SCHEMES[parts.scheme],
            host=(parts.hostname or "").lower().rstrip("."),
            port=parts.port or 0,
            username=urllib.parse.unquote(parts.username) if parts.username else None,
            password=urllib.parse.unquote(parts.password) if parts.password else None,
            domains=config.rules.domains,  # parsed once, by the configuration
            networks=tuple(cidr.network for cidr in config.rules.cidrs),
            ports=config.rules.ports,
        )

    def matches(self, host: str, addresses: Sequence[str], port: int) -> bool:
        """Tell whether the destination ``host``:``port``, resolved to ``addresses``, goes here.

        The port must be listed (any port when none is); then the name must match a domain
        pattern or any resolved address must be in a CIDR (anything, when neither is set).
        """
        if self.ports and port not in self.ports:
            return False
        if not self.domains and not self.networks:
            return True
        if any(pattern.matches(host) for pattern in self.domains):
            return True
        return any(
            ipaddress.IPv4Address(address) in network
            for address in addresses
            for network in self.networks
        )

    async def connect(
        self, parent_address: str, address: str, port: int, limit: float
    ) -> socket.socket:
        """Through this parent at ``parent_address``, a socket connected to ``address``:``port``.

        Both are IPv4 literals. Raises ParentUnreachable, or UpstreamError for the
        parent's refusal; the caller bounds the time (``limit`` is python-socks' own bound).
        """
        proxy = SocksProxy(
            self.kind,
            parent_address,
            self.port,
            username=self.username,
            password=self.password,
            rdns=False,
        )
        where = f"parent {self.label} ({parent_address}:{self.port})"
        try:
            return await proxy.connect(address, port, timeout=limit)
        except python_socks.ProxyConnectionError as exc:
            failure = failure_for_errno(exc.errno)
            raise ParentUnreachable(
                f"{where} unreachable: {failure.cause}", failure=failure
            ) from exc
        except python_socks.ProxyTimeoutError as exc:
            raise UpstreamError(f"{where}: no answer in time", failure=Failure.TIMEOUT) from exc
        except python_socks.ProxyError as exc:
            raise UpstreamError(
                f"{where} refused {address}:{port}: {exc}", failure=self._failure(exc.error_code)
            ) from exc
        except OSError as exc:  # the parent closed or reset the connection mid-handshake
            raise UpstreamError(
                f"{where} closed the connection: {exc.strerror or exc}",
                failure=Failure.CONNECT_FAILED,
            ) from exc

    def _failure(self, code: int | None) -> Failure:
        if self.kind is python_socks.ProxyType.SOCKS5:
            return _SOCKS5_REPLIES.get(code or 0, Failure.CONNECT_FAILED)
        if self.kind is python_socks.ProxyType.HTTP:
            return _HTTP_REPLIES.get(code or 0, Failure.CONNECT_FAILED)
        return Failure.CONNECT_FAILED


def parents_of(configs: Sequence[ParentConfig]) -> tuple[Parent, ...]:
    return tuple(Parent.from_config(c) for c in configs)


def matching(
    parents: Sequence[Parent], host: str, addresses: Sequence[str], port: int
) -> tuple[Parent, ...]:
    """The parents for a destination, in configuration order; empty: go direct."""
    return tuple(p for p in parents if p.matches(host, addresses, port))
