"""``workers: N``: a supervisor and N worker processes on one port, driven by real clients.

Every test starts its own ``--workers 2`` proxy (the supervisor's stderr carries the
workers' lines too). A worker is named by the supervisor's ``worker I started (pid P)``
line, and read on its own through its private admin socket (its ``admin endpoints on
unix:PATH`` line), which is how a test sees which worker served what.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from pathlib import Path

import aiohttp
import dns.message
import dns.query
import dns.rcode
from prometheus_client.parser import text_string_to_metric_families

from helpers.dnsmasq import Dnsmasq
from helpers.programs import run_ipv4proxy
from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.servers import TestServers
from helpers.wire import WIRE_SECONDS, http_connect, open_tunnel_socket
from integration.test_operations import (
    admin_get,
    echo_once,
    metric,
    refused_new_connection,
    scrape,
    wait_exit,
    wait_line,
)

WORKERS = ("--workers", "2")
_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
_SOCKET = re.compile(r"admin endpoints on unix:(\S+/worker-(\d+)\.sock)")
# Bound for a worker to be started again and ready, and for counters to settle.
SETTLE_TRIES = 100
SETTLE_PAUSE = 0.1


async def started_workers(proxy: ProxyProcess, since: int = 0) -> dict[int, int]:
    """Worker index -> PID, from the supervisor's lines (the last start of each wins),
    once every worker is ready (the supervisor's ``ready: 2 workers`` line)."""
    await wait_line(proxy, "ready: 2 workers", since)
    pids: dict[int, int] = {}
    for line in proxy.logs()[since:]:
        found = _STARTED.search(line)
        if found:
            pids[int(found[1])] = int(found[2])
    return pids


def worker_sockets(proxy: ProxyProcess) -> dict[int, str]:
    sockets: dict[int, str] = {}
    for line in proxy.logs():
        found = _SOCKET.search(line)
        if found:
            sockets[int(found[2])] = found[1]
    return sockets


async def worker_page(path: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One worker's own metrics, from its private admin socket."""
    timeout = aiohttp.ClientTimeout(total=WIRE_SECONDS)
    connector = aiohttp.UnixConnector(path=path)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get("http://worker/metrics") as response,
    ):
        page = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }


OPENED = "ipv4proxy_tunnels_opened_total"


async def lines_in(proxy: ProxyProcess, text: str, count: int, since: int) -> None:
    """Wait, bounded, until at least ``count`` lines from ``since`` on hold ``text``."""
    lines: list[str] = []
    for _ in range(SETTLE_TRIES):
        lines = [line for line in proxy.logs()[since:] if text in line]
        if len(lines) >= count:
            break
        await asyncio.sleep(SETTLE_PAUSE)
    assert len(lines) >= count, proxy.logs()[since:]


async def make_tunnels(proxy: ProxyProcess, servers: TestServers, count: int) -> None:
    """``count`` tunnels, one after another, each a new client connection that echoes."""
    for index in range(count):
        tunnel, reply = await http_connect(proxy.port, f"v4.test:{servers.echo_port}")
        assert reply.status == 200, reply
        await echo_once(tunnel, f"tunnel {index}\n".encode())
        await tunnel.close()


async def settled(proxy: ProxyProcess, name: str, expected: float, **labels: str) -> float:
    """The pod's value of a series once it reaches ``expected`` (bounded tries); the last
    value read otherwise, for the caller's assertion to show."""
    value = -1.0
    for _ in range(SETTLE_TRIES):
        value = metric(await scrape(proxy), name, **labels)
        if value == expected:
            break
        await asyncio.sleep(SETTLE_PAUSE)
    return value


async def test_one_port_served_by_every_worker_and_metrics_summed(
    proxy_factory: ProxyFactory, servers: TestServers
) -> None:
    proxy = proxy_factory(WORKERS)
    pids = await started_workers(proxy)
    assert sorted(pids) == [0, 1]
    assert pids[0] != pids[1]
    assert proxy.pid not in pids.values()
    listening = [line for line in proxy.logs() if f"listening on 127.0.0.1:{proxy.port}" in line]
    assert len(listening) == 2, "each worker binds the one port itself"
    tunnels = 40
    await make_tunnels(proxy, servers, tunnels)
    pod = await settled(proxy, OPENED, tunnels, protocol="http-connect")
    assert pod == tunnels
    closed = "ipv4proxy_tunnels_closed_total"
    assert await settled(proxy, closed, tunnels, protocol="http-connect", outcome="ok") == tunnels
    sockets = worker_sockets(proxy)
    assert sorted(sockets) == [0, 1]
    each = [metric(await worker_page(sockets[i]), OPENED, protocol="http-connect") for i in (0, 1)]
    # The kernel spreads new connections by their addresses and ports: 40 connections all
    # on one of two workers would be a chance of 2 in 2**40.
    assert all(count > 0 for count in each), each
    assert sum(each) == tunnels
    samples = await scrape(proxy)
    assert metric(samples, "ipv4proxy_ready") == 1  # the pod's, not 2
    assert metric(samples, "ipv4proxy_workers") == 2
    assert metric(samples, "ipv4proxy_tunnel_bytes_total", direction="sent") == sum(
        len(f"tunnel {i}\n") for i in range(tunnels)
    )
    assert metric(samples, "ipv4proxy_connect_seconds_count") == tunnels
    assert await admin_get(proxy, "/readyz") == (200, "ready\n")


