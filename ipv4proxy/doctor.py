"""``ipv4proxy doctor HOST[:PORT]``: why a destination fails without the proxy, in one line.

For one destination it finds:
- its A records, through the proxy's own resolver (hosts file, resolv.conf nameservers,
  search list and ndots, or ``resolver.nameservers``), exactly as a tunnel would;
- its AAAA records, through a dnspython resolver with the same settings. Doctor asks for
  AAAA because it diagnoses what *clients* meet; the proxy itself never does;
- for each AAAA address, whether this machine has an IPv6 route to it: connect() on a UDP
  socket picks a route and a source address without sending anything, and fails with
  ENETUNREACH when there is none;
- for each A address, the time a TCP handshake over IPv4 takes (all addresses at once,
  each under the dialer's connect_timeout);
- a verdict (`verdict`, pure, table-tested) that an on-call engineer reads once;
- with ``dns.listen`` set, what a client of the DNS listener gets: doctor asks the first
  listen address for A and AAAA (answered empty) and says so, or that it does not answer.

Exit status (``cli``): 0 when an IPv4 connection succeeded, 1 when none did, 2 for bad
input or configuration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import socket
import time
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.resolver

from ipv4proxy.config import Config
from ipv4proxy.errors import Failure, ResolveError
from ipv4proxy.net.dnslisten import effective_upstreams
from ipv4proxy.net.resolver import Resolver, dns_resolver

__all__ = [
    "NODE_ATTEMPT_TIMEOUT",
    "Connection",
    "Report",
    "Route",
    "diagnose",
    "ipv6_route",
    "render_text",
    "verdict",
]

# Node 20-24's autoSelectFamilyAttemptTimeout default: an IPv4 handshake slower than this
# is abandoned for the next address, which on an IPv4-only host is an unroutable AAAA.
NODE_ATTEMPT_TIMEOUT = 0.25


@dataclass(frozen=True, slots=True)
class Route:
    """Whether this machine can route to one IPv6 address; ``detail`` is the source
    address when it can, the errno name when it cannot."""

    address: str
    routed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Connection:
    """One IPv4 handshake: its time in seconds, or the errno name it failed with."""

    address: str
    seconds: float | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    host: str
    port: int
    a: tuple[str, ...]
    a_error: str | None  # NXDOMAIN, NODATA or DNS_FAILURE with its reason
    aaaa: tuple[Route, ...]
    aaaa_error: str | None
    connections: tuple[Connection, ...]
    verdict: str
    # What the DNS listener answers (dns.listen set), e.g. "127.0.0.1:53: A 192.0.2.1;
    # AAAA none (NOERROR, 0 records)"; None when the listener is off.
    dns_listener: str | None = None

    @property
    def ipv4_ok(self) -> bool:
        return any(c.seconds is not None for c in self.connections)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["ipv4_ok"] = self.ipv4_ok
        return json.dumps(data, indent=2)


def _ms(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def verdict(
    a_error: str | None, routes: tuple[Route, ...], connections: tuple[Connection, ...]
) -> str:
    """The one-line diagnosis. Pure: the whole decision table lives here."""
    has_aaaa = bool(routes)
    unrouted = has_aaaa and not any(r.routed for r in routes)
    ipv6 = (
        "IPv6 unreachable (no route)"
        if unrouted
        else "IPv6 routed"
        if has_aaaa
        else "no AAAA record"
    )
    if a_error is not None:
        if has_aaaa:
            return (
                f"no IPv4 address ({a_error}) and {ipv6}: the destination is IPv6-only; "
                "ipv4proxy cannot reach it (it refuses with NODATA)"
            )
        if a_error.startswith(Failure.DNS_FAILURE.cause):
            return (
                f"DNS lookup failed ({a_error}): cannot tell whether the name has an IPv4 "
                "address; check the DNS servers (resolver.nameservers, resolv.conf)"
            )
        return f"no IPv4 address ({a_error}): nothing can connect to this name"
    good = [c.seconds for c in connections if c.seconds is not None]
    if not good:
        causes = ", ".join(sorted({c.error or "?" for c in connections}))
        return (
            f"IPv4 connect failed to every address ({causes}) and {ipv6}: the destination "
            "is unreachable over IPv4 from here; a proxy on this host cannot help"
        )
    fastest = min(good)
    handshake = f"IPv4 handshake {_ms(fastest)}"
    if unrouted and fastest > NODE_ATTEMPT_TIMEOUT:
        return (
            f"{ipv6} and {handshake}: Node >= 20 clients with the default 250 ms Happy "
            "Eyeballs attempt timeout fail here (ETIMEDOUT + ENETUNREACH); route them "
            "through ipv4proxy"
        )
    if unrouted:
        return (
            f"{ipv6} and {handshake}: clients work while IPv4 answers within Node's 250 ms "
            "Happy Eyeballs attempt timeout, and fail with ETIMEDOUT + ENETUNREACH when it "
            "does not; ipv4proxy removes that risk"
        )
    if has_aaaa:
        return (
            f"{ipv6} and {handshake}: this host has a route to the AAAA addresses; if "
            "IPv6 still fails, it fails beyond this host, and ipv4proxy avoids it"
        )
    return f"{ipv6} and {handshake}: clients connect over IPv4 directly; no IPv6 is tried"


def ipv6_route(address: str, port: int) -> Route:
    """Whether the kernel has a route to ``address``: a UDP connect() sends nothing."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
            udp.connect((address, port))
            source = str(udp.getsockname()[0])
    except OSError as exc:
        return Route(address, False, errno.errorcode.get(exc.errno or 0, str(exc)))
    return Route(address, True, source)


