"""IPv6 is never tried: not asked for (no AAAA query), not dialled (the [::1] trap stays empty).

``*.trap.test`` names have A 127.0.0.1 and AAAA ::1. An HTTP server listens on
127.0.0.1:P and a trap on [::1]:P, the same port: a proxy that asked for AAAA and dialled
::1 would connect, at the wrong place, and the trap would record it. Each protocol uses a
name of its own, so the proxy's DNS cache cannot hide a query. No test sends this dnsmasq
an AAAA question (clients hand names to the proxy unresolved), so any AAAA in its log came
from the proxy.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable

import pytest

from helpers.dnsmasq import TRAP_DOMAIN, Dnsmasq
from helpers.proxy import ProxyProcess
from helpers.servers import LoopThread, Trap
from helpers.wire import (
    Tunnel,
    http_connect,
    http_raw,
    read_http_reply,
    socks4_connect,
    socks5_request,
)

Opener = Callable[[ProxyProcess, str, int], Awaitable[Tunnel]]


async def _through_connect(proxy: ProxyProcess, name: str, port: int) -> Tunnel:
    tunnel, reply = await http_connect(proxy.port, f"{name}:{port}")
    assert reply.status == 200, (reply.status, reply.body_text)
    return tunnel


async def _through_socks5(proxy: ProxyProcess, name: str, port: int) -> Tunnel:
    tunnel, reply = await socks5_request(proxy.port, name, port)
    assert reply.code == 0x00, reply
    return tunnel


async def _through_socks4a(proxy: ProxyProcess, name: str, port: int) -> Tunnel:
    tunnel, reply = await socks4_connect(proxy.port, name, port)
    assert reply.code == 0x5A, reply
    return tunnel


def _assert_ipv4_only(
    dnsmasq: Dnsmasq,
    trap: Trap,
    server_loop: LoopThread,
    name: str,
    peers_before: list[tuple[str, int]],
) -> None:
    assert server_loop.call(trap.peers) == peers_before, "the proxy connected to [::1]"
    queries = dnsmasq.queries()
    assert ("A", name) in [(query.qtype, query.name) for query in queries], queries
    assert [query for query in queries if query.qtype != "A"] == []


def _get(name: str, port: int, target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("protocol", "open_tunnel"),
    [
        ("http-connect", _through_connect),
        ("socks5", _through_socks5),
        ("socks4a", _through_socks4a),
    ],
)
async def test_dual_stack_name_through_tunnel_uses_ipv4_only(
    proxy: ProxyProcess,
    *,
    dnsmasq: Dnsmasq,
    trap: Trap,
    server_loop: LoopThread,
    protocol: str,
    open_tunnel: Opener,
) -> None:
    name = f"{protocol}.{TRAP_DOMAIN}"
    peers_before = server_loop.call(trap.peers)
    tunnel = await open_tunnel(proxy, name, trap.port)
    try:
        tunnel.writer.write(_get(name, trap.port, "/echo?via=tunnel"))
        reply = await read_http_reply(tunnel, read_body=True)
    finally:
        await tunnel.close()
    # Only the 127.0.0.1 side answers HTTP; the trap closes at once.
    assert reply.status == 200, reply
    assert json.loads(reply.body)["path"] == "/echo?via=tunnel"
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened, protocol=protocol)
    assert fields["outcome"] == "ok", fields
    assert fields["address"] == "127.0.0.1", fields
    _assert_ipv4_only(dnsmasq, trap, server_loop, name, peers_before)


async def test_dual_stack_name_forwarded_uses_ipv4_only(
    proxy: ProxyProcess, dnsmasq: Dnsmasq, trap: Trap, server_loop: LoopThread
) -> None:
    name = f"forward.{TRAP_DOMAIN}"
    peers_before = server_loop.call(trap.peers)
    tunnel, reply = await http_raw(
        proxy.port, _get(name, trap.port, f"http://{name}:{trap.port}/echo?via=forward")
    )
    await tunnel.close()
    assert reply.status == 200, reply
    assert json.loads(reply.body)["path"] == "/echo?via=forward"
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened, protocol="http-forward")
    assert fields["outcome"] == "ok", fields
    assert fields["address"] == "127.0.0.1", fields
    _assert_ipv4_only(dnsmasq, trap, server_loop, name, peers_before)


def test_trap_catches_a_client_that_dials_ipv6(trap: Trap, server_loop: LoopThread) -> None:
    # The harness check: the trap really listens on [::1] at the target's port, so a
    # client that dialled the AAAA address would be recorded.
    peers_before = server_loop.call(trap.peers)
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.settimeout(5.0)
        probe.connect(("::1", trap.port))
        probe.recv(1)  # the trap closes at once; EOF
    new_peers = server_loop.call(trap.peers)[len(peers_before) :]
    assert [peer[0] for peer in new_peers] == ["::1"]
