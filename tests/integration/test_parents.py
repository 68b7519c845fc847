"""Parent proxies, for real: second ipv4proxy instances (one requiring credentials) and
microsocks (Debian, with and without credentials) as parents.

One child proxy serves every case; its parent rules pick a parent by the destination's
name, and every test name is a ``*.trap.test`` name, which dnsmasq answers with both A
127.0.0.1 and AAAA ::1, so a parent that received ``127.0.0.1`` proves the child resolved
A-only and handed over an IPv4 literal. The second ipv4proxy shows it in its access line
(``target=127.0.0.1:PORT``); microsocks is read through a relay that records the SOCKS5
request bytes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from helpers.ci import unavailable
from helpers.net import refused_port
from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.servers import LoopThread, TestServers
from helpers.socks import Microsocks, MicrosocksUnavailable, RecordingRelay, start_relay
from helpers.wire import http_connect, socks4_connect, socks5_request

USER, PASSWORD = "tester", "s3cret"


@dataclass
class World:
    child: ProxyProcess
    parent: ProxyProcess
    auth_parent: ProxyProcess
    relay: RecordingRelay
    auth_relay: RecordingRelay
    refused: int
    echo: int


@pytest.fixture(scope="module")
def microsocks_pair() -> Iterator[tuple[Microsocks, Microsocks]]:
    open_one, auth_one = Microsocks(), Microsocks(USER, PASSWORD)
    try:
        open_one.start()
        auth_one.start()
    except MicrosocksUnavailable as exc:
        open_one.stop()
        unavailable(str(exc))
    yield open_one, auth_one
    open_one.stop()
    auth_one.stop()


@pytest.fixture(scope="module")
def world(
    proxy_factory: ProxyFactory,
    proxy: ProxyProcess,
    server_loop: LoopThread,
    servers: TestServers,
    microsocks_pair: tuple[Microsocks, Microsocks],
) -> Iterator[World]:
    open_socks, auth_socks = microsocks_pair
    relay = server_loop.call(lambda: start_relay(open_socks.port))
    auth_relay = server_loop.call(lambda: start_relay(auth_socks.port))
    refusing = refused_port()
    dead = refusing.getsockname()[1]
    b = proxy.port
    # A second ipv4proxy that requires credentials (RFC 1929 for SOCKS5, Basic for HTTP).
    auth_parent = proxy_factory(("--auth-users", f"{USER}:{PASSWORD}"))
    ab = auth_parent.port
    parents = [
        f"name=s5auth url=socks5://{USER}:{PASSWORD}@127.0.0.1:{ab} domains=s5auth.trap.test",
        f"name=webauth url=http://{USER}:{PASSWORD}@127.0.0.1:{ab} domains=httpauth.trap.test",
        f"name=s5 url=socks5://127.0.0.1:{b} domains=s5.trap.test",
        f"name=web url=http://127.0.0.1:{b} domains=http.trap.test",
        f"name=s4 url=socks4://127.0.0.1:{b} domains=s4.trap.test",
        f"name=named url=socks5://v4.test:{b} domains=named.trap.test",
        f"name=ms url=socks5://127.0.0.1:{relay.port} domains=ms.trap.test",
        f"name=msauth url=socks5://{USER}:{PASSWORD}@127.0.0.1:{auth_relay.port}"
        " domains=msauth.trap.test",
        f"name=msbad url=socks5://{USER}:wrong-pw@127.0.0.1:{auth_socks.port}"
        " domains=msbad.trap.test",
        f"name=deadA url=socks5://127.0.0.1:{dead} domains=failover.trap.test;down.trap.test",
        f"name=s5b url=socks5://127.0.0.1:{b} domains=failover.trap.test",
        f"name=deadB url=http://127.0.0.1:{dead} domains=down.trap.test",
        f"name=wa url=socks5://127.0.0.1:{b} domains=*.wa.trap.test ports={servers.echo_port}",
    ]
    args: list[str] = ["--connect-timeout", "3"]
    for parent in parents:
        args += ["--parent", parent]
    child = proxy_factory(args)
    yield World(child, proxy, auth_parent, relay, auth_relay, dead, servers.echo_port)
    child.stop()
    auth_parent.stop()
    refusing.close()
    server_loop.call(relay.close)
    server_loop.call(auth_relay.close)


async def _echo_through_child(world: World, authority: str) -> dict[str, str]:
    """CONNECT to `authority` through the child, echo once, close; the child's access line."""
    tunnel, reply = await http_connect(world.child.port, authority)
    assert reply.status == 200, reply
    tunnel.writer.write(b"ping through the parent")
    assert await tunnel.read_exactly(23) == b"ping through the parent"
    await tunnel.close()
    return await world.child.access(client=tunnel.client, after=tunnel.opened)


