"""The error table, case by case: what each client is answered, and what the log says.

For HTTP: the status, a body of exactly one line that names the cause, and the access
line's ``outcome``. For SOCKS5 and SOCKS4: the reply code and the ``outcome``. Every case
is produced on loopback: a name dnsmasq does not know (NXDOMAIN), a name with only AAAA
(NODATA), a bound port nobody listens on (ECONNREFUSED), a listener whose full accept queue
drops SYNs (ETIMEDOUT).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.wire import (
    SOCKS5_BIND,
    SOCKS5_UDP_ASSOCIATE,
    HttpReply,
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


async def _logged(proxy: ProxyProcess, tunnel: Tunnel, **expected: str) -> dict[str, str]:
    """Wait for this connection's access line; assert it has the `expected` fields."""
    fields = await proxy.access(client=tunnel.client)
    assert {key: fields.get(key) for key in expected} == expected, fields
    return fields


# --- HTTP CONNECT -------------------------------------------------------------------------


async def test_connect_malformed_request_is_400(strict_proxy: ProxyProcess) -> None:
    tunnel, reply = await http_raw(
        strict_proxy.port,
        b"CONNECT dual.test:443 HTTP/1.1\r\nthis header line has no colon\r\n\r\n",
    )
    await tunnel.close()
    assert reply.status == 400, reply
    line = _one_line(reply)
    fields = await _logged(strict_proxy, tunnel, address="-", outcome="MALFORMED")
    assert fields.get("reason") == line, fields


async def test_connect_ipv6_literal_is_502_ipv4_only(strict_proxy: ProxyProcess) -> None:
    tunnel, reply = await http_connect(strict_proxy.port, "[::1]:443")
    await tunnel.close()
    assert reply.status == 502, reply
    line = _one_line(reply)
    assert IPV4_ONLY.search(line), line
    await _logged(
        strict_proxy,
        tunnel,
        protocol="http-connect",
        target="[::1]:443",
        address="-",
        outcome="IPV6_LITERAL",
        reason=line,
    )


async def test_connect_no_a_record_is_502_nodata(strict_proxy: ProxyProcess) -> None:
    tunnel, reply = await http_connect(strict_proxy.port, "v6only.test:443")
    await tunnel.close()
    assert reply.status == 502, reply
    assert _one_line(reply) == NODATA_REASON
    await _logged(
        strict_proxy,
        tunnel,
        protocol="http-connect",
        target="v6only.test:443",
        address="-",
        outcome="NODATA",
        reason=NODATA_REASON,
    )


async def test_connect_nxdomain_is_502(strict_proxy: ProxyProcess) -> None:
    tunnel, reply = await http_connect(strict_proxy.port, "missing.test:443")
    await tunnel.close()
    assert reply.status == 502, reply
    line = _one_line(reply)
    assert "missing.test" in line
    await _logged(
        strict_proxy,
        tunnel,
        protocol="http-connect",
        target="missing.test:443",
        address="-",
        outcome="NXDOMAIN",
        reason=line,
    )


async def test_connect_refused_is_502(strict_proxy: ProxyProcess, closed_port: int) -> None:
    tunnel, reply = await http_connect(strict_proxy.port, f"v4.test:{closed_port}")
    await tunnel.close()
    assert reply.status == 502, reply
    line = _one_line(reply)
    assert re.search(r"refused|ECONNREFUSED", line, re.IGNORECASE), line
    await _logged(
        strict_proxy,
        tunnel,
        protocol="http-connect",
        target=f"v4.test:{closed_port}",
        outcome="ECONNREFUSED",
        reason=line,
    )


async def test_connect_timeout_is_504(strict_proxy: ProxyProcess, blackhole_port: int) -> None:
    tunnel, reply = await http_connect(strict_proxy.port, f"v4.test:{blackhole_port}")
    await tunnel.close()
    assert reply.status == 504, reply
    line = _one_line(reply)
    assert re.search(r"timed out|timeout|ETIMEDOUT", line, re.IGNORECASE), line
    await _logged(
        strict_proxy,
        tunnel,
        protocol="http-connect",
        target=f"v4.test:{blackhole_port}",
        outcome="ETIMEDOUT",
        reason=line,
    )


# --- HTTP forwarding ----------------------------------------------------------------------


def _get(url: str, host: str) -> bytes:
    return f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


