"""A-only name resolution: /etc/hosts (IPv4 entries), then DNS, with a TTL cache.

Rules:
- Only A records are ever asked for; no AAAA query leaves this module, whatever the name.
- /etc/hosts is read once at start (IPv4 lines only), and wins over DNS, as libc does.
- resolv.conf gives the nameservers, the search list and ndots (Kubernetes pods rely on
  ``ndots:5`` and ``svc.cluster.local`` search domains); IPv6 nameservers are skipped so no
  IPv6 socket is ever opened.
- Answers are cached (``dnscache``) for their TTL, clamped to [min_ttl, max_ttl], on an
  injected monotonic clock; concurrent lookups of one name share one query (the flight is
  a named task owned here and shielded, so one cancelled caller does not cancel the others).
- NXDOMAIN and NODATA are cached for min(SOA TTL, SOA MINIMUM) of the answer's authority
  section (RFC 2308 section 5), at most negative_max_ttl; without an SOA they are not cached.
- When every server fails or times out, an expired answer is served for up to stale_window
  (RFC 8767), with a warning naming the name and how long ago it expired.
- A hit in the last ``prefetch`` fraction of its TTL refreshes the name in the background
  (same single flight), so a busy name never waits on DNS.
- Failures are ResolveError with the cause: NXDOMAIN, NODATA (the name exists but has no A
  record) or DNS_FAILURE (servers failed or timed out).
- Each lookup is reported once to the ``on_lookup`` hook (metrics) with one of
  LOOKUP_RESULTS; serve-stale reports LOOKUP_STALE when it answers from an expired entry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping

import dns.asyncresolver
import dns.exception
import dns.message
import dns.nameserver
import dns.rdatatype
import dns.resolver

from ipv4proxy.config import ResolverConfig
from ipv4proxy.errors import Failure, ResolveError
from ipv4proxy.log import event
from ipv4proxy.net.dnscache import DnsCache, Entry

__all__ = [
    "LOOKUP_ERROR",
    "LOOKUP_HIT",
    "LOOKUP_MISS",
    "LOOKUP_NODATA",
    "LOOKUP_NXDOMAIN",
    "LOOKUP_RESULTS",
    "LOOKUP_STALE",
    "LookupHook",
    "Resolver",
    "dns_resolver",
    "negative_ttl",
    "read_hosts",
]

log = logging.getLogger("ipv4proxy.resolver")

Clock = Callable[[], float]
LookupHook = Callable[[str], None]

# What one lookup ended as, for the on_lookup hook (the metrics' ``result`` label).
LOOKUP_HIT = "hit"  # answered from the cache or the hosts file
LOOKUP_MISS = "miss"  # asked DNS (or joined a query in flight) and got A records
LOOKUP_STALE = "stale"  # answered from an expired entry because DNS failed (serve-stale)
LOOKUP_NXDOMAIN = "nxdomain"
LOOKUP_NODATA = "nodata"
LOOKUP_ERROR = "error"  # DNS servers failed or timed out
LOOKUP_RESULTS = (
    LOOKUP_HIT,
    LOOKUP_MISS,
    LOOKUP_STALE,
    LOOKUP_NXDOMAIN,
    LOOKUP_NODATA,
    LOOKUP_ERROR,
)
_FAILURE_RESULTS = {Failure.NXDOMAIN: LOOKUP_NXDOMAIN, Failure.NODATA: LOOKUP_NODATA}


def _ignore(result: str) -> None:
    pass


def read_hosts(text: str) -> dict[str, tuple[str, ...]]:
    """Parse hosts(5) text into name -> IPv4 addresses, in file order; IPv6 lines are dropped."""
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = ipaddress.IPv4Address(fields[0])
        except ValueError:
            continue  # IPv6 (or garbage): never handed to the dialer
        for name in fields[1:]:
            addresses = table.setdefault(name.lower().rstrip("."), [])
            if str(address) not in addresses:
                addresses.append(str(address))
    return {name: tuple(addresses) for name, addresses in table.items()}


def _load_hosts(path: str) -> dict[str, tuple[str, ...]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return read_hosts(file.read())
    except OSError as exc:
        log.warning("hosts file %s not read (%s); DNS only", path, exc.strerror)
        return {}


def dns_resolver(config: ResolverConfig) -> dns.asyncresolver.Resolver:
    """A dnspython resolver with the proxy's settings (``doctor`` asks it for AAAA too)."""
    return _dns_resolver(config)


