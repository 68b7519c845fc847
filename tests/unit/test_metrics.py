"""Metrics: what each report adds, read back through prometheus-client's own parser."""

from __future__ import annotations

import errno
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from helpers.metrics import samples, value
from ipv4proxy.errors import DialError, Failure, PolicyDenied, ResolveError, UpstreamTimeout
from ipv4proxy.metrics import CLOSED_CUT, CLOSED_OK, PROTOCOLS, Metrics
from ipv4proxy.net.resolver import LOOKUP_RESULTS


def test_fixed_label_sets_exist_at_zero() -> None:
    metrics = Metrics()
    for result in LOOKUP_RESULTS:
        assert ("ipv4proxy_dns_lookups_total", frozenset({("result", result)})) in samples(metrics)
    for failure in Failure:
        key = ("ipv4proxy_refusals_total", frozenset({("reason", failure.cause)}))
        assert samples(metrics)[key] == 0


def test_tunnel_lifecycle_counts() -> None:
    metrics = Metrics()
    metrics.tunnel_opened("socks5", 0.03)
    metrics.tunnel_opened("http-connect", 0.4)
    assert value(metrics, "ipv4proxy_tunnels_active") == 2
    metrics.tunnel_closed("socks5", CLOSED_OK, 100, 2000)
    metrics.tunnel_closed("http-connect", CLOSED_CUT, 1, 2)
    assert value(metrics, "ipv4proxy_tunnels_active") == 0
    assert value(metrics, "ipv4proxy_tunnels_opened_total", protocol="socks5") == 1
    assert value(metrics, "ipv4proxy_tunnels_closed_total", protocol="socks5", outcome="ok") == 1
    assert (
        value(metrics, "ipv4proxy_tunnels_closed_total", protocol="http-connect", outcome="cut")
        == 1
    )
    assert value(metrics, "ipv4proxy_tunnel_bytes_total", direction="sent") == 101
    assert value(metrics, "ipv4proxy_tunnel_bytes_total", direction="received") == 2002
    assert value(metrics, "ipv4proxy_connect_seconds_count") == 2
    assert value(metrics, "ipv4proxy_connect_seconds_bucket", le="0.05") == 1
    assert value(metrics, "ipv4proxy_connect_seconds_bucket", le="0.5") == 2


def test_refusals_and_one_connect_failure_per_attempt() -> None:
    metrics = Metrics()
    refused = OSError(errno.ECONNREFUSED, "refused")
    unreachable = OSError(errno.EHOSTUNREACH, "unreachable")
    metrics.refused(
        DialError(
            "x", failure=Failure.REFUSED, attempts=(("1.1.1.1", refused), ("1.1.1.2", unreachable))
        )
    )
    timed_out = OSError(errno.ETIMEDOUT, "timed out")
    metrics.refused(UpstreamTimeout("y", attempts=(("1.1.1.3", timed_out),)))
    metrics.refused(ResolveError("z", failure=Failure.NODATA))
    metrics.refused(PolicyDenied("no"))
    metrics.refused(DialError("w", attempts=(("1.1.1.4", OSError(-1, "odd")),)))
    failures = "ipv4proxy_upstream_connect_failures_total"
    assert value(metrics, failures, cause="ECONNREFUSED") == 1
    assert value(metrics, failures, cause="EHOSTUNREACH") == 1
    assert value(metrics, failures, cause="ETIMEDOUT") == 1
    assert value(metrics, failures, cause="OTHER") == 1
    for reason, count in [("ECONNREFUSED", 1), ("ETIMEDOUT", 1), ("NODATA", 1), ("DENIED", 1)]:
        assert value(metrics, "ipv4proxy_refusals_total", reason=reason) == count, reason


def test_registries_are_separate() -> None:
    one, two = Metrics(), Metrics()
    one.dns_lookup("hit")
    assert value(one, "ipv4proxy_dns_lookups_total", result="hit") == 1
    assert value(two, "ipv4proxy_dns_lookups_total", result="hit") == 0


