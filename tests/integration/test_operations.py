"""Operations against a real proxy process: metrics, health, drain, signals, reload, JSON logs.

Each test starts its own proxy (fresh counters, its own signals) through the helpers, so the
default test flags apply; the admin listener is on a free port (``proxy.admin_port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from helpers.net import loopback_listener
from helpers.programs import run_ipv4proxy
from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.servers import TestServers
from helpers.wire import WIRE_SECONDS, Tunnel, http_connect, socks4_connect, socks5_request

# Bound for a proxy to exit after a stop signal, when nothing should hold it back.
EXIT_SECONDS = 15.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def admin_get(proxy: ProxyProcess, path: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=WIRE_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{proxy.admin_port}{path}") as response,
    ):
        return response.status, await response.text()


async def scrape(proxy: ProxyProcess) -> Samples:
    status, page = await admin_get(proxy, "/metrics")
    assert status == 200, page
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def echo_once(tunnel: Tunnel, data: bytes) -> None:
    tunnel.writer.write(data)
    assert await tunnel.read_exactly(len(data)) == data


async def refused_new_connection(port: int) -> bool:
    """True when a new client gets no proxy at all: refused, or closed without a byte."""
    try:
        async with asyncio.timeout(WIRE_SECONDS):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    try:
        writer.write(b"CONNECT v4.test:1 HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(WIRE_SECONDS):
            return await reader.read(1) == b""
    except ConnectionError:
        return True
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def wait_line(proxy: ProxyProcess, text: str, since: int = 0) -> str:
    line = await asyncio.to_thread(proxy.wait_for_line, lambda t: text in t, 10.0, since)
    assert line is not None, f"no line with {text!r}; stderr:\n" + "\n".join(proxy.logs())
    return line


async def wait_exit(proxy: ProxyProcess) -> int | None:
    return await asyncio.to_thread(proxy.wait, EXIT_SECONDS)


# --- metrics and health ---------------------------------------------------------------------


async def test_metrics_after_real_tunnels(
    proxy_factory: ProxyFactory, servers: TestServers, closed_port: int
) -> None:
    # A long minimum TTL: the second dual.test lookup is a cache hit however slow the machine.
    proxy = proxy_factory(["--resolver-min-ttl", "600"])
    assert await admin_get(proxy, "/healthz") == (200, "ok\n")
    assert await admin_get(proxy, "/readyz") == (200, "ready\n")
    sent = received = 0
    for _ in range(2):
        tunnel, reply = await http_connect(proxy.port, f"dual.test:{servers.echo_port}")
        assert reply.status == 200
        await echo_once(tunnel, b"x" * 1000)
        await tunnel.close()
        fields = await proxy.access(
            client=tunnel.client, after=tunnel.opened, protocol="http-connect"
        )
        sent, received = sent + int(fields["sent"]), received + int(fields["received"])
    tunnel, socks = await socks5_request(proxy.port, "v4.test", servers.echo_port)
    assert socks.code == 0
    await echo_once(tunnel, b"y" * 300)
    await tunnel.close()
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened, protocol="socks5")
    sent, received = sent + int(fields["sent"]), received + int(fields["received"])
    assert (sent, received) == (2300, 2300)
    for target, outcome in [
        (f"v4.test:{closed_port}", "ECONNREFUSED"),
        ("nowhere.test:443", "NXDOMAIN"),
        ("v6only.test:443", "NODATA"),
        ("[2001:db8::1]:443", "IPV6_LITERAL"),
    ]:
        tunnel, reply = await http_connect(proxy.port, target)
        assert reply.status >= 400
        await tunnel.close()
        await proxy.access(client=tunnel.client, after=tunnel.opened, outcome=outcome)

    samples = await scrape(proxy)
    assert metric(samples, "ipv4proxy_tunnels_opened_total", protocol="http-connect") == 2
    assert metric(samples, "ipv4proxy_tunnels_opened_total", protocol="socks5") == 1
    closed = "ipv4proxy_tunnels_closed_total"
    assert metric(samples, closed, protocol="http-connect", outcome="ok") == 2
    assert metric(samples, closed, protocol="socks5", outcome="ok") == 1
    assert metric(samples, "ipv4proxy_tunnels_active") == 0
    assert metric(samples, "ipv4proxy_tunnel_bytes_total", direction="sent") == sent
    assert metric(samples, "ipv4proxy_tunnel_bytes_total", direction="received") == received
    # The histogram times the connects that made a tunnel.
    assert metric(samples, "ipv4proxy_connect_seconds_count") == 3
    assert metric(samples, "ipv4proxy_connect_seconds_bucket", le="+Inf") == 3
    lookups = "ipv4proxy_dns_lookups_total"
    # Misses: dual.test and v4.test once each; hits: their second lookups.
    assert metric(samples, lookups, result="miss") == 2
    assert metric(samples, lookups, result="hit") == 2
    assert metric(samples, lookups, result="nxdomain") == 1
    assert metric(samples, lookups, result="nodata") == 1
    assert metric(samples, lookups, result="error") == 0
    failures = "ipv4proxy_upstream_connect_failures_total"
    assert metric(samples, failures, cause="ECONNREFUSED") == 1
    for reason in ("ECONNREFUSED", "NXDOMAIN", "NODATA", "IPV6_LITERAL"):
        assert metric(samples, "ipv4proxy_refusals_total", reason=reason) == 1, reason
    assert metric(samples, "ipv4proxy_refusals_total", reason="DENIED") == 0
    assert metric(samples, "ipv4proxy_ready") == 1
    # No destination name or address is ever a label.
    for _, labels in samples:
        for _, label_value in labels:
            assert ".test" not in label_value, labels
            assert "127.0.0" not in label_value, labels


async def test_admin_listener_can_be_off(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(["--admin-listen", ""])
    assert proxy.admin_port == 0
    assert not any("admin endpoints" in line for line in proxy.logs())


# --- drain and signals ----------------------------------------------------------------------


async def test_drain_lets_an_open_tunnel_finish(
    proxy_factory: ProxyFactory, servers: TestServers
) -> None:
    proxy = proxy_factory(["--drain-grace-period", "60"])
    tunnel, reply = await http_connect(proxy.port, f"v4.test:{servers.echo_port}")
    assert reply.status == 200
    await echo_once(tunnel, b"before the signal\n")
    mark = proxy.mark()
    proxy.send_signal(signal.SIGTERM)
    await wait_line(proxy, "draining: not ready", mark)
    assert (await admin_get(proxy, "/readyz"))[0] == 503
    assert await admin_get(proxy, "/healthz") == (200, "ok\n")
    assert await refused_new_connection(proxy.port)
    # The open tunnel keeps carrying data both ways while the proxy drains.
    for index in range(3):
        await echo_once(tunnel, f"during the drain {index}\n".encode())
    assert proxy.alive()
    await tunnel.close()
    # Its end is the last thing the drain waited for: the proxy exits at once, cleanly.
    assert await wait_exit(proxy) == 0
    assert "stopped; 0 connections cut" in await wait_line(proxy, "stopped", mark)
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened)
    assert fields["outcome"] == "ok"
    assert int(fields["sent"]) == len(b"before the signal\n") + 3 * len(b"during the drain 0\n")


async def test_grace_period_end_cuts_what_is_left(
    proxy_factory: ProxyFactory, servers: TestServers
) -> None:
    proxy = proxy_factory(["--drain-grace-period", "0.5"])
    tunnel, reply = await socks4_connect(proxy.port, "v4.test", servers.echo_port)
    assert reply.code == 0x5A
    await echo_once(tunnel, b"idle from now on\n")
    mark = proxy.mark()
    proxy.send_signal(signal.SIGTERM)
    assert await wait_exit(proxy) == 0
    assert await tunnel.read_to_eof() == b""
    await tunnel.close()
    assert "stopped; 1 connection cut" in await wait_line(proxy, "stopped", mark)
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened)
    assert fields["outcome"] == "cut", fields


async def test_a_stop_signal_after_the_drain_is_ignored(proxy_factory: ProxyFactory) -> None:
    """systemd signals every process of a unit (and a worker also gets its supervisor's):
    a SIGTERM that lands once the drain is over, while the process exits, leaves the exit
    status 0 instead of killing it by the default action."""
    proxy = proxy_factory(())
    mark = proxy.mark()
    proxy.send_signal(signal.SIGTERM)
    await wait_line(proxy, "stopped; 0 connections cut", mark)
    proxy.send_signal(signal.SIGTERM)  # a no-op if it has exited already
    assert await wait_exit(proxy) == 0


async def test_second_signal_exits_at_once(
    proxy_factory: ProxyFactory, servers: TestServers
) -> None:
    # A grace period far beyond the exit bound: only the second signal can end it in time.
    proxy = proxy_factory(["--drain-grace-period", "600"])
    tunnel, reply = await http_connect(proxy.port, f"v4.test:{servers.echo_port}")
    assert reply.status == 200
    mark = proxy.mark()
    proxy.send_signal(signal.SIGTERM)
    await wait_line(proxy, "draining", mark)
    await echo_once(tunnel, b"still open\n")
    proxy.send_signal(signal.SIGINT)
    assert await wait_exit(proxy) == 1
    assert await tunnel.read_to_eof() == b""
    await tunnel.close()
    await wait_line(proxy, "second SIGINT: cutting every tunnel now", mark)


# --- reload ---------------------------------------------------------------------------------


async def test_reload_under_traffic(
    proxy_factory: ProxyFactory, servers: TestServers, tmp_path: Path
) -> None:
    config = tmp_path / "ipv4proxy.yaml"
    config.write_text("limits:\n  max_head: 32768\n", encoding="utf-8")
    proxy = proxy_factory(["--config", str(config)])
    big_header = "X-Padding: " + "p" * 2000 + "\r\n"
    target = f"v4.test:{servers.echo_port}"
    tunnel, reply = await http_connect(proxy.port, target)
    assert reply.status == 200
    await echo_once(tunnel, b"before the reload\n")

    config.write_text(
        "limits:\n  max_head: 1024\npolicy:\n  deny_domains: [dual.test]\n", encoding="utf-8"
    )
    mark = proxy.mark()
    proxy.send_signal(signal.SIGHUP)
    line = await wait_line(proxy, "reloaded configuration", mark)
    assert "changed: limits.max_head, policy.deny_domains" in line
    await echo_once(tunnel, b"after the reload\n")  # the open tunnel is untouched
    denied, reply = await http_connect(proxy.port, f"dual.test:{servers.echo_port}")
    assert reply.status == 403, reply  # the new policy applies to new connections
    await denied.close()
    refused, reply = await http_connect(proxy.port, target, extra_head=big_header)
    assert reply.status == 431, reply  # a new connection gets the new limit
    await refused.close()

    config.write_text("limits:\n  max_head: lots\n", encoding="utf-8")
    mark = proxy.mark()
    proxy.send_signal(signal.SIGHUP)
    line = await wait_line(proxy, "reload refused", mark)
    assert "limits.max_head: expected an integer" in line
    denied, reply = await http_connect(proxy.port, f"dual.test:{servers.echo_port}")
    assert reply.status == 403, reply  # so does the policy
    await denied.close()
    refused, reply = await http_connect(proxy.port, target, extra_head=big_header)
    assert reply.status == 431, reply  # the old (reloaded) settings stay
    await refused.close()

    await echo_once(tunnel, b"through every reload\n")
    await tunnel.close()
    samples = await scrape(proxy)
    assert metric(samples, "ipv4proxy_config_reloads_total", result="applied") == 1
    assert metric(samples, "ipv4proxy_config_reloads_total", result="refused") == 1
    assert proxy.alive()


# --- JSON logs ------------------------------------------------------------------------------


async def test_json_log_lines(proxy_factory: ProxyFactory, servers: TestServers) -> None:
    secret = "hunter2-never-logged"
    proxy = proxy_factory(["--log-format", "json"])
    tunnel, reply = await http_connect(
        proxy.port,
        f"v4.test:{servers.echo_port}",
        extra_head=f"Proxy-Authorization: Basic {secret}\r\n",
    )
    assert reply.status == 200
    await echo_once(tunnel, b"json\n")
    await tunnel.close()
    refused, socks = await socks4_connect(proxy.port, "nowhere.test", 443, user=secret.encode())
    assert socks.code == 0x5B
    await refused.close()
    await wait_line(proxy, '"outcome":"NXDOMAIN"')
    proxy.send_signal(signal.SIGTERM)
    assert await wait_exit(proxy) == 0
    await wait_line(proxy, '"event":"stopped"')
    lines = [json.loads(line) for line in proxy.logs()]  # every line is one JSON object
    events = [line.get("event") for line in lines]
    for name in ("listening", "admin_listening", "ready", "draining", "stopped"):
        assert name in events, events
    tunnels = [line for line in lines if line.get("event") == "tunnel"]
    ok = next(line for line in tunnels if line["outcome"] == "ok")
    assert ok["target"] == f"v4.test:{servers.echo_port}"
    assert (ok["sent"], ok["received"], ok["protocol"]) == (5, 5, "http-connect")
    assert ok["logger"] == "ipv4proxy.access"
    assert any(line["outcome"] == "NXDOMAIN" for line in tunnels)
    assert all(secret not in text for text in proxy.logs())


def test_a_taken_admin_port_is_named_with_its_setting() -> None:
    """A second instance on the admin port: exit 1, and the error names admin.listen, its
    flag and how to turn it off, not only an errno."""
    with loopback_listener() as taken:
        port = taken.getsockname()[1]
        done = run_ipv4proxy(["--listen", "127.0.0.1:0", "--admin-listen", f"127.0.0.1:{port}"])
    assert done.returncode == 1, done.stderr
    assert f"cannot listen: admin.listen 127.0.0.1:{port} (--admin-listen; '' turns it off)" in (
        done.stderr
    )
