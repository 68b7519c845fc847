"""A storm of names whose nameserver never answers, through the proxy process.

The proxy asks a `ScriptedNameserver` that reads every query and drops it, with
``resolver.max_in_flight`` 8. The first 8 distinct names hold the 8 slots; every further
name is answered at once with 503 DNS_BUSY (SOCKS5 0x01, SOCKS4 0x5B), while the 8 still
wait. Throughout, the proxy holds at most `SOCKETS_PER_SERVER` UDP sockets (counted from
/proc), and after the storm its lookups end and its UDP sockets close.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.dnsfake import ScriptedNameserver, udp_sockets
from helpers.proxy import ProxyProcess
from helpers.servers import TestServers
from helpers.wire import HttpReply, Tunnel, http_connect, socks4_connect, socks5_request
from ipv4proxy.errors import Failure
from ipv4proxy.net.dnsclient import IDLE_SECONDS, SOCKETS_PER_SERVER

CAP = 8
OVER = 12
# Long enough that the held lookups surely outlast the over-cap requests on a slow
# machine; the test then waits them out once.
RESOLVER_TIMEOUT = 6.0
# Bounded polls: for the nameserver to see the held names, and for the sockets to close.
_POLL_SECONDS = 0.05
_SEEN_SECONDS = 10.0
_CLOSED_SECONDS = RESOLVER_TIMEOUT + IDLE_SECONDS + 10.0


@pytest.fixture
def silent() -> Iterator[ScriptedNameserver]:
    with ScriptedNameserver("drop") as server:
        yield server


@pytest.fixture
def busy_proxy(silent: ScriptedNameserver, tmp_path: Path) -> Iterator[ProxyProcess]:
    process = ProxyProcess(
        silent.port,
        [
            "--resolver-max-in-flight",
            str(CAP),
            "--resolver-timeout",
            str(RESOLVER_TIMEOUT),
        ],
        tmp_path / "proxy.log",
    )
    process.start()
    yield process
    process.stop()
    assert process.crash_lines() == []


async def _poll(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / _POLL_SECONDS) + 1):
        if condition():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(_POLL_SECONDS)
    pytest.fail(f"not within {seconds} s: {what}")


async def test_over_the_cap_names_get_dns_busy_at_once(
    silent: ScriptedNameserver, busy_proxy: ProxyProcess, servers: TestServers
) -> None:
    port = servers.echo_port
    held = [
        asyncio.create_task(http_connect(busy_proxy.port, f"held{i}.test:{port}"))
        for i in range(CAP)
    ]
    await _poll(lambda: silent.distinct_names() == CAP, _SEEN_SECONDS, f"{CAP} names asked")
    assert 1 <= udp_sockets(busy_proxy.pid) <= SOCKETS_PER_SERVER

    tunnels: list[Tunnel] = []
    try:
        mark = busy_proxy.mark()
        replies = await asyncio.gather(
            *(http_connect(busy_proxy.port, f"over{i}.test:{port}") for i in range(OVER - 2))
        )
        s5_tunnel, s5 = await socks5_request(busy_proxy.port, "over-s5.test", port)
        s4_tunnel, s4 = await socks4_connect(busy_proxy.port, "over-s4.test", port)
        tunnels += [tunnel for tunnel, _ in replies] + [s5_tunnel, s4_tunnel]
        # Every over-cap request is answered while the held ones still wait on DNS.
        assert not any(task.done() for task in held)
        for _, reply in replies:
            assert reply.status == 503, reply
            assert b"resolver.max_in_flight" in reply.body
        assert (s5.code, s4.code) == (Failure.DNS_BUSY.socks5, Failure.DNS_BUSY.socks4)
        assert (s5.code, s4.code) == (0x01, 0x5B)
        line = await busy_proxy.access(since=mark, target=f"over0.test:{port}")
        assert line["outcome"] == "DNS_BUSY"
        # The over-cap names were never asked, and the sockets did not grow.
        assert silent.distinct_names() == CAP
        assert udp_sockets(busy_proxy.pid) <= SOCKETS_PER_SERVER
        metrics = await _metrics(busy_proxy)
        assert f'ipv4proxy_dns_lookups_total{{result="busy"}} {float(OVER)}' in metrics

        # The held lookups time out (502 DNS_FAILURE); then the slots are free again...
        done: list[tuple[Tunnel, HttpReply]] = await asyncio.gather(*held)
        tunnels += [tunnel for tunnel, _ in done]
        assert {reply.status for _, reply in done} == {502}
        # ...and the pool's sockets close once idle.
        await _poll(lambda: udp_sockets(busy_proxy.pid) == 0, _CLOSED_SECONDS, "UDP sockets closed")
        again_tunnel, again = await http_connect(busy_proxy.port, f"after.test:{port}")
        tunnels.append(again_tunnel)
        assert again.status == 502  # asked (silent server: timed out), not refused as busy
        assert b"timed out" in again.body
    finally:
        for task in held:
            task.cancel()
        for tunnel in tunnels:
            await tunnel.close()


async def _metrics(proxy: ProxyProcess) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.admin_port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return data.decode()
