"""Prometheus metrics: what the proxy counts, kept in a registry of its own.

Every series is listed here, with the label values it can take, so the whole set can be
read in one place (docs/reference/metrics.md is rendered from SERIES). The exposition format and the
histogram maths are prometheus-client's job; `Metrics.render()` returns the text page.

Rules:
- Bounded label cardinality: labels are protocol names, failure causes (the
  ``errors.Failure`` names), errno names, DNS result names and directions. A destination
  name or address is never a label (it lives in the access log line).
- Cheap on the hot path: nothing is counted per read; a tunnel's bytes are added once, when
  it closes. The series a tunnel moves (opened, closed, active, connect seconds, bytes)
  are plain numbers in this process (`Tally`, `Buckets`), turned into prometheus-client's
  families only when the page is rendered: no lock and no label lookup per tunnel. The
  page is byte for byte what prometheus-client's own Counter, Gauge and Histogram give
  (tests/unit/test_metrics.py compares them). A refusal costs a few dictionary lookups.
- Its own CollectorRegistry, not the process-global one, so a test (or a second Proxy in one
  process) gets fresh numbers, and no library's metrics leak onto the page.
"""

from __future__ import annotations

import bisect
import errno
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ipv4proxy.errors import DialError, Failure, ProxyError
from ipv4proxy.net.resolver import LOOKUP_RESULTS