def _dns_resolver(config: ResolverConfig) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    try:
        resolver.read_resolv_conf(config.resolv_conf)
    except (OSError, dns.resolver.NoResolverConfiguration) as exc:
        # Without nameservers of our own, a missing resolv.conf leaves only the hosts file.
        level = logging.DEBUG if config.nameservers else logging.WARNING
        log.log(level, "resolv.conf %s not usable (%s)", config.resolv_conf, exc)
    servers: list[str | dns.nameserver.Nameserver] = []
    if config.nameservers:
        servers = [
            dns.nameserver.Do53Nameserver(host, port)
            for host, port in config.nameserver_addresses()
        ]
    else:
        for server in resolver.nameservers:
            address = server if isinstance(server, str) else getattr(server, "address", "")
            if ":" in str(address):
                log.warning(
                    "skipping IPv6 nameserver %s: this proxy opens IPv4 sockets only", address
                )
            else:
                servers.append(server)
    if not servers:
        log.warning("no IPv4 nameserver configured; only the hosts file and literals resolve")
    resolver.nameservers = servers
    resolver.lifetime = config.timeout
    resolver.cache = None  # ours is below, on a monotonic clock
    return resolver


def negative_ttl(responses: Iterable[dns.message.Message]) -> float | None:
    """RFC 2308 section 5: min(SOA TTL, SOA MINIMUM) over the responses; None without an SOA."""
    ttls: list[float] = []
    for response in responses:
        soa = next((r for r in response.authority if r.rdtype == dns.rdatatype.SOA), None)
        if soa is None:
            return None
        ttls.append(float(min(soa.ttl, *(int(getattr(r, "minimum", 0)) for r in soa))))
    return min(ttls) if ttls else None