async def _connect(address: str, port: int, limit: float) -> Connection:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    started = time.perf_counter()  # the loop's clock counts whole milliseconds (uvloop)
    try:
        async with asyncio.timeout(limit):
            await loop.sock_connect(sock, (address, port))
    except TimeoutError:
        return Connection(address, None, "ETIMEDOUT")
    except OSError as exc:
        return Connection(address, None, errno.errorcode.get(exc.errno or 0, str(exc)))
    finally:
        sock.close()
    return Connection(address, time.perf_counter() - started)


async def _aaaa(config: Config, host: str) -> tuple[tuple[str, ...], str | None]:
    resolver = dns_resolver(config.resolver)
    try:
        answer = await resolver.resolve(host, "AAAA", search=True)
    except dns.resolver.NXDOMAIN:
        return (), Failure.NXDOMAIN.cause
    except dns.resolver.NoAnswer:
        return (), Failure.NODATA.cause
    except dns.resolver.LifetimeTimeout:
        seconds = config.resolver.timeout
        return (), f"{Failure.DNS_FAILURE.cause}: no answer from the DNS servers in {seconds:g} s"
    except dns.resolver.NoNameservers:
        return (), f"{Failure.DNS_FAILURE.cause}: every DNS server failed (SERVFAIL or refused)"
    except dns.exception.DNSException as exc:
        return (), f"{Failure.DNS_FAILURE.cause}: {type(exc).__name__}"
    return tuple(dict.fromkeys(str(r.address) for r in answer)), None


async def _a(config: Config, host: str) -> tuple[tuple[str, ...], str | None]:
    try:
        return await Resolver(config.resolver).resolve(host), None
    except ResolveError as exc:
        return (), f"{exc.failure.cause}: {exc}"


