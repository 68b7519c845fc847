"""doctor's verdict: the decision table, one row per situation an on-call engineer meets."""

from __future__ import annotations

import pytest

from ipv4proxy.doctor import Connection, Route, verdict

NO_ROUTE = (Route("2001:db8::1", False, "ENETUNREACH"),)
ROUTED = (Route("2001:db8::1", True, "2001:db8::2"),)
SLOW = (Connection("192.0.2.1", 1.2),)
FAST = (Connection("192.0.2.1", 0.012),)
FAILED = (Connection("192.0.2.1", None, "ETIMEDOUT"), Connection("192.0.2.2", None, "ECONNREFUSED"))


@pytest.mark.parametrize(
    ("a_error", "routes", "connections", "expected"),
    [
        (
            None,
            NO_ROUTE,
            SLOW,
            "IPv6 unreachable (no route) and IPv4 handshake 1.2 s: Node >= 20 clients with the "
            "default 250 ms Happy Eyeballs attempt timeout fail here (ETIMEDOUT + ENETUNREACH); "
            "route them through ipv4proxy",
        ),
        (
            None,
            NO_ROUTE,
            FAST,
            "IPv6 unreachable (no route) and IPv4 handshake 12 ms: clients work",
        ),
        (None, ROUTED, FAST, "IPv6 routed and IPv4 handshake 12 ms: this host has a route"),
        (None, (), SLOW, "no AAAA record and IPv4 handshake 1.2 s: clients connect over IPv4"),
        (
            None,
            NO_ROUTE,
            FAILED,
            "IPv4 connect failed to every address (ECONNREFUSED, ETIMEDOUT) and IPv6 "
            "unreachable (no route)",
        ),
        ("NODATA: no A", NO_ROUTE, (), "no IPv4 address (NODATA: no A) and IPv6 unreachable"),
        ("NXDOMAIN: gone", (), (), "no IPv4 address (NXDOMAIN: gone): nothing can connect"),
    ],
)
def test_verdicts(
    a_error: str | None,
    routes: tuple[Route, ...],
    connections: tuple[Connection, ...],
    expected: str,
) -> None:
    assert verdict(a_error, routes, connections).startswith(expected)


def test_the_fastest_address_decides() -> None:
    mixed = (Connection("192.0.2.1", None, "ETIMEDOUT"), Connection("192.0.2.2", 0.3))
    assert "IPv4 handshake 300 ms: Node >= 20" in verdict(None, NO_ROUTE, mixed)
