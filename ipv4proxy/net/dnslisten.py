"""The DNS listener (DNS mode): answers clients' queries with every IPv6 address taken out.

Job: on each ``dns.listen`` address, take DNS queries over UDP and TCP, forward them to the
upstream servers (``dns.upstreams``, else the resolver's nameservers), and hand back the
answer `dnsrewrite.rewrite` makes of the upstream's. Glue only: the rewriting is pure
(``protocols/dnsrewrite.py``); so are the cache (`AnswerCache`) and the rate limiter
(`TokenBuckets`), each with its clock injected.

Rules:
- Who may ask: ``dns.clients`` CIDRs, loopback only when empty (never an open resolver).
  Anyone else gets REFUSED (an answer no larger than the query).
- Per client address a token bucket of ``dns.client_rate`` queries a second (burst the
  same); over it: REFUSED. At most ``dns.max_in_flight`` queries forwarded at once; over
  it: SERVFAIL at once (the client retries later, nothing queues).
- The client's query goes upstream as it came (EDNS options, DO, CD), under a fresh random
  ID; the answer gets the client's ID back. A UDP client's query goes over UDP and a
  truncated answer (TC) goes to the client as it came (it asks again over TCP); a TCP
  client's query goes over TCP.
- Answers are cached, keyed by (name, type, class, EDNS or not, DO, CD), for their
  smallest TTL (``resolver.max_ttl`` at most; negative answers for their SOA's,
  ``resolver.negative_max_ttl`` at most), and served with their TTLs counted down;
  ``resolver.cache_size`` answers at most, least recently used go first. A cached answer
  is served without the EDNS options the upstream sent (they answered another query); a
  forwarded one carries them as they came.
- A cached answer larger than a UDP client takes (512 bytes, or its EDNS payload size) is
  sent as header and question with TC set.
- Loop safety: when an upstream is one of the listen addresses (or the listener is on
  0.0.0.0 and an upstream is this host), `loop_problem` names it and the proxy refuses
  to start.
- Upstream UDP queries use a connected socket each (at most ``dns.max_in_flight`` at
  once), not the resolver's pooled client (``dnsclient``): that one parses every answer
  and drops what it cannot parse, while this listener passes the upstream's bytes on
  untouched when nothing is to be rewritten, and answers SERVFAIL to unparseable ones.
- An A answer of several records is shaped to the address known to work
  (``net/dnsshaper.py``, ``protocols/dnsshape.py``) before it is cached.
- Bounded: in-flight queries, cached answers (count and bytes), rate buckets
  (``_MAX_BUCKETS``), TCP connections (``_MAX_TCP``), the size of a query, queries per TCP
  connection (pending and in all) and its idle time.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import secrets
import struct
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from ipv4proxy.config import Config, DnsConfig
from ipv4proxy.errors import ConfigError
from ipv4proxy.log import event, lifecycle
from ipv4proxy.metrics import Metrics
from ipv4proxy.net.dialer import Dialer
from ipv4proxy.net.dnsshaper import Shaper
from ipv4proxy.net.resolver import dns_resolver, negative_ttl
from ipv4proxy.policy import Policy
from ipv4proxy.protocols import dnsrewrite
from ipv4proxy.protocols.dnsrewrite import Question

__all__ = [
    "AnswerCache",
    "DnsListener",
    "TokenBuckets",
    "effective_upstreams",
    "loop_problem",
]

log = logging.getLogger("ipv4proxy.dns")

Clock = Callable[[], float]

# Client addresses with a rate bucket at once; a full bucket is forgotten first, so a spray
# of source addresses cannot grow memory (10000 buckets are under 1 MB).
_MAX_BUCKETS = 10_000
# TCP connections open at once: DNS over TCP is the rare retry after TC.
_MAX_TCP = 256
# Queries one TCP connection may ask, and seconds it may sit idle (RFC 7766 suggests
# seconds, not minutes, for a server's idle timeout).
_TCP_QUERIES = 100
_TCP_IDLE = 10.0
_MAX_MESSAGE = 65535
# A query is one question and an OPT record: a few hundred bytes at most (a 255-byte name,
# a cookie). A TCP client announcing more is not asking a question; it is closed.
_MAX_QUERY = 4096
# Queries of one TCP connection read but not answered yet (RFC 7766 pipelining): a client
# waits for answers long before this; with _MAX_TCP and _MAX_QUERY, 8 MiB at most.
_TCP_PENDING = 8
# Answer bytes queued for a TCP client that does not read them: past this the client is
# not reading, and it is dropped (with _MAX_TCP, 4 MiB held at most, plus one answer each).
_TCP_UNSENT = 16 * 1024
# Bytes of cached answers: resolver.cache_size bounds the count, this the size, since one
# answer over TCP may be 64 KiB. Typical answers are 100-500 bytes: 8 MiB holds 10,000+.
_CACHE_BYTES = 8 * 1024 * 1024


class TokenBuckets:
    """A token bucket per key: ``rate`` tokens a second, at most ``rate`` held."""

    def __init__(self, rate: float, clock: Clock, max_keys: int = _MAX_BUCKETS) -> None:
        self.rate = rate
        self._clock = clock
        self._max = max_keys
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def allow(self, key: str) -> bool:
        """Take one token for ``key``; False when it has none."""
        now = self._clock()
        tokens, then = self._buckets.pop(key, (self.rate, now))
        tokens = min(self.rate, tokens + (now - then) * self.rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)  # the least recently seen client
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(slots=True)
class _Entry:
    wire: bytes
    stored: float
    ttl: float


class AnswerCache:
    """Rewritten answers by `Question.key`, served with their TTLs counted down."""

    def __init__(
        self,
        size: int,
        clock: Clock,
        max_ttl: float,
        negative_max_ttl: float,
        max_bytes: int = _CACHE_BYTES,
    ) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self.max_ttl = max_ttl
        self.negative_max_ttl = negative_max_ttl
        self._clock = clock
        self._entries: collections.OrderedDict[tuple[str, int, int, bool, bool, bool], _Entry] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, question: Question, wire: bytes) -> None:
        """Keep ``wire`` (the rewritten answer) if it may be cached."""
        message = dnsrewrite.answered(wire)
        if message is None or message.flags & dns.flags.TC:
            return
        ttl = _cache_ttl(message, self.max_ttl, self.negative_max_ttl)
        if ttl is None or ttl < 1:
            return
        if len(wire) > self.max_bytes:
            return
        key = question.key
        self._drop(key)
        self._entries[key] = _Entry(wire, self._clock(), ttl)
        self.bytes += len(wire)
        while len(self._entries) > self.size or self.bytes > self.max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self.bytes -= len(oldest.wire)

    def _drop(self, key: tuple[str, int, int, bool, bool, bool]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= len(entry.wire)

    def get(self, question: Question) -> bytes | None:
        """The cached answer for ``question`` with its ID and TTLs of now, or None. Its
        EDNS options (the upstream's cookie, NSID) are left out: they answered another
        query."""
        key = question.key
        entry = self._entries.get(key)
        if entry is None:
            return None
        elapsed = int(self._clock() - entry.stored)
        if elapsed >= entry.ttl:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        message = dnsrewrite.answered(entry.wire)
        if message is None:  # pragma: no cover - only parsed answers are stored
            return None
        message.id = question.message.id
        message.question = question.message.question  # its own spelling (0x20 case)
        if message.edns >= 0 and message.options:
            message.use_edns(0, message.ednsflags, message.payload, options=[])
        if elapsed > 0:
            for section in (message.answer, message.authority, message.additional):
                for rrset in section:
                    rrset.ttl = max(0, rrset.ttl - elapsed)
        # In the stored order: dnspython shuffles records unless told not to, and the order
        # of a shaped answer (dns.shape first) is what it is for.
        return bytes(message.to_wire(max_size=_MAX_MESSAGE, want_shuffle=False))


def _cache_ttl(message: dns.message.Message, max_ttl: float, negative_max: float) -> float | None:
    rcode = message.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return None
    rrsets = [*message.answer, *message.authority, *message.additional]
    if rcode == dns.rcode.NOERROR and message.answer:
        return min(*(r.ttl for r in rrsets), max_ttl)
    negative = negative_ttl([message])  # the SOA's TTL and minimum (RFC 2308)
    return None if negative is None else min(negative, negative_max)


def effective_upstreams(config: Config) -> tuple[tuple[str, int], ...]:
    """Where queries go: ``dns.upstreams``, else the resolver's IPv4 nameservers."""
    if config.dns.upstreams:
        return config.dns.upstream_addresses()
    if config.resolver.nameservers:
        return config.resolver.nameserver_addresses()
    resolver = dns_resolver(config.resolver)
    found = []
    for server in resolver.nameservers:
        address = server if isinstance(server, str) else getattr(server, "address", "")
        port = getattr(server, "port", resolver.port)
        if address and ":" not in str(address):
            found.append((str(address), int(port)))
    return tuple(found)


def loop_problem(
    config: DnsConfig, upstreams: Iterable[tuple[str, int]], local: Iterable[str] = ()
) -> str | None:
    """Why forwarding to ``upstreams`` would reach this listener again, or None."""
    here = set(local)
    for host, port in config.listen_addresses():
        for up_host, up_port in upstreams:
            if up_port != port:
                continue
            wildcard = host == "0.0.0.0" and (  # noqa: S104 - a comparison, not a bind
                ipaddress.ip_address(up_host).is_loopback or up_host in here
            )
            if up_host == host or wildcard:
                return (
                    f"dns.upstreams: the DNS upstream {up_host}:{up_port} is this DNS "
                    f"listener ({host}:{port}): every query would loop. Set dns.upstreams "
                    "to the real DNS servers (the cluster DNS Service IP, the VM's resolver)"
                )
    return None


def _allowed_networks(config: DnsConfig) -> tuple[ipaddress.IPv4Network, ...]:
    cidrs = config.clients or ("127.0.0.0/8",)
    return tuple(ipaddress.IPv4Network(c, strict=False) for c in cidrs)


class DnsListener:
    """The DNS listener of one process: its sockets, cache, limits and settings."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        clock: Clock = time.monotonic,
        *,
        dialer: Callable[[], Dialer] | None = None,
        policy: Callable[[], Policy] | None = None,
    ) -> None:
        """``dialer`` and ``policy`` give the proxy's own (its memory, breakers and address
        rules, for shaping); without them the listener keeps its own."""
        self.metrics = metrics
        self._clock = clock
        self._own_dialer = Dialer(config.dialer, clock=clock)
        self._own_policy = Policy(config)
        self.shaper = Shaper(
            config,
            metrics,
            dialer or (lambda: self._own_dialer),
            policy or (lambda: self._own_policy),
            clock,
        )
        self._servers: list[asyncio.Server] = []
        self._transports: list[asyncio.DatagramTransport] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_clients: set[_TcpClient] = set()
        self.in_flight = 0
        self.bound: list[tuple[str, int]] = []
        self.config = config
        self._apply(config)

    def _apply(self, config: Config) -> None:
        dns_config = config.dns
        self.upstreams = effective_upstreams(config)
        self.networks = _allowed_networks(dns_config)
        self.buckets = TokenBuckets(dns_config.client_rate, self._clock)
        self.cache = AnswerCache(
            config.resolver.cache_size,
            self._clock,
            config.resolver.max_ttl,
            config.resolver.negative_max_ttl,
        )
        self.timeout = config.resolver.timeout

    def reload(self, config: Config) -> None:
        """New settings for new queries; the listen addresses cannot change."""
        if config.dns.listen != self.config.dns.listen:
            raise ConfigError("dns.listen cannot change on reload; restart")
        old = self.config.dns
        shaping = (old.shape, old.shape_names, old.shape_ttl)
        keep_cache = (
            config.resolver == self.config.resolver
            and effective_upstreams(config) == self.upstreams
            and shaping == (config.dns.shape, config.dns.shape_names, config.dns.shape_ttl)
        )
        cache = self.cache
        self.config = config
        self._apply(config)
        self._own_policy = Policy(config)  # used only when the proxy gave none
        if config.dialer != self._own_dialer.config:
            self._own_dialer = Dialer(config.dialer, clock=self._clock)
        self.shaper.apply(config)
        if keep_cache:
            self.cache = cache

    async def start(self) -> list[tuple[str, int]]:
        """Bind UDP and TCP on every listen address. Raises OSError."""
        loop = asyncio.get_running_loop()
        for host, port in self.config.dns.listen_addresses():
            server = await loop.create_server(
                lambda: _TcpClient(self), host, port, backlog=128, reuse_address=True
            )
            self._servers.append(server)
            bound_port = server.sockets[0].getsockname()[1]
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpServer(self), local_addr=(host, bound_port)
            )
            self._transports.append(transport)
            self.bound.append((host, bound_port))
            lifecycle(
                log,
                "dns_listening",
                f"dns listening on {host}:{bound_port} (udp, tcp)",
                address=f"{host}:{bound_port}",
            )
        return self.bound

    def stop_listening(self) -> None:
        """The drain: no new queries. A UDP query in flight goes unanswered (its socket is
        closed); open TCP connections are answered until `close`."""
        for server in self._servers:
            server.close()
        for transport in self._transports:
            transport.close()
        self._transports = []

    async def close(self) -> None:
        self.stop_listening()
        for server in self._servers:
            await server.wait_closed()
        self._servers = []
        for task in list(self._tasks):
            task.cancel()
        self.shaper.close()
        for client in list(self._tcp_clients):
            client.abort()

    # admission

    def admit(self, client: str, query: Question) -> bytes | None:
        """REFUSED for a client not allowed or over its rate; else None."""
        outcome = None
        try:
            address = ipaddress.IPv4Address(client)
        except ValueError:
            address = None
        if address is None or not any(address in n for n in self.networks):
            outcome = "refused"
        elif not self.buckets.allow(client):
            outcome = "rate_limited"
        if outcome is None:
            return None
        self._done(client, query, outcome, None)
        return dnsrewrite.refused(query.message)

    def at_once(self, client: str, query: Question) -> bytes | None:
        """An answer without going upstream (cached, or SERVFAIL over dns.max_in_flight),
        or None: then a slot is taken here, synchronously, and `forward` must follow (so
        a burst of datagrams cannot start more forwards than the cap)."""
        started = self._clock()
        cached = self.cache.get(query)
        if cached is not None:
            self._done(client, query, "cached", started)
            return cached
        if self.in_flight >= self.config.dns.max_in_flight:
            self._done(client, query, "busy", started)
            return dnsrewrite.servfail(query.message)
        self.in_flight += 1
        return None

    async def forward(self, client: str, query: Question, wire: bytes, tcp: bool) -> bytes:
        """The answer from upstream to a query `at_once` took a slot for; frees the slot."""
        started = self._clock()
        try:
            response = await self._forward(query, wire, tcp)
        finally:
            self.in_flight -= 1
        if response is None:
            self._done(client, query, "upstream_failure", started)
            return dnsrewrite.servfail(query.message)
        result = dnsrewrite.rewrite(query.message, response)
        if result.servfail:
            self.metrics.dns_upstream_failure("bad_response")
            self._done(client, query, "servfail", started)
            return result.wire
        if result.hints_removed:
            self.metrics.dns_ipv6hints_removed.inc(result.hints_removed)
        if result.aaaa_emptied:
            self.metrics.dns_aaaa_emptied.inc()
        wire = await self.shaper.shape(query, result.wire)
        self.cache.put(query, wire)
        # An AAAA question the upstream answered NOERROR: answered without addresses. Its
        # NXDOMAIN or SERVFAIL went on as it came, and counts as ok.
        noerror = (wire[3] & 0x0F) == dns.rcode.NOERROR
        outcome = "nodata_aaaa" if query.qtype == dns.rdatatype.AAAA and noerror else "ok"
        self._done(client, query, outcome, started)
        return wire

    def _done(self, client: str, query: Question, outcome: str, started: float | None) -> None:
        """Count and log one query; ``started`` is None for a refusal (no latency)."""
        seconds = max(0.0, self._clock() - started) if started is not None else 0.0
        self.metrics.dns_query(query.qtype_label, outcome, seconds if started is not None else None)
        event(
            log,
            "dns_query",
            logging.DEBUG,
            client=client,
            qname=query.name,
            qtype=dns.rdatatype.to_text(query.qtype),  # type: ignore[arg-type]
            outcome=outcome,
            seconds=round(seconds, 4),
        )

    # upstream

    async def _forward(self, query: Question, wire: bytes, tcp: bool) -> bytes | None:
        """The upstream's answer with the client's ID, or None when every upstream failed."""
        upstreams = self.upstreams
        if not upstreams:
            self.metrics.dns_upstream_failure("no_upstream")
            return None
        per_server = max(1.0, self.timeout / len(upstreams))
        for host, port in upstreams:
            query_id = secrets.randbits(16)
            out = struct.pack("!H", query_id) + wire[2:]
            try:
                async with asyncio.timeout(per_server):
                    if tcp:
                        data = await _ask_tcp(host, port, out)
                    else:
                        data = await _ask_udp(host, port, out, query_id)
            except TimeoutError:
                self.metrics.dns_upstream_failure("timeout")
                continue
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.metrics.dns_upstream_failure("unreachable")
                continue
            return wire[:2] + data[2:]
        return None

    def spawn(self, work: asyncio.Task[None]) -> None:
        self._tasks.add(work)
        work.add_done_callback(self._tasks.discard)


async def _ask_tcp(host: str, port: int, out: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(struct.pack("!H", len(out)) + out)
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        if size < 12:
            raise ValueError("short DNS message")
        return await reader.readexactly(size)
    finally:
        writer.close()


class _UdpAsk(asyncio.DatagramProtocol):
    def __init__(self, query_id: int) -> None:
        self.query_id = query_id
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        # The socket is connected: only the server's datagrams arrive. Another ID is a
        # stale or forged answer: dropped, the timeout decides.
        ours = len(data) >= 12 and data[:2] == struct.pack("!H", self.query_id)
        if ours and not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def _ask_udp(host: str, port: int, out: bytes, query_id: int) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _UdpAsk(query_id), remote_addr=(host, port)
    )
    try:
        transport.sendto(out)
        return await protocol.answer
    finally:
        transport.close()


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, listener: DnsListener) -> None:
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is a DatagramTransport without subclassing it.
        self.transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        client = str(addr[0])
        query = dnsrewrite.parse_query(data)
        if query is None or self.transport is None:
            return  # not a query: dropped (an answer to it could be used for reflection)
        now = self.listener.admit(client, query) or self.listener.at_once(client, query)
        if now is not None:
            self._send(query, now, addr)
            return
        task = asyncio.ensure_future(self._answer(client, query, data, addr))
        self.listener.spawn(task)

    async def _answer(
        self, client: str, query: Question, data: bytes, addr: tuple[str | int, int]
    ) -> None:
        try:
            wire = await self.listener.forward(client, query, data, tcp=False)
        except Exception:  # a bug must not leave an unretrieved task error: SERVFAIL
            log.exception("dns query failed")
            wire = dnsrewrite.servfail(query.message)
        self._send(query, wire, addr)

    def _send(self, query: Question, wire: bytes, addr: tuple[str | int, int]) -> None:
        if len(wire) > query.payload:
            wire = dnsrewrite.truncated(query.message, wire)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.sendto(wire, addr)


class _TcpClient(asyncio.Protocol):
    """One DNS-over-TCP connection: length-prefixed queries, answered in order."""

    def __init__(self, listener: DnsListener) -> None:
        self.listener = listener
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.asked = 0
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_TCP_PENDING)
        self.worker: asyncio.Task[None] | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's TCPTransport
        if len(self.listener._tcp_clients) >= _MAX_TCP:
            self.transport.abort()
            return
        self.listener._tcp_clients.add(self)
        peer = self.transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        self.worker = asyncio.ensure_future(self._work())
        self._touch()

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(_TCP_IDLE, self._close)

    def _close(self) -> None:
        transport = self.transport
        if transport is not None:  # unsent answers are dropped, not waited for
            transport.abort() if transport.get_write_buffer_size() else transport.close()

    def abort(self) -> None:
        """The listener is closing: drop the connection and its worker now."""
        if self.transport is not None:
            self.transport.abort()
        if self.worker is not None:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        # The idle timer is reset by whole queries and answers only, never by a trickle of
        # bytes: a slow client cannot keep one of the _MAX_TCP slots with a byte a second.
        self.buffer += data
        while len(self.buffer) >= 2:
            size = struct.unpack("!H", self.buffer[:2])[0]
            if size > _MAX_QUERY:
                self._close()
                return
            if len(self.buffer) < 2 + size:
                break
            message = bytes(self.buffer[2 : 2 + size])
            del self.buffer[: 2 + size]
            self.asked += 1
            if self.asked > _TCP_QUERIES or self.queue.full():
                self._close()
                return
            self.queue.put_nowait(message)
            self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.worker is not None:
            self.listener._tcp_clients.discard(self)
            self.worker.cancel()

    async def _work(self) -> None:
        while True:
            data = await self.queue.get()
            query = dnsrewrite.parse_query(data)
            if query is None:
                self._close()
                return
            wire = self.listener.admit(self.client, query) or self.listener.at_once(
                self.client, query
            )
            if wire is None:
                try:
                    wire = await self.listener.forward(self.client, query, data, tcp=True)
                except Exception:  # a bug must not leave an unretrieved task error: SERVFAIL
                    log.exception("dns query failed")
                    wire = dnsrewrite.servfail(query.message)
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            transport.write(struct.pack("!H", len(wire)) + wire)
            if transport.get_write_buffer_size() > _TCP_UNSENT:
                transport.abort()  # not reading its answers: close() would wait for them
                return
            self._touch()