class Resolver:
    """Resolve names to IPv4 addresses. ``resolve()`` is the interface; ``close()`` ends it."""

    def __init__(
        self,
        config: ResolverConfig,
        *,
        clock: Clock = time.monotonic,
        hosts: Mapping[str, tuple[str, ...]] | None = None,
        on_lookup: LookupHook = _ignore,
    ) -> None:
        self._config = config
        self._clock = clock
        self._hosts = dict(hosts) if hosts is not None else _load_hosts(config.hosts_file)
        self._dns = _dns_resolver(config)
        self._cache = DnsCache(
            size=config.cache_size, stale_window=config.stale_window, prefetch=config.prefetch
        )
        self._flights: dict[str, asyncio.Task[tuple[str, ...]]] = {}
        self._on_lookup = on_lookup

    async def resolve(self, name: str) -> tuple[str, ...]:
        """The IPv4 addresses of ``name`` (lower-case, no trailing dot).

        Raises ResolveError whose failure is NXDOMAIN, NODATA or DNS_FAILURE.
        """
        hosts = self._hosts.get(name)
        if hosts:
            self._on_lookup(LOOKUP_HIT)
            return hosts
        now = self._clock()
        entry = self._cache.fresh(name, now)
        if entry is not None:
            if entry.failure is not None:
                self._on_lookup(_FAILURE_RESULTS.get(entry.failure, LOOKUP_ERROR))
                raise ResolveError(entry.reason, failure=entry.failure)
            self._on_lookup(LOOKUP_HIT)
            if self._cache.wants_prefetch(entry, now):
                self._flight(name)
            return entry.addresses
        stale = self._cache.recently_failed(name, now)
        if stale is not None:
            self._on_lookup(LOOKUP_STALE)
            return stale.addresses
        try:
            addresses = await asyncio.shield(self._flight(name))
        except ResolveError as exc:
            if exc.failure is Failure.DNS_FAILURE:
                stale = self._cache.failed(name, self._clock())
                if stale is not None:
                    self._served_stale(name, stale, exc)
                    return stale.addresses
                self._on_lookup(LOOKUP_ERROR)
            else:
                self._on_lookup(_FAILURE_RESULTS.get(exc.failure, LOOKUP_ERROR))
            raise
        self._on_lookup(LOOKUP_MISS)
        return addresses

    def _served_stale(self, name: str, entry: Entry, error: ResolveError) -> None:
        self._on_lookup(LOOKUP_STALE)
        event(
            log,
            "dns_stale",
            logging.WARNING,
            host=name,
            expired_s=round(self._clock() - entry.expires, 1),
            addresses=",".join(entry.addresses),
            reason=str(error),
        )

    def _flight(self, name: str) -> asyncio.Task[tuple[str, ...]]:
        """The one query in flight for ``name``, started if none is."""
        flight = self._flights.get(name)
        if flight is None:
            flight = asyncio.get_running_loop().create_task(self._query(name), name=f"dns {name}")
            self._flights[name] = flight
            flight.add_done_callback(lambda task: self._landed(name, task))
        return flight

    def _landed(self, name: str, task: asyncio.Task[tuple[str, ...]]) -> None:
        self._flights.pop(name, None)
        # Retrieved here so a prefetch nobody awaits never logs "exception never retrieved".
        if not task.cancelled() and task.exception() is not None:
            log.debug("DNS refresh of %s failed: %s", name, task.exception())

    async def close(self) -> None:
        """Cancel every query in flight (prefetches included) and wait for them to end."""
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        if flights:
            await asyncio.wait(flights)

    async def _query(self, name: str) -> tuple[str, ...]:
        try:
            answer = await self._dns.resolve(name, dns.rdatatype.A, search=True)
        except dns.resolver.NXDOMAIN as exc:
            error = ResolveError(f"{name} does not exist (NXDOMAIN)", failure=Failure.NXDOMAIN)
            self._negative(name, error, exc.kwargs.get("responses", {}).values())
            raise error from exc
        except dns.resolver.NoAnswer as exc:
            error = ResolveError(f"no IPv4 address (A record) for {name}", failure=Failure.NODATA)
            self._negative(name, error, [exc.kwargs["response"]])
            raise error from exc
        except dns.resolver.LifetimeTimeout as exc:
            raise ResolveError(f"DNS lookup of {name} timed out") from exc
        except (dns.resolver.NoNameservers, dns.exception.DNSException) as exc:
            raise ResolveError(f"DNS lookup of {name} failed: {exc}") from exc
        addresses = tuple(dict.fromkeys(r.address for r in answer))  # rdata order, no repeats
        if not addresses:
            raise ResolveError(f"no IPv4 address (A record) for {name}", failure=Failure.NODATA)
        ttl = float(answer.rrset.ttl if answer.rrset is not None else 0)
        ttl = min(max(ttl, self._config.min_ttl), self._config.max_ttl)
        self._cache.put(name, Entry(addresses, self._clock() + ttl, ttl))
        return addresses

    def _negative(
        self, name: str, error: ResolveError, responses: Iterable[dns.message.Message]
    ) -> None:
        """Cache a negative answer for its RFC 2308 time, capped; not at all without an SOA."""
        ttl = negative_ttl(responses)
        if ttl is None or self._config.negative_max_ttl <= 0:
            return
        ttl = min(max(ttl, self._config.min_ttl), self._config.negative_max_ttl)
        entry = Entry((), self._clock() + ttl, ttl, failure=error.failure, reason=str(error))
        self._cache.put(name, entry)