async def test_forward_ipv6_literal_is_502_ipv4_only(strict_proxy: ProxyProcess) -> None:
    tunnel, reply = await http_raw(strict_proxy.port, _get("http://[::1]:80/", "[::1]:80"))
    await tunnel.close()
    assert reply.status == 502, reply
    line = _one_line(reply)
    assert IPV4_ONLY.search(line), line
    await _logged(
        strict_proxy,
        tunnel,
        protocol="http-forward",
        target="[::1]:80",
        address="-",
        outcome="IPV6_LITERAL",
        reason=line,
    )


async def test_forward_no_a_record_is_502_nodata(strict_proxy: ProxyProcess) -> None:
    tunnel, reply = await http_raw(strict_proxy.port, _get("http://v6only.test/", "v6only.test"))
    await tunnel.close()
    assert reply.status == 502, reply
    assert _one_line(reply) == NODATA_REASON
    await _logged(
        strict_proxy,
        tunnel,
        protocol="http-forward",
        target="v6only.test:80",
        address="-",
        outcome="NODATA",
        reason=NODATA_REASON,
    )


async def test_forward_refused_is_502(strict_proxy: ProxyProcess, closed_port: int) -> None:
    tunnel, reply = await http_raw(
        strict_proxy.port, _get(f"http://v4.test:{closed_port}/", f"v4.test:{closed_port}")
    )
    await tunnel.close()
    assert reply.status == 502, reply
    line = _one_line(reply)
    await _logged(
        strict_proxy,
        tunnel,
        protocol="http-forward",
        target=f"v4.test:{closed_port}",
        outcome="ECONNREFUSED",
        reason=line,
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
    tunnel, reply = await socks5_request(strict_proxy.port, host, 443)
    await tunnel.close()
    assert reply.code == code, reply
    await _logged(
        strict_proxy, tunnel, protocol="socks5", target=target, address="-", outcome=outcome
    )


async def test_socks5_refused_is_0x05(strict_proxy: ProxyProcess, closed_port: int) -> None:
    tunnel, reply = await socks5_request(strict_proxy.port, "v4.test", closed_port)
    await tunnel.close()
    assert reply.code == 0x05, reply
    await _logged(
        strict_proxy,
        tunnel,
        protocol="socks5",
        target=f"v4.test:{closed_port}",
        outcome="ECONNREFUSED",
    )


async def test_socks5_timeout_is_0x04(strict_proxy: ProxyProcess, blackhole_port: int) -> None:
    tunnel, reply = await socks5_request(strict_proxy.port, "v4.test", blackhole_port)
    await tunnel.close()
    assert reply.code == 0x04, reply
    await _logged(
        strict_proxy,
        tunnel,
        protocol="socks5",
        target=f"v4.test:{blackhole_port}",
        outcome="ETIMEDOUT",
    )


@pytest.mark.parametrize(
    "command", [SOCKS5_BIND, SOCKS5_UDP_ASSOCIATE], ids=["bind", "udp-associate"]
)
async def test_socks5_unsupported_command_is_0x07(strict_proxy: ProxyProcess, command: int) -> None:
    tunnel, reply = await socks5_request(strict_proxy.port, "v4.test", 443, command=command)
    await tunnel.close()
    assert reply.code == 0x07, reply
    await _logged(
        strict_proxy,
        tunnel,
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
    tunnel, reply = await socks4_connect(strict_proxy.port, host, 443)
    await tunnel.close()
    assert reply.code == 0x5B, reply
    await _logged(
        strict_proxy, tunnel, protocol="socks4a", target=f"{host}:443", address="-", outcome=outcome
    )


async def test_socks4_refused_is_0x5b(strict_proxy: ProxyProcess, closed_port: int) -> None:
    tunnel, reply = await socks4_connect(strict_proxy.port, "127.0.0.1", closed_port)
    await tunnel.close()
    assert reply.code == 0x5B, reply
    await _logged(
        strict_proxy,
        tunnel,
        protocol="socks4",
        target=f"127.0.0.1:{closed_port}",
        outcome="ECONNREFUSED",
    )


async def test_socks4a_timeout_is_0x5b(strict_proxy: ProxyProcess, blackhole_port: int) -> None:
    tunnel, reply = await socks4_connect(strict_proxy.port, "v4.test", blackhole_port)
    await tunnel.close()
    assert reply.code == 0x5B, reply
    await _logged(
        strict_proxy,
        tunnel,
        protocol="socks4a",
        target=f"v4.test:{blackhole_port}",
        outcome="ETIMEDOUT",
    )
