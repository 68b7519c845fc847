"""What a tunnel must carry: early data, half-close, and the fallback across A records.

These use the hand-written clients of helpers.wire, so each test knows exactly which
bytes went when, and which client port names its access line.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Awaitable, Callable

import pytest

from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.servers import TestServers
from helpers.wire import Tunnel, http_connect, socks4_connect, socks5_request

# Opens a tunnel to (host, port) sending `early` bytes with the request; asserts success.
Opener = Callable[[ProxyProcess, str, int, bytes], Awaitable[Tunnel]]


async def _open_connect(proxy: ProxyProcess, host: str, port: int, early: bytes) -> Tunnel:
    tunnel, reply = await http_connect(proxy.port, f"{host}:{port}", early=early)
    assert reply.status == 200, (reply.status, reply.body_text)
    return tunnel


async def _open_socks5(proxy: ProxyProcess, host: str, port: int, early: bytes) -> Tunnel:
    tunnel, reply = await socks5_request(proxy.port, host, port, early=early)
    assert reply.code == 0x00, reply
    return tunnel


async def _open_socks4a(proxy: ProxyProcess, host: str, port: int, early: bytes) -> Tunnel:
    tunnel, reply = await socks4_connect(proxy.port, host, port, early=early)
    assert reply.code == 0x5A, reply
    return tunnel


OPENERS = [
    pytest.param(_open_connect, "http-connect", id="http-connect"),
    pytest.param(_open_socks5, "socks5", id="socks5"),
    pytest.param(_open_socks4a, "socks4a", id="socks4a"),
]


@pytest.mark.parametrize(("open_tunnel", "protocol"), OPENERS)
async def test_early_data_reaches_the_server(
    proxy: ProxyProcess, servers: TestServers, open_tunnel: Opener, protocol: str
) -> None:
    early = b"early bytes, sent in the same write as the request\n"
    tunnel = await open_tunnel(proxy, "dual.test", servers.echo_port, early)
    try:
        # The echo server returns them only if the proxy forwarded them after connecting.
        assert await tunnel.read_exactly(len(early)) == early
        tunnel.writer.write(b"and later bytes\n")
        assert await tunnel.read_exactly(len(b"and later bytes\n")) == b"and later bytes\n"
    finally:
        await tunnel.close()
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened, protocol=protocol)
    assert fields["outcome"] == "ok", fields
    assert fields["target"] == f"dual.test:{servers.echo_port}", fields
    assert int(fields["sent"]) == len(early) + len(b"and later bytes\n"), fields


@pytest.mark.parametrize(("open_tunnel", "protocol"), OPENERS)
async def test_half_close_keeps_the_other_direction(
    proxy: ProxyProcess, servers: TestServers, open_tunnel: Opener, protocol: str
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, several relay reads
    tunnel = await open_tunnel(proxy, "v4.test", servers.half_close_port, b"")
    try:
        tunnel.writer.write(data)
        await tunnel.writer.drain()
        # Our FIN: the server answers only after it sees EOF, so the proxy must pass the
        # half-close on and keep carrying the answer back.
        tunnel.writer.write_eof()
        answer = await tunnel.read_to_eof()
    finally:
        await tunnel.close()
    assert answer == f"got {len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened, protocol=protocol)
    assert fields["outcome"] == "ok", fields
    assert int(fields["sent"]) == len(data), fields
    assert int(fields["received"]) == len(answer), fields


@pytest.mark.parametrize(("open_tunnel", "protocol"), OPENERS)
async def test_several_a_records_reach_the_one_that_listens(
    proxy: ProxyProcess, servers: TestServers, open_tunnel: Opener, protocol: str
) -> None:
    # multi.test has A 127.0.0.2, 127.0.0.3 and 127.0.0.1; only 127.0.0.1 listens on this
    # port, so whatever order dnsmasq answers in, the proxy must end up there.
    tunnel = await open_tunnel(proxy, "multi.test", servers.echo_port, b"")
    try:
        tunnel.writer.write(b"ping\n")
        assert await tunnel.read_exactly(5) == b"ping\n"
    finally:
        await tunnel.close()
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened, protocol=protocol)
    assert fields["outcome"] == "ok", fields
    assert fields["address"] == "127.0.0.1", fields


async def test_socks4_ipv4_literal(proxy: ProxyProcess, servers: TestServers) -> None:
    tunnel, reply = await socks4_connect(
        proxy.port, "127.0.0.1", servers.echo_port, early=b"four\n"
    )
    try:
        assert reply.code == 0x5A, reply
        assert await tunnel.read_exactly(5) == b"four\n"
    finally:
        await tunnel.close()
    fields = await proxy.access(client=tunnel.client, after=tunnel.opened, protocol="socks4")
    assert fields["outcome"] == "ok", fields
    assert fields["target"] == f"127.0.0.1:{servers.echo_port}", fields


def test_no_test_endpoint_listens_beyond_loopback(servers: TestServers) -> None:
    # Guard on the harness itself: the echo port is not reachable on another local address.
    with socket.socket() as probe:
        probe.settimeout(5.0)
        assert probe.connect_ex(("127.0.0.2", servers.echo_port)) != 0


async def test_access_lines_can_be_left_out_alone(
    proxy_factory: ProxyFactory, servers: TestServers
) -> None:
    """log.access false: the line of a tunnel that ran is left out; refusals and lifecycle
    lines stay (log.level warning would hide those too)."""
    proxy = proxy_factory(("--log-access", "false"))
    tunnel, answer = await http_connect(proxy.port, f"127.0.0.1:{servers.echo_port}")
    assert answer.status == 200, answer
    tunnel.writer.write(b"x")
    assert await tunnel.read_exactly(1) == b"x"
    await tunnel.close()
    refused, answer = await http_connect(proxy.port, "[2001:db8::1]:443")
    await refused.close()
    assert answer.status == 502, answer
    fields = await proxy.access(outcome="IPV6_LITERAL")
    assert fields["target"] == "[2001:db8::1]:443", fields
    lines = proxy.logs()
    assert any(" ready" in line for line in lines)
    assert not [line for line in lines if "outcome=ok" in line]
