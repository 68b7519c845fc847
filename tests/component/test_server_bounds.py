"""The server in this process: unfinished heads share one memory budget, and the heap is
trimmed once after a burst."""

from __future__ import annotations

import asyncio
import logging
import platform

import pytest

from helpers.metrics import value
from helpers.wire import http_connect, open_tunnel_socket
from ipv4proxy import server
from ipv4proxy.config import load
from ipv4proxy.net import heap
from ipv4proxy.net.resolver import Resolver
from ipv4proxy.policy import Policy
from ipv4proxy.server import Proxy

KIB = 1024
BUDGET = 64 * KIB
PIECE = 20 * KIB  # an unfinished head: no CRLF CRLF yet


async def test_unfinished_heads_share_one_budget(caplog: pytest.LogCaptureFixture) -> None:
    """Three 20 KiB unfinished heads fit a 64 KiB budget, the fourth is refused with 503;
    a request that arrives whole is never counted, so it still gets its answer."""
    caplog.set_level(logging.INFO, logger="ipv4proxy.access")
    config = load(
        "listeners: [{host: 127.0.0.1, port: 0}]\n"
        f"limits: {{handshake_memory: {BUDGET}, handshake_timeout: 30}}\n"
        "http: {connect_failure: status}\n"
        "resolver: {hosts_file: /dev/null, resolv_conf: /dev/null}"
    )
    proxy = Proxy(config, Resolver(config.resolver, hosts={}), Policy(config))
    (_, port), *_ = await proxy.start()
    slow = []
    try:
        head = b"GET http://example.com/ HTTP/1.1\r\nX-Pad: " + b"a" * PIECE
        for _ in range(3):
            tunnel = await open_tunnel_socket(port)
            tunnel.writer.write(head)
            slow.append(tunnel)
        for _ in range(50):  # bounded wait until the proxy has read all three
            if proxy.handshake_bytes >= 3 * len(head):
                break
            await asyncio.sleep(0.05)
        assert proxy.handshake_bytes == 3 * len(head)
        assert value(proxy.metrics, "ipv4proxy_handshake_held_bytes") == 3 * len(head)
        assert value(proxy.metrics, "ipv4proxy_connections_open") == 3
        over = await open_tunnel_socket(port)
        over.writer.write(head)
        reply = await over.read_to_eof()
        await over.close()
        assert reply.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), reply
        assert b"limits.handshake_memory 65536" in reply
        assert proxy.handshake_bytes == 3 * len(head)
        # Whole in one read: answered (here 403, the port is not allowed), not refused as 503.
        tunnel, answer = await http_connect(port, "example.com:8080")
        await tunnel.close()
        assert answer.status == 403, answer
    finally:
        for tunnel in slow:
            await tunnel.close()
        for _ in range(50):
            if not proxy.handshake_bytes:
                break
            await asyncio.sleep(0.05)
        assert proxy.handshake_bytes == 0
        await proxy.close()
    outcomes = [r.getMessage() for r in caplog.records if r.name == "ipv4proxy.access"]
    assert sum("outcome=OVERLOADED" in line for line in outcomes) == 1


async def test_the_heap_is_trimmed_once_after_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    """When open connections fall to half of a peak worth the trouble, the heap is trimmed
    once, shortly after, and not again until the next burst."""
    calls: list[int] = []
    monkeypatch.setattr(server, "_TRIM_PEAK", 8)
    monkeypatch.setattr(server, "_TRIM_DELAY", 0.05)

    def trim() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(heap, "trim", trim)
    config = load(
        "listeners: [{host: 127.0.0.1, port: 0}]\n"
        "resolver: {hosts_file: /dev/null, resolv_conf: /dev/null}"
    )
    proxy = Proxy(config, Resolver(config.resolver, hosts={}), Policy(config))
    (_, port), *_ = await proxy.start()
    try:
        for burst in (1, 2):
            tunnels = [await open_tunnel_socket(port) for _ in range(8)]
            for _ in range(50):  # bounded wait until the proxy has accepted them all
                if proxy.connections == 8:
                    break
                await asyncio.sleep(0.02)
            assert proxy.connections == 8
            for tunnel in tunnels:
                await tunnel.close()
            for _ in range(50):
                if len(calls) == burst:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # a second trim would have come by now
            assert len(calls) == burst
    finally:
        await proxy.close()


def test_malloc_trim_is_found_on_glibc() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not a glibc system: malloc_trim is absent and trim() is a no-op")
    assert heap.trim() is True