async def test_connection_limit_holds_for_the_pod(
    proxy_factory: ProxyFactory, servers: TestServers
) -> None:
    limit, extra = 4, 8
    proxy = proxy_factory((*WORKERS, "--limits-max-connections", str(limit)))
    await started_workers(proxy)
    accepted, refused = [], 0
    try:
        for _ in range(limit + extra):
            tunnel = await open_tunnel_socket(proxy.port)
            request = f"CONNECT v4.test:{servers.echo_port} HTTP/1.1\r\n\r\n"
            try:
                tunnel.writer.write(request.encode())
                async with asyncio.timeout(WIRE_SECONDS):
                    head = await tunnel.reader.readexactly(12)
            except (asyncio.IncompleteReadError, ConnectionError):
                head = b""
            if head.startswith(b"HTTP/1.1 200"):
                accepted.append(tunnel)
            else:
                assert head == b"", head  # refused at accept: closed with no reply
                refused += 1
                await tunnel.close()
        # Each worker holds at most its share (2); 12 connections over two workers put at
        # least 6 on one of them, so that one is full whatever the spread.
        assert limit // 2 <= len(accepted) <= limit, (len(accepted), refused)
        assert refused == limit + extra - len(accepted)
        reason = "connections open (limits.max_connections)"
        assert any(reason in line for line in proxy.logs())
    finally:
        for tunnel in accepted:
            await tunnel.close()


async def test_sigterm_drains_every_worker_and_exits_0(
    proxy_factory: ProxyFactory, servers: TestServers
) -> None:
    proxy = proxy_factory((*WORKERS, "--drain-grace-period", "60"))
    pids = await started_workers(proxy)
    tunnel, reply = await http_connect(proxy.port, f"v4.test:{servers.echo_port}")
    assert reply.status == 200
    mark = proxy.mark()
    proxy.send_signal(signal.SIGTERM)
    await wait_line(proxy, "SIGTERM: draining 2 workers", mark)
    # As systemd's default KillMode does, the signal also reaches every worker directly:
    # a worker takes it and the supervisor's as one stop, not as a second one that cuts.
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)  # children of the proxy this test started
    await lines_in(proxy, "draining: not ready, listeners closed", 2, mark)  # every worker
    assert await admin_get(proxy, "/readyz") == (503, "draining\n")
    assert await admin_get(proxy, "/healthz") == (200, "ok\n")
    assert await refused_new_connection(proxy.port)
    await echo_once(tunnel, b"during the drain\n")  # the open tunnel still carries data
    assert proxy.alive()
    await tunnel.close()
    assert await wait_exit(proxy) == 0
    for index, pid in pids.items():
        await wait_line(proxy, f"worker {index} (pid {pid}) exited with status 0", mark)
    await wait_line(proxy, "stopped; 2 workers exited", mark)


async def test_second_signal_cuts_and_exits_1(
    proxy_factory: ProxyFactory, servers: TestServers
) -> None:
    proxy = proxy_factory((*WORKERS, "--drain-grace-period", "600"))
    await started_workers(proxy)
    tunnel, reply = await http_connect(proxy.port, f"v4.test:{servers.echo_port}")
    assert reply.status == 200
    mark = proxy.mark()
    proxy.send_signal(signal.SIGTERM)
    await wait_line(proxy, "draining: not ready", mark)
    proxy.send_signal(signal.SIGINT)
    assert await wait_exit(proxy) == 1
    assert await tunnel.read_to_eof() == b""
    await tunnel.close()
    await wait_line(proxy, "second SIGINT: every worker cuts its tunnels", mark)
    # The worker holding the tunnel cuts it (the other had nothing open: it may be gone).
    await lines_in(proxy, "the supervisor's second stop: cutting every tunnel now", 1, mark)


