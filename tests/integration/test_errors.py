"""The error table, case by case: what each client is answered, and what the log says.

For HTTP: the status, a body of exactly one line that names the cause, and the access
line's ``outcome``. For SOCKS5 and SOCKS4: the reply code and the ``outcome``. Every case
is produced on loopback: a name dnsmasq does not know (NXDOMAIN), a name with only AAAA
(NODATA), a bound port nobody listens on (ECONNREFUSED), a listener whose full accept queue
drops SYNs (ETIMEDOUT).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterator

import pytest

from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.wire import (
    SOCKS5_BIND,
    SOCKS5_UDP_ASSOCIATE,
    HttpReply,
    Socks4Reply,
    Socks5Reply,
    Tunnel,
    http_connect,
    http_raw,
    socks4_connect,
    socks5_request,
)

# Short, so the timeout cases stay quick; loopback connects take well under a millisecond.
CONNECT_TIMEOUT = "1"

NODATA_REASON = "no IPv4 address (A record) for v6only.test"
IPV4_ONLY = re.compile(r"IPv4[- ]only", re.IGNORECASE)


@pytest.fixture(scope="module")
def strict_proxy(proxy_factory: ProxyFactory) -> Iterator[ProxyProcess]:
    """A proxy of its own with a short connect timeout (the default test flags otherwise)."""
    process = proxy_factory(("--connect-timeout", CONNECT_TIMEOUT))
    yield process
    process.stop()


def _one_line(reply: HttpReply) -> str:
    text = reply.body_text
    line = text.removesuffix("\n").removesuffix("\r")
    assert line, f"empty body: {reply}"
    assert "\n" not in line, f"body is not one line: {text!r}"
    assert "\r" not in line, f"body is not one line: {text!r}"
    return line


async def _logged(
    proxy: ProxyProcess, tunnel: Tunnel, since: int, **expected: str
) -> dict[str, str]:
    """Wait for this connection's access line; assert it has the `expected` fields.

    Only lines after `since` count: the kernel may give this connection the client port of
    an earlier one (the proxy closed that one first, so the port was free at once).
    """
    fields = await proxy.access(since=since, client=tunnel.client, after=tunnel.opened)
    assert {key: fields.get(key) for key in expected} == expected, fields
    return fields


async def _http_failure(
    proxy: ProxyProcess,
    exchange: Awaitable[tuple[Tunnel, HttpReply]],
    status: int,
    body: str | re.Pattern[str] | None,
    **logged: str,
) -> None:
    """Close the tunnel; assert `status`, a one-line body (equal to `body`, or matching it),
    and an access line with the `logged` fields and that body as its ``reason``."""
    mark = proxy.mark()
    tunnel, reply = await exchange
    await tunnel.close()
    assert reply.status == status, reply
    line = _one_line(reply)
    if isinstance(body, re.Pattern):
        assert body.search(line), line
    elif body is not None:
        assert line == body
    await _logged(proxy, tunnel, mark, reason=line, **logged)


async def _socks_failure(
    proxy: ProxyProcess,
    exchange: Awaitable[tuple[Tunnel, Socks5Reply | Socks4Reply]],
    code: int,
    **logged: str,
) -> None:
    """Close the tunnel; assert the reply `code` and an access line with the `logged` fields."""
    mark = proxy.mark()
    tunnel, reply = await exchange
    await tunnel.close()
    assert reply.code == code, reply
    await _logged(proxy, tunnel, mark, **logged)


# --- HTTP CONNECT -------------------------------------------------------------------------


async def test_connect_malformed_request_is_400(strict_proxy: ProxyProcess) -> None:
    await _http_failure(
        strict_proxy,
        http_raw(
            strict_proxy.port,
            b"CONNECT dual.test:443 HTTP/1.1\r\nthis header line has no colon\r\n\r\n",
        ),
        400,
        None,
        address="-",
        outcome="MALFORMED",
    )


async def test_connect_ipv6_literal_is_502_ipv4_only(strict_proxy: ProxyProcess) -> None:
    await _http_failure(
        strict_proxy,
        http_connect(strict_proxy.port, "[::1]:443"),
        502,
        IPV4_ONLY,
        protocol="http-connect",
        target="[::1]:443",
        address="-",
        outcome="IPV6_LITERAL",
    )


async def test_connect_no_a_record_is_502_nodata(strict_proxy: ProxyProcess) -> None:
    await _http_failure(
        strict_proxy,
        http_connect(strict_proxy.port, "v6only.test:443"),
        502,
        NODATA_REASON,
        protocol="http-connect",
        target="v6only.test:443",
        address="-",
        outcome="NODATA",
    )


async def test_connect_nxdomain_is_502(strict_proxy: ProxyProcess) -> None:
    await _http_failure(
        strict_proxy,
        http_connect(strict_proxy.port, "missing.test:443"),
        502,
        re.compile(re.escape("missing.test")),
        protocol="http-connect",
        target="missing.test:443",
        address="-",
        outcome="NXDOMAIN",
    )


async def test_connect_refused_is_502(strict_proxy: ProxyProcess, closed_port: int) -> None:
    await _http_failure(
        strict_proxy,
        http_connect(strict_proxy.port, f"v4.test:{closed_port}"),
        502,
        re.compile(r"refused|ECONNREFUSED", re.IGNORECASE),
        protocol="http-connect",
        target=f"v4.test:{closed_port}",
        outcome="ECONNREFUSED",
    )


async def test_connect_timeout_is_504(strict_proxy: ProxyProcess, blackhole_port: int) -> None:
    await _http_failure(
        strict_proxy,
        http_connect(strict_proxy.port, f"v4.test:{blackhole_port}"),
        504,
        re.compile(r"timed out|timeout|ETIMEDOUT", re.IGNORECASE),
        protocol="http-connect",
        target=f"v4.test:{blackhole_port}",
        outcome="ETIMEDOUT",
    )


# --- HTTP forwarding ----------------------------------------------------------------------


def _get(url: str, host: str) -> bytes:
    return f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


async def test_forward_ipv6_literal_is_502_ipv4_only(strict_proxy: ProxyProcess) -> None:
    await _http_failure(
        strict_proxy,
        http_raw(strict_proxy.port, _get("http://[::1]:80/", "[::1]:80")),
        502,
        IPV4_ONLY,
        protocol="http-forward",
        target="[::1]:80",
        address="-",
        outcome="IPV6_LITERAL",
    )


async def test_forward_no_a_record_is_502_nodata(strict_proxy: ProxyProcess) -> None:
    await _http_failure(
        strict_proxy,
        http_raw(strict_proxy.port, _get("http://v6only.test/", "v6only.test")),
        502,
        NODATA_REASON,
        protocol="http-forward",
        target="v6only.test:80",
        address="-",
        outcome="NODATA",
    )


async def test_forward_refused_is_502(strict_proxy: ProxyProcess, closed_port: int) -> None:
    target = f"v4.test:{closed_port}"
    await _http_failure(
        strict_proxy,
        http_raw(strict_proxy.port, _get(f"http://{target}/", target)),
        502,
        None,
        protocol="http-forward",
        target=target,
        outcome="ECONNREFUSED",
    )


# --- SOCKS5 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "target", "code", "outcome"),
    [
        pytest.param("::1", "[::1]:443", 0x08, "IPV6_LITERAL", id="ipv6-literal"),
        pytest.param("v6only.test", "v6only.test:443", 0x04, "NODATA", id="nodata"),
        pytest.param("missing.test", "missing.test:443", 0x04, "NXDOMAIN", id="nxdomain"),
    ],
)
async def test_socks5_unresolvable(
    strict_proxy: ProxyProcess, host: str, target: str, code: int, outcome: str
) -> None:
    await _socks_failure(
        strict_proxy,
        socks5_request(strict_proxy.port, host, 443),
        code,
        protocol="socks5",
        target=target,
        address="-",
        outcome=outcome,
    )


async def test_socks5_refused_is_0x05(strict_proxy: ProxyProcess, closed_port: int) -> None:
    await _socks_failure(
        strict_proxy,
        socks5_request(strict_proxy.port, "v4.test", closed_port),
        0x05,
        protocol="socks5",
        target=f"v4.test:{closed_port}",
        outcome="ECONNREFUSED",
    )


async def test_socks5_timeout_is_0x04(strict_proxy: ProxyProcess, blackhole_port: int) -> None:
    await _socks_failure(
        strict_proxy,
        socks5_request(strict_proxy.port, "v4.test", blackhole_port),
        0x04,
        protocol="socks5",
        target=f"v4.test:{blackhole_port}",
        outcome="ETIMEDOUT",
    )


@pytest.mark.parametrize(
    "command", [SOCKS5_BIND, SOCKS5_UDP_ASSOCIATE], ids=["bind", "udp-associate"]
)
async def test_socks5_unsupported_command_is_0x07(strict_proxy: ProxyProcess, command: int) -> None:
    await _socks_failure(
        strict_proxy,
        socks5_request(strict_proxy.port, "v4.test", 443, command=command),
        0x07,
        protocol="socks5",
        target="v4.test:443",
        address="-",
        outcome="UNSUPPORTED",
    )


# --- SOCKS4 / SOCKS4a ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "outcome"),
    [
        pytest.param("v6only.test", "NODATA", id="nodata"),
        pytest.param("missing.test", "NXDOMAIN", id="nxdomain"),
    ],
)
async def test_socks4a_unresolvable_is_0x5b(
    strict_proxy: ProxyProcess, host: str, outcome: str
) -> None:
    await _socks_failure(
        strict_proxy,
        socks4_connect(strict_proxy.port, host, 443),
        0x5B,
        protocol="socks4a",
        target=f"{host}:443",
        address="-",
        outcome=outcome,
    )


async def test_socks4_refused_is_0x5b(strict_proxy: ProxyProcess, closed_port: int) -> None:
    await _socks_failure(
        strict_proxy,
        socks4_connect(strict_proxy.port, "127.0.0.1", closed_port),
        0x5B,
        protocol="socks4",
        target=f"127.0.0.1:{closed_port}",
        outcome="ECONNREFUSED",
    )


async def test_socks4a_timeout_is_0x5b(strict_proxy: ProxyProcess, blackhole_port: int) -> None:
    await _socks_failure(
        strict_proxy,
        socks4_connect(strict_proxy.port, "v4.test", blackhole_port),
        0x5B,
        protocol="socks4a",
        target=f"v4.test:{blackhole_port}",
        outcome="ETIMEDOUT",
    )
