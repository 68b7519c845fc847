"""Bounds a client cannot talk its way past: a request that would loop back into this
proxy is refused whatever the policy opens.

Unfinished heads and the heap trim are tested in component/test_server_bounds.py, relay
memory (stalled tunnels) in component/test_relay.py, refused client addresses in
component/test_server_access.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.servers import TestServers
from helpers.wire import http_connect, open_tunnel_socket
from ipv4proxy.rules import local_addresses


@pytest.fixture(scope="module")
def open_proxy(
    proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """A proxy that allows every address and port, with a name that resolves to 0.0.0.0."""
    hosts = Path(tmp_path_factory.mktemp("loop")) / "hosts"
    hosts.write_text("0.0.0.0 zero.loop.test\n127.0.0.5 lo.loop.test\n")
    process = proxy_factory(("--hosts-file", str(hosts), "--policy-allow-cidrs", "0.0.0.0/0"))
    yield process
    process.stop()


def _this_hosts_other_address() -> str:
    """An address of one of this machine's interfaces other than loopback, if it has one."""
    others = sorted(
        a
        for a in local_addresses(Path("/proc/net/fib_trie").read_text())
        if not a.startswith("127.")
    )
    return others[0] if others else "127.0.0.1"


@pytest.mark.parametrize(
    "target",
    [
        "0.0.0.0:{port}",
        "0.0.0.1:{port}",
        "127.0.0.1:{port}",
        "127.3.2.1:{port}",
        "zero.loop.test:{port}",
        "lo.loop.test:{port}",
        "{local}:{port}",
        "127.0.0.1:{admin}",
        "0.0.0.0:{admin}",
    ],
)
async def test_a_loop_is_refused_whatever_the_spelling(
    open_proxy: ProxyProcess, servers: TestServers, target: str
) -> None:
    address = target.format(
        port=open_proxy.port, admin=open_proxy.admin_port, local=_this_hosts_other_address()
    )
    tunnel, reply = await http_connect(open_proxy.port, address)
    await tunnel.close()
    assert reply.status == 403, reply
    assert "own listen address of this proxy (a loop)" in reply.body_text
    # The same addresses at another port are what allow_cidrs 0.0.0.0/0 opened on purpose.
    echo, answer = await http_connect(open_proxy.port, f"127.0.0.1:{servers.echo_port}")
    await echo.close()
    assert answer.status == 200, answer


async def test_nested_connects_in_one_write_open_nothing(open_proxy: ProxyProcess) -> None:
    """500 CONNECTs to the proxy itself in one write: one refusal, no tunnel, no chain."""
    since = open_proxy.mark()
    tunnel = await open_tunnel_socket(open_proxy.port)
    hop = f"CONNECT 0.0.0.0:{open_proxy.port} HTTP/1.1\r\n\r\n".encode()
    tunnel.writer.write(hop * 500)
    reply = await tunnel.read_to_eof()
    await tunnel.close()
    assert reply.startswith(b"HTTP/1.1 403 Forbidden\r\n"), reply
    line = open_proxy.wait_for_access(since, target=f"0.0.0.0:{open_proxy.port}")
    assert line["outcome"] == "DENIED"
    # Any hop of a chain would be a tunnel to the same target; an earlier test's tunnel
    # (to the echo server) may still be logged after the mark, and is not counted.
    hop_target = f" target=0.0.0.0:{open_proxy.port} "
    logged = [text for text in open_proxy.logs()[since:] if hop_target in text]
    assert len(logged) == 1, logged