def test_no_created_series() -> None:
    metrics = Metrics()
    metrics.tunnel_opened("socks5", 0.01)
    assert "_created" not in metrics.render().decode()


def _reference_page(events: list[tuple[str, tuple[object, ...]]]) -> bytes:
    """The page prometheus-client's own Counter, Gauge and Histogram give for ``events``:
    what the plain per-tunnel counts must render to, byte for byte."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from ipv4proxy.metrics import SERIES

    registry = CollectorRegistry(auto_describe=True)
    built: dict[str, Any] = {}
    for series in SERIES:
        names = [label.name for label in series.labels]
        if series.kind == "counter":
            built[series.attr] = Counter(series.name, series.help, names, registry=registry)
        elif series.kind == "gauge":
            built[series.attr] = Gauge(series.name, series.help, names, registry=registry)
        else:
            built[series.attr] = Histogram(
                series.name, series.help, names, buckets=series.buckets, registry=registry
            )
    for series in SERIES:  # the label sets Metrics makes at start, in its order
        for labels in _INITIAL.get(series.attr, ()):
            built[series.attr].labels(*labels)
    for name, args in events:
        if name == "opened":
            protocol, seconds = args
            built["tunnels_opened"].labels(protocol).inc()
            built["tunnels_active"].inc()
            built["connect_seconds"].observe(seconds)
        else:
            protocol, outcome, sent, received = args
            built["tunnels_closed"].labels(protocol, outcome).inc()
            built["tunnels_active"].dec()
            built["bytes"].labels("sent").inc(sent)
            built["bytes"].labels("received").inc(received)
    built["ready"].set(0)
    for attr in ("connections_open", "relay_held", "handshake_held"):
        built[attr].set_function(lambda: 7)
    return generate_latest(registry)


def _initial() -> dict[str, list[tuple[str, ...]]]:
    from ipv4proxy.metrics import (
        DNS_OUTCOMES,
        DNS_QTYPES,
        DNS_RACE_OUTCOMES,
        DNS_SHAPE_SOURCES,
        DNS_UPSTREAM_FAILURES,
    )

    return {
        "dns_lookups": [(r,) for r in LOOKUP_RESULTS],
        "refusals": [(f.cause,) for f in Failure],
        "bytes": [("sent",), ("received",)],
        "reloads": [("applied",), ("refused",)],
        "dns_queries": [(q, o) for q in DNS_QTYPES for o in DNS_OUTCOMES],
        "dns_upstream_failures": [(c,) for c in DNS_UPSTREAM_FAILURES],
        "dns_shaped": [(s,) for s in DNS_SHAPE_SOURCES],
        "dns_shape_races": [(o,) for o in DNS_RACE_OUTCOMES],
    }


_INITIAL = _initial()


# Connect times on, between and beyond the bucket bounds (0.005 exactly falls in le="0.005").
_SECONDS = st.sampled_from([0.0, 0.001, 0.005, 0.0051, 0.25, 0.3, 10.0, 12.5, 1e-9])
_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("opened"), st.tuples(st.sampled_from(PROTOCOLS), _SECONDS)),
        st.tuples(
            st.just("closed"),
            st.tuples(
                st.sampled_from(PROTOCOLS),
                st.sampled_from([CLOSED_OK, CLOSED_CUT, Failure.IDLE_TIMEOUT.cause]),
                st.integers(0, 2**40),
                st.integers(0, 2**40),
            ),
        ),
    ),
    max_size=30,
)


@given(_EVENTS)
def test_page_is_what_prometheus_client_renders(
    events: list[tuple[str, tuple[object, ...]]],
) -> None:
    """The per-tunnel series are plain numbers folded in at render time; the page must not
    change by a byte (series, label order, values, le spelling) against prometheus-client."""
    metrics = Metrics()
    metrics.watch(lambda: 7, lambda: 7, lambda: 7)
    for name, args in events:
        if name == "opened":
            metrics.tunnel_opened(*args)  # type: ignore[arg-type]
        else:
            metrics.tunnel_closed(*args)  # type: ignore[arg-type]
    assert metrics.render() == _reference_page(events)