async def diagnose(config: Config, host: str, port: int, *, ipv4_literal: bool = False) -> Report:
    """Look ``host`` up both ways, check routes and time IPv4 handshakes."""
    a: tuple[str, ...] = ()
    a_error: str | None = None
    aaaa: tuple[str, ...] = ()
    aaaa_error: str | None = None
    if ipv4_literal:
        a = (host,)
    else:
        # Both at once: with the DNS servers down, each waits for the whole timeout.
        (a, a_error), (aaaa, aaaa_error) = await asyncio.gather(
            _a(config, host), _aaaa(config, host)
        )
    routes = tuple(ipv6_route(address, port) for address in aaaa)
    timeout = config.dialer.connect_timeout
    connections = tuple(await asyncio.gather(*(_connect(x, port, timeout) for x in a)))
    return Report(
        host=host,
        port=port,
        a=a,
        a_error=a_error,
        aaaa=routes,
        aaaa_error=aaaa_error,
        connections=connections,
        verdict=verdict(a_error, routes, connections),
        dns_listener=await _ask_listener(config, host) if not ipv4_literal else None,
    )


async def _ask_listener(config: Config, host: str) -> str | None:
    """What a client of the DNS listener gets for ``host``: its A and AAAA answers; an A
    answer the listener shaped (docs/dns-mode.md) is shown next to the upstream's."""
    if not config.dns.listen:
        return None
    address, port = config.dns.listen_addresses()[0]
    if address == "0.0.0.0":  # noqa: S104 - a comparison, not a bind
        address = "127.0.0.1"
    # A first lookup of a name with several A records waits for the listener's race.
    timeout = 2.0 + config.dns.shape_race_timeout
    parts = []
    for rdtype in ("A", "AAAA"):
        try:
            records, rcode = await _records(host, rdtype, address, port, timeout)
        except (dns.exception.DNSException, OSError) as exc:
            return f"{address}:{port}: not answering ({type(exc).__name__}: {exc})"
        shown = ", ".join(records) if records else f"none ({rcode}, 0 records)"
        if rdtype == "A" and records:
            upstream = await _upstream_a(config, host, timeout)
            # As sets: an upstream may rotate its records from one answer to the next.
            if upstream is not None and set(upstream) != set(records):
                shown += f" (shaped; the upstream's: {', '.join(upstream)})"
        parts.append(f"{rdtype} {shown}")
    return f"{address}:{port}: {'; '.join(parts)}"


async def _records(
    host: str, rdtype: str, address: str, port: int, seconds: float
) -> tuple[list[str], str]:
    """The ``rdtype`` records ``address``:``port`` answers for ``host``, and the rcode."""
    query = dns.message.make_query(host, rdtype)
    answer = await dns.asyncquery.udp(query, address, timeout=seconds, port=port)
    wanted = query.question[0].rdtype
    records = [rd.to_text() for r in answer.answer if r.rdtype == wanted for rd in r]
    return records, dns.rcode.to_text(answer.rcode())


async def _upstream_a(config: Config, host: str, seconds: float) -> list[str] | None:
    """The A records the DNS listener's first upstream gives for ``host``; None when it
    does not answer."""
    upstreams = effective_upstreams(config)
    if not upstreams:
        return None
    address, port = upstreams[0]
    try:
        records, _ = await _records(host, "A", address, port, seconds)
    except (dns.exception.DNSException, OSError):
        return None
    return records


def render_text(report: Report) -> str:
    """The human form: the records, the routes, the handshakes, the verdict last."""
    lines = [f"{report.host} port {report.port}"]
    lines.append(f"  A      {', '.join(report.a) if report.a else report.a_error}")
    if report.aaaa:
        for route in report.aaaa:
            how = f"route via {route.detail}" if route.routed else f"no route ({route.detail})"
            lines.append(f"  AAAA   {route.address}: {how}")
    else:
        lines.append(f"  AAAA   none ({report.aaaa_error or 'IPv4 literal'})")
    for c in report.connections:
        result = _ms(c.seconds) if c.seconds is not None else f"failed ({c.error})"
        lines.append(f"  IPv4   {c.address}:{report.port} connect {result}")
    if report.dns_listener is not None:
        lines.append(f"  DNS mode {report.dns_listener}")
    lines.append(f"verdict: {report.verdict}")
    return "\n".join(lines)
