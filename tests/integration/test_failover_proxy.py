"""Through the proxy process: the breaker opens on a refusing address and closes again,
and cached names keep working through serve-stale when the DNS server dies.

This proxy asks the test's own DNS server (`helpers.dnsserver`), whose answers the test
controls: each ``*.flaky.test`` name lists a refusing address (127.0.0.2) before a good
one (127.0.0.1), so memory (per name) never hides what the breaker (per address) does.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.dnsserver import DnsServer
from helpers.proxy import ProxyProcess
from helpers.servers import TestServers
from helpers.wire import Tunnel, http_connect

# Long enough that the tunnels right after the opening surely fall inside it, even on a
# slow machine; the test waits it out once to see the breaker half-open.
COOLDOWN = 4.0


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def _start(dns_server: DnsServer, tmp_path: Path, *args: str) -> ProxyProcess:
    process = ProxyProcess(dns_server.port, args, tmp_path / "proxy.log")
    process.start()
    return process


@pytest.fixture
def breaker_proxy(dns_server: DnsServer, tmp_path: Path) -> Iterator[ProxyProcess]:
    process = _start(
        dns_server,
        tmp_path,
        "--dialer-breaker-failures",
        "2",
        "--dialer-breaker-cooldown",
        str(COOLDOWN),
        "--log-level",
        "debug",
    )
    yield process
    process.stop()
    assert process.crash_lines() == []


async def _through(proxy: ProxyProcess, authority: str) -> dict[str, str]:
    tunnel, reply = await http_connect(proxy.port, authority)
    assert reply.status == 200, reply
    await _close(tunnel)
    return await proxy.access(client=tunnel.client, after=tunnel.opened)


async def _close(tunnel: Tunnel) -> None:
    tunnel.writer.write(b"x")
    assert await tunnel.read_exactly(1) == b"x"
    await tunnel.close()


async def test_breaker_opens_on_a_refusing_address_and_closes_after_cooldown(
    dns_server: DnsServer, breaker_proxy: ProxyProcess, servers: TestServers
) -> None:
    port = servers.echo_port
    endpoint = f"127.0.0.2:{port}"
    for name in ("a", "b", "c", "d"):
        dns_server.set(f"{name}.flaky.test", "127.0.0.2", "127.0.0.1")
    for name in ("a", "b"):  # two refusals in a row open it
        assert (await _through(breaker_proxy, f"{name}.flaky.test:{port}"))["address"] == (
            "127.0.0.1"
        )
    opened = breaker_proxy.wait_for_line(lambda line: f"breaker_open endpoint={endpoint}" in line)
    assert opened is not None, breaker_proxy.logs()

    mark = breaker_proxy.mark()
    await _through(breaker_proxy, f"c.flaky.test:{port}")
    skipped = breaker_proxy.wait_for_line(
        lambda line: "c.flaky.test: skipping 127.0.0.2 (breaker open)" in line, since=mark
    )
    assert skipped is not None, breaker_proxy.logs()

    # 127.0.0.2 comes back; after the cooldown it is tried again (half-open) and wins.
    revived = socket.socket()
    revived.bind(("127.0.0.2", port))
    revived.listen(4)
    with revived:
        await asyncio.sleep(COOLDOWN + 0.5)
        mark = breaker_proxy.mark()
        tunnel, reply = await http_connect(breaker_proxy.port, f"d.flaky.test:{port}")
        assert reply.status == 200, reply
        await tunnel.close()
    # Closing the listener resets the connection it never accepted: the tunnel ends.
    line = await breaker_proxy.access(since=mark, client=tunnel.client, after=tunnel.opened)
    assert line["address"] == "127.0.0.2"
    closed = breaker_proxy.wait_for_line(
        lambda text: f"breaker_closed endpoint={endpoint}" in text, since=mark
    )
    assert closed is not None, breaker_proxy.logs()


async def test_cached_name_survives_a_dead_dns_server(
    dns_server: DnsServer, tmp_path: Path, servers: TestServers
) -> None:
    # The smallest TTL the proxy keeps is its floor, 1 s: the answer expires quickly.
    proxy = _start(dns_server, tmp_path, "--resolver-timeout", "0.5")
    try:
        dns_server.set("kept.flaky.test", "127.0.0.1", ttl=1)
        await _through(proxy, f"kept.flaky.test:{servers.echo_port}")
        dns_server.stop()
        await asyncio.sleep(1.2)  # past the TTL
        line = await _through(proxy, f"kept.flaky.test:{servers.echo_port}")
        assert line["outcome"] == "ok"
        stale = proxy.wait_for_line(lambda text: "dns_stale host=kept.flaky.test" in text)
        assert stale is not None, proxy.logs()
    finally:
        proxy.stop()
    assert proxy.crash_lines() == []
