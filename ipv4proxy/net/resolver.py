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
- The search list is applied here (`search_names`, a pure function: libc's and dnspython's
  order, ndots deciding whether the name as given goes first or last); each candidate is
  one dnspython resolution without search, all within the one ``timeout``. `lookup`
  returns the name that answered (`Resolved`), so the caller can judge *that* name:
  ``db`` may be ``db.corp.example`` (the session runs the domain policy on it).
- At most ``max_in_flight`` distinct names are looked up at once (joining a name already
  in flight does not count). Over it a lookup fails at once with DNS_BUSY, unless an
  expired answer is still inside the stale window: that is served instead. A prefetch
  over the cap is skipped.
- UDP queries go through one `DnsClient` per Resolver: a few connected sockets per
  nameserver shared by every lookup, not a socket per query (``dnsclient``).
- Failures are ResolveError with the cause: NXDOMAIN, NODATA (the name exists but has no A
  record), DNS_FAILURE (servers failed or timed out) or DNS_BUSY.
- Each lookup is reported once to the ``on_lookup`` hook (metrics) with one of
  LOOKUP_RESULTS; serve-stale reports LOOKUP_STALE when it answers from an expired entry.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

from ipv4proxy.config import ResolverConfig
from ipv4proxy.errors import Failure, ResolveError
from ipv4proxy.log import event
from ipv4proxy.net.dnscache import DnsCache, Entry
from ipv4proxy.net.dnsclient import DnsClient, PooledNameserver

