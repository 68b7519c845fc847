"""The error table, one row per case: what each client is answered, and what the log says.

For HTTP: the status, a body of exactly one line that names the cause, and the access
line's ``outcome``. For SOCKS5 and SOCKS4: the reply code and the ``outcome``. Every case
is produced on loopback: a name dnsmasq does not know (NXDOMAIN), a name with only AAAA
(NODATA), a bound port nobody listens on (ECONNREFUSED), a listener whose full accept queue
drops SYNs (ETIMEDOUT).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass

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
Reply = HttpReply | Socks5Reply | Socks4Reply
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


# --- the table ----------------------------------------------------------------------------

# A case's port: a number, or REFUSED / BLACKHOLE for a fresh port that refuses or drops SYNs.
REFUSED = -1
BLACKHOLE = -2


@dataclass(frozen=True)
class Case:
    """One row: what the client asks (``how``: http-connect, http-forward, socks5 with a
    command, socks4), the answer (HTTP status or SOCKS code, and for HTTP the one-line body:
    equal to a string, matching a pattern, or any), and the access line's fields (``address``
    is ``-`` when nothing was dialled)."""

    how: str
    host: str
    port: int
    answer: int
    outcome: str
    body: str | re.Pattern[str] | None = None
    dialled: bool = False
    protocol: str = ""
    command: int = 1


REFUSED_TEXT = re.compile(r"refused|ECONNREFUSED", re.IGNORECASE)
TIMEOUT_TEXT = re.compile(r"timed out|timeout|ETIMEDOUT", re.IGNORECASE)
CASES = {
    "connect-malformed": Case("http-raw", "dual.test", 443, 400, "MALFORMED"),
    "connect-ipv6-literal": Case("http-connect", "::1", 443, 502, "IPV6_LITERAL", IPV4_ONLY),
    "connect-nodata": Case("http-connect", "v6only.test", 443, 502, "NODATA", NODATA_REASON),
    "connect-nxdomain": Case(
        "http-connect", "missing.test", 443, 502, "NXDOMAIN", re.compile("missing\\.test")
    ),
    "connect-refused": Case(
        "http-connect", "v4.test", REFUSED, 502, "ECONNREFUSED", REFUSED_TEXT, dialled=True
    ),
    "connect-timeout": Case(
        "http-connect", "v4.test", BLACKHOLE, 504, "ETIMEDOUT", TIMEOUT_TEXT, dialled=True
    ),
    "forward-ipv6-literal": Case("http-forward", "::1", 80, 502, "IPV6_LITERAL", IPV4_ONLY),
    "forward-nodata": Case("http-forward", "v6only.test", 80, 502, "NODATA", NODATA_REASON),
    "forward-refused": Case("http-forward", "v4.test", REFUSED, 502, "ECONNREFUSED", dialled=True),
    "socks5-ipv6-literal": Case("socks5", "::1", 443, 0x08, "IPV6_LITERAL"),
    "socks5-nodata": Case("socks5", "v6only.test", 443, 0x04, "NODATA"),
    "socks5-nxdomain": Case("socks5", "missing.test", 443, 0x04, "NXDOMAIN"),
    "socks5-refused": Case("socks5", "v4.test", REFUSED, 0x05, "ECONNREFUSED", dialled=True),
    "socks5-timeout": Case("socks5", "v4.test", BLACKHOLE, 0x04, "ETIMEDOUT", dialled=True),
    "socks5-bind": Case("socks5", "v4.test", 443, 0x07, "UNSUPPORTED", command=SOCKS5_BIND),
    "socks5-udp-associate": Case(
        "socks5", "v4.test", 443, 0x07, "UNSUPPORTED", command=SOCKS5_UDP_ASSOCIATE
    ),
    "socks4a-nodata": Case("socks4", "v6only.test", 443, 0x5B, "NODATA", protocol="socks4a"),
    "socks4a-nxdomain": Case("socks4", "missing.test", 443, 0x5B, "NXDOMAIN", protocol="socks4a"),
    "socks4-refused": Case("socks4", "127.0.0.1", REFUSED, 0x5B, "ECONNREFUSED", dialled=True),
    "socks4a-timeout": Case(
        "socks4", "v4.test", BLACKHOLE, 0x5B, "ETIMEDOUT", dialled=True, protocol="socks4a"
    ),
}


def _port(case: Case, request: pytest.FixtureRequest) -> int:
    if case.port == REFUSED:
        return int(request.getfixturevalue("closed_port"))
    if case.port == BLACKHOLE:
        return int(request.getfixturevalue("blackhole_port"))
    return case.port


def _exchange(proxy: int, case: Case, port: int) -> Awaitable[tuple[Tunnel, Reply]]:
    authority = f"[{case.host}]:{port}" if ":" in case.host else f"{case.host}:{port}"
    if case.how == "http-raw":  # the one malformed request of the table
        head = f"CONNECT {authority} HTTP/1.1\r\nthis header line has no colon\r\n\r\n"
        return http_raw(proxy, head.encode())
    if case.how == "http-connect":
        return http_connect(proxy, authority)
    if case.how == "http-forward":
        get = f"GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        return http_raw(proxy, get.encode())
    if case.how == "socks5":
        return socks5_request(proxy, case.host, port, command=case.command)
    return socks4_connect(proxy, case.host, port)


@pytest.mark.parametrize("name", list(CASES))
async def test_each_failure_gets_its_answer_and_log_line(
    strict_proxy: ProxyProcess, request: pytest.FixtureRequest, name: str
) -> None:
    case = CASES[name]
    port = _port(case, request)
    mark = strict_proxy.mark()
    tunnel, reply = await _exchange(strict_proxy.port, case, port)
    await tunnel.close()
    expected = {"outcome": case.outcome}
    if not case.dialled:
        expected["address"] = "-"
    if case.how != "http-raw":
        host = f"[{case.host}]" if ":" in case.host else case.host
        expected["target"] = f"{host}:{port}"
        expected["protocol"] = case.protocol or case.how
    if isinstance(reply, HttpReply):
        assert reply.status == case.answer, reply
        line = _one_line(reply)
        if isinstance(case.body, re.Pattern):
            assert case.body.search(line), line
        elif case.body is not None:
            assert line == case.body
        expected["reason"] = line
    else:
        assert case.how.startswith("socks")
        assert reply.code == case.answer, reply
    fields = await strict_proxy.access(since=mark, client=tunnel.client, after=tunnel.opened)
    assert {key: fields.get(key) for key in expected} == expected, fields
