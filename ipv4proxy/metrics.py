"""Prometheus metrics: what the proxy counts, kept in a registry of its own.

Every series is listed here, with the label values it can take, so the whole set can be
read in one place (the README's metrics table is this list). The exposition format and the
histogram maths are prometheus-client's job; `Metrics.render()` returns the text page.

Rules:
- Bounded label cardinality: labels are protocol names, failure causes (the
  ``errors.Failure`` names), errno names, DNS result names and directions. A destination
  name or address is never a label (it lives in the access log line).
- Cheap on the hot path: nothing is counted per read; a tunnel's bytes are added once, when
  it closes. A refusal or a tunnel costs a few dictionary lookups.
- Its own CollectorRegistry, not the process-global one, so a test (or a second Proxy in one
  process) gets fresh numbers, and no library's metrics leak onto the page.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ipv4proxy.errors import DialError, Failure, ProxyError
from ipv4proxy.net.resolver import LOOKUP_RESULTS

__all__ = [
    "CONNECT_BUCKETS",
    "CONTENT_TYPE",
    "DNS_OUTCOMES",
    "DNS_QTYPES",
    "Metrics",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds from a complete request to a connected upstream socket (DNS lookup included).
# Fine below 250 ms, where Node's Happy Eyeballs attempt timer sits, and up to the 10 s
# connect timeout, where a black-holed address ends.
CONNECT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Seconds from a DNS query to its answer (DNS mode): cached answers are microseconds, a
# forwarded one a round trip to the cluster DNS (milliseconds), up to resolver.timeout.
DNS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The label values of ipv4proxy_dns_queries_total (README, "DNS mode").
DNS_QTYPES = ("A", "AAAA", "HTTPS", "SVCB", "ANY", "other")
DNS_OUTCOMES = (
    "ok",
    "cached",
    "nodata_aaaa",
    "refused",
    "rate_limited",
    "busy",
    "upstream_failure",
    "servfail",
)
DNS_UPSTREAM_FAILURES = ("timeout", "unreachable", "bad_response", "no_upstream")

# Outcome of a tunnel that was open: ended by one of its sides, or cut when the drain's
# grace period ran out (or at a second stop signal).
CLOSED_OK = "ok"
CLOSED_CUT = "cut"


class Metrics:
    """The proxy's counters; one instance per Proxy."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tunnels_opened = Counter(
            "ipv4proxy_tunnels_opened",
            "Tunnels whose upstream connection was made, by client protocol",
            ["protocol"],
            registry=r,
        )
        self.tunnels_closed = Counter(
            "ipv4proxy_tunnels_closed",
            "Tunnels that ended, by client protocol and outcome (ok: a side closed; "
            "cut: closed by the proxy at the end of a drain)",
            ["protocol", "outcome"],
            registry=r,
        )
        self.tunnels_active = Gauge("ipv4proxy_tunnels_active", "Tunnels open now", registry=r)
        self.connect_seconds = Histogram(
            "ipv4proxy_connect_seconds",
            "Seconds from a complete request to a connected upstream socket (DNS included)",
            buckets=CONNECT_BUCKETS,
            registry=r,
        )
        self.dns_lookups = Counter(
            "ipv4proxy_dns_lookups",
            "Name lookups by result: hit (cache or hosts file), miss (asked DNS, got A "
            "records), stale (expired answer served), nxdomain, nodata, error, busy (refused at "
            "once: resolver.max_in_flight lookups were in flight)",
            ["result"],
            registry=r,
        )
        self.connect_failures = Counter(
            "ipv4proxy_upstream_connect_failures",
            "Failed IPv4 connect attempts of dials that found no working address, by errno",
            ["cause"],
            registry=r,
        )
        self.bytes = Counter(
            "ipv4proxy_tunnel_bytes",
            "Bytes relayed by closed tunnels: sent (client to destination), received "
            "(destination to client)",
            ["direction"],
            registry=r,
        )
        self.refusals = Counter(
            "ipv4proxy_refusals",
            "Requests refused, by cause (the outcome of the access line)",
            ["reason"],
            registry=r,
        )
        self.reloads = Counter(
            "ipv4proxy_config_reloads",
            "SIGHUP reloads by result (applied or refused)",
            ["result"],
            registry=r,
        )
        self.ready = Gauge("ipv4proxy_ready", "1 when listening and not draining", registry=r)
        # Read when /metrics is scraped (`watch`), never updated per connection or read.
        self.connections_open = Gauge(
            "ipv4proxy_connections_open",
            "Client connections open now (bounded by limits.max_connections)",
            registry=r,
        )
        self.relay_held = Gauge(
            "ipv4proxy_relay_held_bytes",
            "Bytes tunnels hold for peers that read slowly (bounded by limits.relay_memory)",
            registry=r,
        )
        self.handshake_held = Gauge(
            "ipv4proxy_handshake_held_bytes",
            "Bytes unfinished requests hold (bounded by limits.handshake_memory)",
            registry=r,
        )
        self.dns_queries = Counter(
            "ipv4proxy_dns_queries",
            "DNS listener queries by type (A, AAAA, HTTPS, SVCB, ANY, other) and outcome (ok, "
            "cached, nodata_aaaa: an AAAA query the upstream answered NOERROR, answered "
            "without addresses, refused: a "
            "client not in dns.clients, rate_limited, busy: dns.max_in_flight reached, "
            "upstream_failure: no upstream answered, servfail: the upstream's answer was no "
            "answer)",
            ["qtype", "outcome"],
            registry=r,
        )
        self.dns_aaaa_emptied = Counter(
            "ipv4proxy_dns_aaaa_emptied",
            "AAAA queries whose upstream answer held AAAA records, answered without them",
            registry=r,
        )
        self.dns_ipv6hints_removed = Counter(
            "ipv4proxy_dns_ipv6hints_removed",
            "ipv6hint parameters taken out of HTTPS and SVCB records",
            registry=r,
        )
        self.dns_upstream_failures = Counter(
            "ipv4proxy_dns_upstream_failures",
            "DNS listener upstream attempts that failed, by cause (timeout, unreachable, "
            "bad_response, no_upstream)",
            ["cause"],
            registry=r,
        )
        self.dns_query_seconds = Histogram(
            "ipv4proxy_dns_query_seconds",
            "Seconds from a DNS listener query to its answer (refusals not included)",
            buckets=DNS_BUCKETS,
            registry=r,
        )
        # Series that exist from the start read 0 instead of being absent, so rate() and
        # alerts work before the first event.
        for result in LOOKUP_RESULTS:
            self.dns_lookups.labels(result)
        for failure in Failure:
            self.refusals.labels(failure.cause)
        for direction in ("sent", "received"):
            self.bytes.labels(direction)
        for result in ("applied", "refused"):
            self.reloads.labels(result)
        for qtype in DNS_QTYPES:
            for outcome in DNS_OUTCOMES:
                self.dns_queries.labels(qtype, outcome)
        for cause in DNS_UPSTREAM_FAILURES:
            self.dns_upstream_failures.labels(cause)

        # Label children of the per-tunnel series, bound once: labels() costs more than
        # the increment (validation, a lock, a dictionary of tuples).
        self._opened: dict[str, Counter] = {}
        self._closed: dict[tuple[str, str], Counter] = {}
        self._sent = self.bytes.labels("sent")
        self._received = self.bytes.labels("received")

    def watch(
        self,
        connections: Callable[[], float],
        relay_held: Callable[[], float],
        handshake_held: Callable[[], float],
    ) -> None:
        """Where the gauges of what the proxy holds read their values at scrape time."""
        self.connections_open.set_function(connections)
        self.relay_held.set_function(relay_held)
        self.handshake_held.set_function(handshake_held)

    def tunnel_opened(self, protocol: str, connect_seconds: float) -> None:
        child = self._opened.get(protocol)
        if child is None:
            child = self._opened[protocol] = self.tunnels_opened.labels(protocol)
        child.inc()
        self.tunnels_active.inc()
        self.connect_seconds.observe(connect_seconds)

    def tunnel_closed(self, protocol: str, outcome: str, sent: int, received: int) -> None:
        key = (protocol, outcome)
        child = self._closed.get(key)
        if child is None:
            child = self._closed[key] = self.tunnels_closed.labels(protocol, outcome)
        child.inc()
        self.tunnels_active.dec()
        self._sent.inc(sent)
        self._received.inc(received)

    def refused(self, error: ProxyError) -> None:
        """Count a refusal, and each failed connect attempt a DialError carries."""
        self.refusals.labels(error.failure.cause).inc()
        if isinstance(error, DialError):
            for _, failure in error.attempts:
                self.connect_failures.labels(errno_name(failure)).inc()

    def dns_lookup(self, result: str) -> None:
        """The resolver's hook: one call per lookup, with one of LOOKUP_RESULTS."""
        self.dns_lookups.labels(result).inc()

    def dns_query(self, qtype: str, outcome: str, seconds: float | None) -> None:
        """The DNS listener's hook: one call per query; ``seconds`` None for a refusal."""
        self.dns_queries.labels(qtype, outcome).inc()
        if seconds is not None:
            self.dns_query_seconds.observe(seconds)

    def dns_upstream_failure(self, cause: str) -> None:
        self.dns_upstream_failures.labels(cause).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        return generate_latest(self.registry)


def errno_name(error: OSError) -> str:
    """``ETIMEDOUT``, ``ECONNREFUSED`` ...; a bounded set (errno names, or ``OTHER``)."""
    return errno.errorcode.get(error.errno or 0, "OTHER")