__all__ = [
    "LOOKUP_BUSY",
    "LOOKUP_ERROR",
    "LOOKUP_HIT",
    "LOOKUP_MISS",
    "LOOKUP_NODATA",
    "LOOKUP_NXDOMAIN",
    "LOOKUP_RESULTS",
    "LOOKUP_STALE",
    "LookupHook",
    "Resolved",
    "Resolver",
    "dns_resolver",
    "negative_ttl",
    "read_hosts",
    "search_names",
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
LOOKUP_BUSY = "busy"  # refused at once: resolver.max_in_flight lookups were in flight
LOOKUP_RESULTS = (
    LOOKUP_HIT,
    LOOKUP_MISS,
    LOOKUP_STALE,
    LOOKUP_NXDOMAIN,
    LOOKUP_NODATA,
    LOOKUP_ERROR,
    LOOKUP_BUSY,
)

# RFC 1035 section 2.3.4: 255 octets on the wire, so 253 characters as text without the
# final dot. A longer search candidate is skipped, as libc skips it.
_MAX_NAME = 253
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


@dataclass(frozen=True, slots=True)
class Resolved:
    """A lookup's answer: ``name`` is the name that answered (``db.corp.example`` for
    ``db`` through the search list; the name itself from the hosts file or without a
    search list), ``addresses`` its IPv4 addresses."""

    name: str
    addresses: tuple[str, ...]


def search_names(name: str, search: Sequence[str], ndots: int) -> tuple[str, ...]:
    """The names a lookup of ``name`` asks for, in order (resolv.conf(5), as dnspython and
    libc do): a name with at least ``ndots`` dots is tried as given first, then with each
    search domain; a name with fewer dots gets the search domains first, as given last. A
    name ending in a dot is absolute: only itself. Candidates longer than a DNS name can
    be are skipped; repeats are dropped. Names are lower-case, without the final dot."""
    name = name.lower()
    if name.endswith("."):
        return (name.rstrip("."),)
    expanded = [
        f"{name}.{domain}"
        for domain in (d.lower().strip(".") for d in search)
        if domain and len(name) + 1 + len(domain) <= _MAX_NAME
    ]
    names = [name, *expanded] if name.count(".") >= ndots else [*expanded, name]
    return tuple(dict.fromkeys(names))


def _server_errors(exc: dns.resolver.NoNameservers) -> str:
    """What each server said, in one short line (``127.0.0.1:53 REFUSED``): dnspython's own
    text repeats the query and each server's exception."""
    said = []
    for server, _tcp, port, error, response in exc.kwargs.get("errors", []):
        # dnspython names a server "Do53:ADDRESS@PORT"; the port is the tuple's own.
        address = str(getattr(server, "address", server)).split("@")[0].removeprefix("Do53:")
        if isinstance(response, dns.message.Message):
            what = dns.rcode.to_text(response.rcode())
        elif isinstance(error, OSError) and error.errno:
            what = f"{errno.errorcode.get(error.errno, error.errno)} ({error.strerror})"
        else:
            what = type(error).__name__ if isinstance(error, Exception) else str(error)
        said.append(f"{address}:{port} {what}")
    return ", ".join(dict.fromkeys(said)) or "no answer"


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


def _dns_resolver(
    config: ResolverConfig, client: DnsClient | None = None
) -> dns.asyncresolver.Resolver:
    """With ``client``, UDP queries share its socket pool (`PooledNameserver`)."""
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
    if client is not None:
        servers = [_pooled(server, resolver.port, client) for server in servers]
    resolver.nameservers = servers
    resolver.lifetime = config.timeout
    resolver.cache = None  # ours is below, on a monotonic clock
    return resolver


def _pooled(
    server: str | dns.nameserver.Nameserver, port: int, client: DnsClient
) -> dns.nameserver.Nameserver:
    if isinstance(server, str):
        return PooledNameserver(server, port, client)
    if isinstance(server, dns.nameserver.Do53Nameserver):
        return PooledNameserver(server.address, server.port, client)
    return server  # pragma: no cover - resolv.conf and our settings give Do53 servers only


def _search_list(resolver: dns.asyncresolver.Resolver) -> tuple[tuple[str, ...], int]:
    """resolv.conf's search list (or its ``domain``, as dnspython falls back) and ndots."""
    domains: list[dns.name.Name] = list(resolver.search)
    if not domains and resolver.domain is not None and resolver.domain != dns.name.root:
        domains = [resolver.domain]
    texts = tuple(domain.to_text(omit_final_dot=True) for domain in domains)
    return texts, resolver.ndots if resolver.ndots is not None else 1


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
    """Resolve names to IPv4 addresses. ``lookup()`` (or ``resolve()``, addresses only) is
    the interface; ``close()`` ends it."""

    def __init__(
        self,
        config: ResolverConfig,
        *,
        clock: Clock = time.monotonic,
        hosts: Mapping[str, tuple[str, ...]] | None = None,
        on_lookup: LookupHook = _ignore,
        client: DnsClient | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._hosts = dict(hosts) if hosts is not None else _load_hosts(config.hosts_file)
        self.client = client if client is not None else DnsClient()
        self._dns = _dns_resolver(config, self.client)
        self._search, self._ndots = _search_list(self._dns)
        self._cache = DnsCache(
            size=config.cache_size, stale_window=config.stale_window, prefetch=config.prefetch
        )
        self._flights: dict[str, asyncio.Task[Resolved]] = {}
        self._on_lookup = on_lookup

    @property
    def in_flight(self) -> int:
        """Distinct names being looked up now (prefetches included)."""
        return len(self._flights)

    def search_names(self, name: str) -> tuple[str, ...]:
        """The names a lookup of ``name`` would ask DNS for, in order."""
        return search_names(name, self._search, self._ndots)

    async def resolve(self, name: str) -> tuple[str, ...]:
        """The IPv4 addresses of ``name``; as `lookup`."""
        return (await self.lookup(name)).addresses

    async def lookup(self, name: str) -> Resolved:
        """The IPv4 addresses of ``name`` (lower-case, no trailing dot), and the name that
        answered (through the search list it may be longer).

        Raises ResolveError whose failure is NXDOMAIN, NODATA, DNS_FAILURE or DNS_BUSY.
        """
        hosts = self._hosts.get(name)
        if hosts:
            self._on_lookup(LOOKUP_HIT)
            return Resolved(name, hosts)
        now = self._clock()
        entry = self._cache.fresh(name, now)
        if entry is not None:
            if entry.failure is not None:
                self._on_lookup(_FAILURE_RESULTS.get(entry.failure, LOOKUP_ERROR))
                raise ResolveError(entry.reason, failure=entry.failure)
            self._on_lookup(LOOKUP_HIT)
            if self._cache.wants_prefetch(entry, now):
                self._flight(name)  # over the cap: no refresh now, the entry still serves
            return _resolved(name, entry)
        stale = self._cache.recently_failed(name, now)
        if stale is not None:
            self._on_lookup(LOOKUP_STALE)
            return _resolved(name, stale)
        flight = self._flight(name)
        if flight is None:
            return self._busy(name, now)
        try:
            resolved = await asyncio.shield(flight)
        except ResolveError as exc:
            if exc.failure is Failure.DNS_FAILURE:
                stale = self._cache.failed(name, self._clock())
                if stale is not None:
                    self._served_stale(name, stale, exc)
                    return _resolved(name, stale)
                self._on_lookup(LOOKUP_ERROR)
            else:
                self._on_lookup(_FAILURE_RESULTS.get(exc.failure, LOOKUP_ERROR))
            raise
        self._on_lookup(LOOKUP_MISS)
        return resolved

    def _busy(self, name: str, now: float) -> Resolved:
        """Over ``max_in_flight``: an expired answer if one is still in the stale window
        (DNS is not asked, so no recheck timer starts), else DNS_BUSY at once."""
        stale = self._cache.stale(name, now)
        if stale is not None:
            self._on_lookup(LOOKUP_STALE)
            return _resolved(name, stale)
        self._on_lookup(LOOKUP_BUSY)
        cap = self._config.max_in_flight
        raise ResolveError(
            f"DNS lookup of {name} not started: {cap} lookups are in flight"
            f" (resolver.max_in_flight); try again",
            failure=Failure.DNS_BUSY,
        )

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

    def _flight(self, name: str) -> asyncio.Task[Resolved] | None:
        """The one lookup in flight for ``name``, started if none is and there is room
        under ``max_in_flight``; None when there is not."""
        flight = self._flights.get(name)
        if flight is None:
            if len(self._flights) >= self._config.max_in_flight:
                return None
            flight = asyncio.get_running_loop().create_task(self._query(name), name=f"dns {name}")
            self._flights[name] = flight
            flight.add_done_callback(lambda task: self._landed(name, task))
        return flight

    def _landed(self, name: str, task: asyncio.Task[Resolved]) -> None:
        self._flights.pop(name, None)
        # Retrieved here so a prefetch nobody awaits never logs "exception never retrieved".
        if not task.cancelled() and task.exception() is not None:
            log.debug("DNS refresh of %s failed: %s", name, task.exception())

    async def close(self) -> None:
        """Cancel every lookup in flight (prefetches included), wait for them to end, and
        close the UDP sockets."""
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        if flights:
            await asyncio.wait(flights)
        self.client.close()

    async def _query(self, name: str) -> Resolved:
        """Ask DNS for each search candidate in turn, within one ``timeout``; cache and
        return the first that has A records."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.timeout
        nxdomains: list[dns.message.Message] = []
        for candidate in self.search_names(name):
            lifetime = deadline - loop.time()
            if lifetime <= 0:
                raise ResolveError(f"DNS lookup of {name} timed out")
            try:
                answer = await self._ask(name, candidate, lifetime)
            except dns.resolver.NXDOMAIN as exc:
                nxdomains += exc.kwargs.get("responses", {}).values()
                continue
            addresses = tuple(dict.fromkeys(r.address for r in answer))  # rdata order, once
            if not addresses:
                raise ResolveError(f"no IPv4 address (A record) for {name}", failure=Failure.NODATA)
            ttl = float(answer.rrset.ttl if answer.rrset is not None else 0)
            ttl = min(max(ttl, self._config.min_ttl), self._config.max_ttl)
            self._cache.put(name, Entry(addresses, self._clock() + ttl, ttl, name=candidate))
            return Resolved(candidate, addresses)
        error = ResolveError(f"{name} does not exist (NXDOMAIN)", failure=Failure.NXDOMAIN)
        self._negative(name, error, nxdomains)
        raise error

    async def _ask(self, name: str, candidate: str, lifetime: float) -> dns.resolver.Answer:
        """One dnspython resolution of ``candidate`` (absolute, no search); NXDOMAIN passes
        through for the next candidate, every other failure is a ResolveError."""
        try:
            return await self._dns.resolve(
                f"{candidate}.", dns.rdatatype.A, search=False, lifetime=lifetime
            )
        except dns.resolver.NXDOMAIN:
            raise
        except dns.resolver.NoAnswer as exc:
            error = ResolveError(f"no IPv4 address (A record) for {name}", failure=Failure.NODATA)
            self._negative(name, error, [exc.kwargs["response"]])
            raise error from exc
        except dns.resolver.LifetimeTimeout as exc:
            raise ResolveError(f"DNS lookup of {name} timed out") from exc
        except dns.resolver.NoNameservers as exc:
            raise ResolveError(
                f"DNS lookup of {name} failed: every DNS server failed ({_server_errors(exc)})"
            ) from exc
        except dns.exception.DNSException as exc:
            raise ResolveError(f"DNS lookup of {name} failed: {type(exc).__name__}") from exc

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


def _resolved(name: str, entry: Entry) -> Resolved:
    return Resolved(entry.name or name, entry.addresses)