async def test_sighup_reaches_every_worker_and_a_bad_file_is_refused_once(
    proxy_factory: ProxyFactory, servers: TestServers, tmp_path: Path
) -> None:
    config = tmp_path / "ipv4proxy.yaml"
    config.write_text("log:\n  level: info\n", encoding="utf-8")
    proxy = proxy_factory((*WORKERS, "--config", str(config)))
    await started_workers(proxy)
    config.write_text("policy:\n  deny_domains: [dual.test]\n", encoding="utf-8")
    mark = proxy.mark()
    proxy.send_signal(signal.SIGHUP)
    await wait_line(proxy, "passed to 2 workers", mark)
    changed = "reloaded configuration; changed: policy.deny_domains"
    await lines_in(proxy, changed, 3, mark)  # the supervisor's, and each worker's once reloaded
    for _ in range(20):  # new connections, spread over both workers: each denies
        denied, reply = await http_connect(proxy.port, f"dual.test:{servers.echo_port}")
        assert reply.status == 403, reply
        await denied.close()

    config.write_text("limits:\n  max_head: lots\n", encoding="utf-8")
    mark = proxy.mark()
    proxy.send_signal(signal.SIGHUP)
    await wait_line(proxy, "reload refused", mark)
    config.write_text("limits:\n  max_connections: 1\n", encoding="utf-8")
    proxy.send_signal(signal.SIGHUP)
    line = await wait_line(proxy, "cannot be shared by 2 workers", mark)
    assert "limits.max_connections: 1" in line
    samples = await scrape(proxy)  # the last line of the supervisor's, so every line is in
    refusals = [line for line in proxy.logs()[mark:] if "reload refused" in line]
    assert len(refusals) == 2, refusals  # once each, by the supervisor, not per worker
    assert metric(samples, "ipv4proxy_config_reloads_total", result="applied") == 1
    assert metric(samples, "ipv4proxy_config_reloads_total", result="refused") == 2
    denied, reply = await http_connect(proxy.port, f"dual.test:{servers.echo_port}")
    assert reply.status == 403, reply  # the applied settings stay
    await denied.close()


async def test_a_killed_worker_is_started_again(
    proxy_factory: ProxyFactory, servers: TestServers
) -> None:
    proxy = proxy_factory(WORKERS)
    pids = await started_workers(proxy)
    await make_tunnels(proxy, servers, 10)
    assert await settled(proxy, OPENED, 10, protocol="http-connect") == 10
    mark = proxy.mark()
    os.kill(pids[1], signal.SIGKILL)  # a child of the proxy this test started
    line = await wait_line(proxy, f"worker 1 (pid {pids[1]}) killed by SIGKILL", mark)
    assert "starting it again in 0.5 s" in line
    line = await wait_line(proxy, "worker 1 started (pid", mark)
    again = int(_STARTED.search(line)[2])  # type: ignore[index]
    assert again != pids[1]
    await wait_line(proxy, f"worker 1 ready (pid {again})", mark)
    assert await admin_get(proxy, "/readyz") == (200, "ready\n")
    samples = await scrape(proxy)
    assert metric(samples, "ipv4proxy_worker_restarts_total") == 1
    assert metric(samples, "ipv4proxy_workers") == 2
    # The dead worker's counts stay in the pod's counters (read at the last scrape).
    assert metric(samples, OPENED, protocol="http-connect") == 10
    await make_tunnels(proxy, servers, 10)
    assert await settled(proxy, OPENED, 20, protocol="http-connect") == 20
    assert proxy.alive()


async def test_a_busy_port_is_reported_once_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_ipv4proxy(
            ["--workers", "2", "--listen", f"127.0.0.1:{port}", "--admin-listen", ""]
        )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if "cannot listen" in line]
    assert len(lines) == 1, result.stderr
    assert "cannot listen: listeners (--listen)" in lines[0]
    assert "started (pid" not in result.stderr


def test_workers_auto_and_too_small_a_limit_in_check_config() -> None:
    result = run_ipv4proxy(["check-config", "--workers", "auto"])
    assert result.returncode == 0, result.stderr
    assert "workers: auto" in result.stdout
    cpus = len(os.sched_getaffinity(0))
    result = run_ipv4proxy(
        ["check-config", "--workers", str(cpus + 1), "--limits-max-connections", str(cpus)]
    )
    assert result.returncode == 2
    assert f"limits.max_connections: {cpus} cannot be shared by {cpus + 1} workers" in (
        result.stderr
    )


_DNS_LINE = re.compile(r"dns listening on 127\.0\.0\.1:(\d+) \(udp, tcp\)")


async def test_dns_listener_runs_in_worker_0_only(
    proxy_factory: ProxyFactory, dnsmasq: Dnsmasq
) -> None:
    dns_args = ("--dns-listen", "127.0.0.1:0", "--dns-upstreams", f"127.0.0.1:{dnsmasq.port}")
    proxy = proxy_factory((*WORKERS, *dns_args))
    await started_workers(proxy)
    lines = [found for line in proxy.logs() if (found := _DNS_LINE.search(line))]
    assert len(lines) == 1, proxy.logs()  # one listener: one cache, one rate limit per client
    port = int(lines[0][1])
    for ask in (dns.query.udp, dns.query.tcp):
        answer = await asyncio.to_thread(
            ask, dns.message.make_query("v4.test", "A"), "127.0.0.1", port=port, timeout=3.0
        )
        assert [r.address for rrset in answer.answer for r in rrset] == ["127.0.0.1"]
        empty = await asyncio.to_thread(
            ask, dns.message.make_query("dual.test", "AAAA"), "127.0.0.1", port=port, timeout=3.0
        )
        assert empty.rcode() == dns.rcode.NOERROR
        assert not empty.answer
    samples = await scrape(proxy)
    asked = sum(
        value for (name, _), value in samples.items() if name == "ipv4proxy_dns_queries_total"
    )
    assert asked == 4