__all__ = [
    "CONNECT_BUCKETS",
    "CONTENT_TYPE",
    "DNS_OUTCOMES",
    "DNS_QTYPES",
    "SERIES",
    "Label",
    "Metrics",
    "Series",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# No `*_created` series: a timestamp per counter and label set doubles the page and no
# query here uses them (Prometheus itself ignores them in the text format).
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds from a complete request to a connected upstream socket (DNS lookup included).
# Fine below 250 ms, where Node's Happy Eyeballs attempt timer sits, and up to the 10 s
# connect timeout, where a black-holed address ends.
CONNECT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Seconds from a DNS query to its answer (DNS mode): cached answers are microseconds, a
# forwarded one a round trip to the cluster DNS (milliseconds), up to resolver.timeout.
DNS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The label values of ipv4proxy_dns_queries_total (docs/dns-mode.md).
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
# Where a shaped answer's address came from, and how a connect race ended (docs/dns-mode.md).
DNS_SHAPE_SOURCES = ("memory", "race", "breaker")
DNS_RACE_OUTCOMES = ("won", "failed", "denied", "busy")

# Outcome of a tunnel that was open: ended by one of its sides, or cut when the drain's
# grace period ran out (or at a second stop signal).
CLOSED_OK = "ok"
CLOSED_CUT = "cut"


# The protocol label's values: the client protocols (ipv4proxy.protocols) and plain-HTTP
# forwarding (ipv4proxy.net.forward).
PROTOCOLS = ("http-connect", "http-forward", "socks5", "socks4", "socks4a")


@dataclass(frozen=True)
class Label:
    """A label of a series: its name, the values it takes (empty when the set is open but
    bounded, as errno names are) and what they are."""

    name: str
    values: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Series:
    """One series of the page: ``attr`` is the Metrics attribute that holds it, ``name`` its
    name without the ``_total`` a counter gets in the exposition."""

    attr: str
    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    labels: tuple[Label, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def exposed_name(self) -> str:
        return self.name + "_total" if self.kind == "counter" else self.name


# Every series, in page order: Metrics builds its series from this table and the reference
# page (docs/reference/metrics.md, `python3 -m ipv4proxy.reference`) is rendered from it.
SERIES: tuple[Series, ...] = (
    Series(
        "tunnels_opened",
        "ipv4proxy_tunnels_opened",
        "counter",
        "Tunnels whose upstream connection was made, by client protocol",
        (Label("protocol", PROTOCOLS),),
    ),
    Series(
        "tunnels_closed",
        "ipv4proxy_tunnels_closed",
        "counter",
        "Tunnels that ended, by client protocol and outcome (ok: a side closed; "
        "cut: closed by the proxy at the end of a drain)",
        (
            Label("protocol", PROTOCOLS),
            Label(
                "outcome",
                (CLOSED_OK, Failure.IDLE_TIMEOUT.cause, CLOSED_CUT),
                "IDLE_TIMEOUT: closed idle (the access line's outcome says the same)",
            ),
        ),
    ),
    Series("tunnels_active", "ipv4proxy_tunnels_active", "gauge", "Tunnels open now"),
    Series(
        "connect_seconds",
        "ipv4proxy_connect_seconds",
        "histogram",
        "Seconds from a complete request to a connected upstream socket (DNS included)",
        buckets=CONNECT_BUCKETS,
    ),
    Series(
        "dns_lookups",
        "ipv4proxy_dns_lookups",
        "counter",
        "Name lookups by result: hit (cache or hosts file), miss (asked DNS, got A "
        "records), stale (expired answer served), nxdomain, nodata, error, busy (refused at "
        "once: resolver.max_in_flight lookups were in flight)",
        (Label("result", LOOKUP_RESULTS),),
    ),
    Series(
        "connect_failures",
        "ipv4proxy_upstream_connect_failures",
        "counter",
        "Failed IPv4 connect attempts of dials that found no working address, by errno",
        (
            Label(
                "cause",
                (),
                "errno names (ETIMEDOUT, ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ...) or OTHER",
            ),
        ),
    ),
    Series(
        "bytes",
        "ipv4proxy_tunnel_bytes",
        "counter",
        "Bytes relayed by closed tunnels: sent (client to destination), received "
        "(destination to client)",
        (Label("direction", ("sent", "received")),),
    ),
    Series(
        "refusals",
        "ipv4proxy_refusals",
        "counter",
        "Requests refused, by cause (the outcome of the access line)",
        (Label("reason", tuple(failure.cause for failure in Failure)),),
    ),
    Series(
        "reloads",
        "ipv4proxy_config_reloads",
        "counter",
        "SIGHUP reloads by result (applied or refused)",
        (Label("result", ("applied", "refused")),),
    ),
    Series("ready", "ipv4proxy_ready", "gauge", "1 when listening and not draining"),
    Series(
        "connections_open",
        "ipv4proxy_connections_open",
        "gauge",
        "Client connections open now (bounded by limits.max_connections)",
    ),
    Series(
        "relay_held",
        "ipv4proxy_relay_held_bytes",
        "gauge",
        "Bytes tunnels hold for peers that read slowly (bounded by limits.relay_memory)",
    ),
    Series(
        "handshake_held",
        "ipv4proxy_handshake_held_bytes",
        "gauge",
        "Bytes unfinished requests hold (bounded by limits.handshake_memory)",
    ),
    Series(
        "dns_queries",
        "ipv4proxy_dns_queries",
        "counter",
        "DNS listener queries by type (A, AAAA, HTTPS, SVCB, ANY, other) and outcome (ok, "
        "cached, nodata_aaaa: an AAAA query the upstream answered NOERROR, answered "
        "without addresses, refused: a "
        "client not in dns.clients, rate_limited, busy: dns.max_in_flight reached, "
        "upstream_failure: no upstream answered, servfail: the upstream's answer was no "
        "answer)",
        (Label("qtype", DNS_QTYPES), Label("outcome", DNS_OUTCOMES)),
    ),
    Series(
        "dns_aaaa_emptied",
        "ipv4proxy_dns_aaaa_emptied",
        "counter",
        "AAAA queries whose upstream answer held AAAA records, answered without them",
    ),
    Series(
        "dns_ipv6hints_removed",
        "ipv4proxy_dns_ipv6hints_removed",
        "counter",
        "ipv6hint parameters taken out of HTTPS and SVCB records",
    ),
    Series(
        "dns_upstream_failures",
        "ipv4proxy_dns_upstream_failures",
        "counter",
        "DNS listener upstream attempts that failed, by cause (timeout, unreachable, "
        "bad_response, no_upstream)",
        (Label("cause", DNS_UPSTREAM_FAILURES),),
    ),
    Series(
        "dns_shaped",
        "ipv4proxy_dns_shaped",
        "counter",
        "A answers of several records shaped to the address known to work, by where it "
        "came from (memory: the dialer's last good address, race: a connect race, "
        "breaker: the only address whose breaker is not open)",
        (Label("source", DNS_SHAPE_SOURCES),),
    ),
    Series(
        "dns_shape_races",
        "ipv4proxy_dns_shape_races",
        "counter",
        "Connect races run to shape an answer, by outcome (won, failed: no address "
        "connected in dns.shape_race_timeout, denied: the policy refuses every address, "
        "busy: too many races at once, none run)",
        (Label("outcome", DNS_RACE_OUTCOMES),),
    ),
    Series(
        "dns_query_seconds",
        "ipv4proxy_dns_query_seconds",
        "histogram",
        "Seconds from a DNS listener query to its answer (refusals not included)",
        buckets=DNS_BUCKETS,
    ),
)


_M = typing.TypeVar("_M", Counter, Gauge, Histogram, "Tally", "Buckets")


def _as(metric: Counter | Gauge | Histogram | Tally | Buckets, kind: type[_M]) -> _M:
    assert isinstance(metric, kind), metric
    return metric


class Tally(Collector):
    """A counter (or gauge) series kept as plain numbers by label values, exposed as
    prometheus-client's family when the page is rendered. The event loop's thread is the
    only writer, and the page is rendered on it too: no lock is needed."""

    def __init__(self, series: Series, keys: tuple[tuple[str, ...], ...] = ()) -> None:
        self.series = series
        # Label values -> count, in the order the label sets first appeared (page order).
        self.values: dict[tuple[str, ...], float] = dict.fromkeys(keys, 0.0)

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        series = self.series
        names = [label.name for label in series.labels]
        if series.kind == "gauge":
            return GaugeMetricFamily(series.name, series.help, labels=names)
        return CounterMetricFamily(series.name, series.help, labels=names)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for key, count in list(self.values.items()):
            family.add_metric(list(key), count)
        yield family


class Buckets(Collector):
    """A histogram without labels kept as plain bucket counts, exposed as prometheus-
    client's histogram family when the page is rendered (same ``le`` spelling, cumulative
    counts, ``_count`` and ``_sum``)."""

    def __init__(self, series: Series) -> None:
        self.series = series
        self.bounds = (*series.buckets, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # A value falls in the first bucket whose upper bound is >= it, as in prometheus-client.
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.series.name, self.series.help, labels=[])

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            cumulative += count
            le = floatToGoString(bound)  # type: ignore[no-untyped-call]
            buckets.append((le, float(cumulative)))
        family = HistogramMetricFamily(self.series.name, self.series.help, labels=[])
        family.add_metric([], buckets, self.sum)
        yield family


# The series every tunnel moves: counted in plain numbers (`Tally`, `Buckets`).
_PLAIN = frozenset(
    {"tunnels_opened", "tunnels_closed", "tunnels_active", "connect_seconds", "bytes"}
)


def _plain(series: Series, registry: CollectorRegistry) -> Tally | Buckets:
    collector: Tally | Buckets
    if series.kind == "histogram":
        collector = Buckets(series)
    elif series.attr == "bytes":
        collector = Tally(series, (("sent",), ("received",)))
    else:
        collector = Tally(series, () if series.labels else ((),))
    registry.register(collector)
    return collector


def _build(series: Series, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
    names = [label.name for label in series.labels]
    if series.kind == "counter":
        return Counter(series.name, series.help, names, registry=registry)
    if series.kind == "gauge":
        return Gauge(series.name, series.help, names, registry=registry)
    return Histogram(series.name, series.help, names, buckets=series.buckets, registry=registry)


class Metrics:
    """The proxy's counters; one instance per Proxy."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # One attribute per row of SERIES, named by its ``attr``.
        built: dict[str, Counter | Gauge | Histogram | Tally | Buckets] = {
            series.attr: (
                _plain(series, self.registry)
                if series.attr in _PLAIN
                else _build(series, self.registry)
            )
            for series in SERIES
        }
        self.tunnels_opened = _as(built["tunnels_opened"], Tally)
        self.tunnels_closed = _as(built["tunnels_closed"], Tally)
        self.tunnels_active = _as(built["tunnels_active"], Tally)
        self.connect_seconds = _as(built["connect_seconds"], Buckets)
        self.dns_lookups = _as(built["dns_lookups"], Counter)
        self.connect_failures = _as(built["connect_failures"], Counter)
        self.bytes = _as(built["bytes"], Tally)
        self.refusals = _as(built["refusals"], Counter)
        self.reloads = _as(built["reloads"], Counter)
        self.ready = _as(built["ready"], Gauge)
        self.connections_open = _as(built["connections_open"], Gauge)
        self.relay_held = _as(built["relay_held"], Gauge)
        self.handshake_held = _as(built["handshake_held"], Gauge)
        self.dns_queries = _as(built["dns_queries"], Counter)
        self.dns_aaaa_emptied = _as(built["dns_aaaa_emptied"], Counter)
        self.dns_ipv6hints_removed = _as(built["dns_ipv6hints_removed"], Counter)
        self.dns_upstream_failures = _as(built["dns_upstream_failures"], Counter)
        self.dns_query_seconds = _as(built["dns_query_seconds"], Histogram)
        self.dns_shaped = _as(built["dns_shaped"], Counter)
        self.dns_shape_races = _as(built["dns_shape_races"], Counter)
        # Series that exist from the start read 0 instead of being absent, so rate() and
        # alerts work before the first event.
        for result in LOOKUP_RESULTS:
            self.dns_lookups.labels(result)
        for failure in Failure:
            self.refusals.labels(failure.cause)
        for result in ("applied", "refused"):
            self.reloads.labels(result)
        for qtype in DNS_QTYPES:
            for outcome in DNS_OUTCOMES:
                self.dns_queries.labels(qtype, outcome)
        for cause in DNS_UPSTREAM_FAILURES:
            self.dns_upstream_failures.labels(cause)
        for source in DNS_SHAPE_SOURCES:
            self.dns_shaped.labels(source)
        for outcome in DNS_RACE_OUTCOMES:
            self.dns_shape_races.labels(outcome)

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
        opened = self.tunnels_opened.values
        key = (protocol,)
        opened[key] = opened.get(key, 0.0) + 1
        self.tunnels_active.values[()] += 1
        self.connect_seconds.observe(connect_seconds)

    def tunnel_closed(self, protocol: str, outcome: str, sent: int, received: int) -> None:
        closed = self.tunnels_closed.values
        key = (protocol, outcome)
        closed[key] = closed.get(key, 0.0) + 1
        self.tunnels_active.values[()] -= 1
        moved = self.bytes.values
        moved[("sent",)] += sent
        moved[("received",)] += received

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
