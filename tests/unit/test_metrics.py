"""Metrics: what each report adds, read back through prometheus-client's own parser."""

from __future__ import annotations

import errno

from helpers.metrics import samples, value
from ipv4proxy.errors import DialError, Failure, PolicyDenied, ResolveError, UpstreamTimeout
from ipv4proxy.metrics import CLOSED_CUT, CLOSED_OK, Metrics
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