@pytest.mark.parametrize(("host", "via"), [("s5", "s5"), ("http", "web"), ("s4", "s4")])
async def test_chain_through_a_second_ipv4proxy_hands_it_an_ipv4_literal(
    world: World, host: str, via: str
) -> None:
    mark = world.parent.mark()
    child_line = await _echo_through_child(world, f"{host}.trap.test:{world.echo}")
    assert (child_line["via"], child_line["address"]) == (via, "127.0.0.1")
    parent_line = await world.parent.access(since=mark, target=f"127.0.0.1:{world.echo}")
    assert parent_line["outcome"] == "ok"


@pytest.mark.parametrize(("host", "via"), [("s5auth", "s5auth"), ("httpauth", "webauth")])
async def test_chain_through_a_second_ipv4proxy_with_credentials(
    world: World, host: str, via: str
) -> None:
    mark = world.auth_parent.mark()
    assert (await _echo_through_child(world, f"{host}.trap.test:{world.echo}"))["via"] == via
    line = await world.auth_parent.access(since=mark, target=f"127.0.0.1:{world.echo}")
    assert line["outcome"] == "ok"
    assert PASSWORD not in "\n".join(world.child.logs() + world.auth_parent.logs())


async def test_parent_given_by_name_is_resolved_a_only(world: World) -> None:
    assert (await _echo_through_child(world, f"named.trap.test:{world.echo}"))["via"] == "named"


async def test_unmatched_destination_goes_direct(world: World) -> None:
    mark = world.parent.mark()
    assert (await _echo_through_child(world, f"v4.test:{world.echo}"))["via"] == "direct"
    assert world.parent.wait_for_line(lambda line: "tunnel client=" in line, 0.2, mark) is None


async def test_port_rule_limits_a_domain_rule(world: World) -> None:
    assert (await _echo_through_child(world, f"g.wa.trap.test:{world.echo}"))["via"] == "wa"
    # Another port of the same name is not in the rule: direct, and refused by the port.
    tunnel, reply = await http_connect(world.child.port, f"g.wa.trap.test:{world.refused}")
    assert reply.status == 502
    assert "parent" not in reply.body_text
    await tunnel.close()


def _socks5_request_in(record: bytes, port: int) -> bool:
    literal = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big")
    return literal in record and b"trap.test" not in record


@pytest.mark.parametrize(("host", "authenticated"), [("ms", False), ("msauth", True)])
async def test_chain_through_microsocks_with_and_without_credentials(
    world: World, server_loop: LoopThread, host: str, authenticated: bool
) -> None:
    relay = world.auth_relay if authenticated else world.relay
    before = len(relay.received)
    assert (await _echo_through_child(world, f"{host}.trap.test:{world.echo}"))["via"] == host
    records = [bytes(r) for r in relay.received[before:]]
    assert len(records) == 1
    assert _socks5_request_in(records[0], world.echo), records[0]
    assert (USER.encode() + b"\x06" + PASSWORD.encode() in records[0]) is authenticated


async def test_wrong_credentials_name_the_parent_not_the_password(world: World) -> None:
    tunnel, reply = await http_connect(world.child.port, f"msbad.trap.test:{world.echo}")
    await tunnel.close()
    assert reply.status == 502
    assert "parent msbad" in reply.body_text
    assert "wrong-pw" not in reply.body_text
    line = await world.child.access(client=tunnel.client, after=tunnel.opened)
    assert "wrong-pw" not in str(line)


async def test_parent_refusal_is_answered_like_a_direct_refusal(world: World) -> None:
    tunnel, reply = await http_connect(world.child.port, f"s5.trap.test:{world.refused}")
    await tunnel.close()
    assert reply.status == 502
    assert reply.body_text.startswith(f"connect to s5.trap.test:{world.refused} via parent s5 ")
    assert f"parent s5 (127.0.0.1:{world.parent.port}) refused" in reply.body_text
    line = await world.child.access(client=tunnel.client, after=tunnel.opened)
    assert line["outcome"] == "ECONNREFUSED"
    tunnel5, reply5 = await socks5_request(world.child.port, "s5.trap.test", world.refused)
    await tunnel5.close()
    assert reply5.code == 0x05
    tunnel4, reply4 = await socks4_connect(world.child.port, "s5.trap.test", world.refused)
    await tunnel4.close()
    assert reply4.code == 0x5B


async def test_a_down_parent_is_skipped_for_the_next(world: World) -> None:
    assert (await _echo_through_child(world, f"failover.trap.test:{world.echo}"))["via"] == "s5b"


async def test_every_parent_down_names_each_and_never_goes_direct(world: World) -> None:
    tunnel, reply = await http_connect(world.child.port, f"down.trap.test:{world.echo}")
    await tunnel.close()
    assert reply.status == 502
    assert "parent deadA" in reply.body_text
    assert "parent deadB" in reply.body_text
    line = await world.child.access(client=tunnel.client, after=tunnel.opened)
    assert line["outcome"] == "ECONNREFUSED"
