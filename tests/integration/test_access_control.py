"""Credential and policy refusals through real proxies, and the client allowlist.

Auth: HTTP 407 with Proxy-Authenticate, SOCKS5 RFC 1929 failure, SOCKS4 0x5B; the right
credentials (from the config and from a mounted users file) open tunnels; no password
reaches the log. Policy: a name whose DNS answer is a refused address is 403 / 0x02 /
0x5B with the rule named; the proxy's own address is refused; denied domains never reach
the resolver. After each refusal a normal tunnel still works.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import pytest
from python_socks import ProxyError as SocksProxyError
from python_socks.async_.asyncio import Proxy as SocksProxy

from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.servers import TestServers
from helpers.wire import (
    WIRE_SECONDS,
    http_connect,
    open_tunnel_socket,
    socks4_connect,
    socks5_request,
)

PASSWORD = "s3cret-Pa55"
FILE_PASSWORD = "from-the-secret"


def _basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}\r\n"


@pytest.fixture(scope="module")
def auth_proxy(
    proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    users = tmp_path_factory.mktemp("secret") / "users"
    users.write_text(f"# a mounted Secret\nbob:{FILE_PASSWORD}\n")
    process = proxy_factory(("--auth-users", f"alice:{PASSWORD}", "--auth-users-file", str(users)))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def policy_proxy(
    proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """rebind.test "resolves" (hosts file) to 127.0.0.9, inside a denied network."""
    hosts = tmp_path_factory.mktemp("hosts") / "hosts"
    hosts.write_text("127.0.0.9 rebind.test\n127.0.0.1 fine.test\n")
    process = proxy_factory(
        (
            "--hosts-file",
            str(hosts),
            "--policy-deny-cidrs",
            "127.0.0.8/29",
            "--policy-deny-domains",
            "*.denied.test",
        )
    )
    yield process
    process.stop()


async def _echo_through(proxy: ProxyProcess, servers: TestServers, extra_head: str = "") -> None:
    tunnel, reply = await http_connect(
        proxy.port, f"v4.test:{servers.echo_port}", extra_head=extra_head
    )
    try:
        assert reply.status == 200, reply
        tunnel.writer.write(b"ok?")
        assert await tunnel.read_exactly(3) == b"ok?"
    finally:
        await tunnel.close()


# --- credentials --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra_head", "reason"),
    [
        ("", "proxy authentication required"),
        (_basic("alice", "wrong"), "proxy authentication failed"),
        (_basic("mallory", PASSWORD), "proxy authentication failed"),
        ("Proxy-Authorization: Bearer abc\r\n", "proxy authentication required"),
    ],
    ids=["missing", "wrong-password", "unknown-user", "other-scheme"],
)
async def test_http_without_good_credentials_is_407(
    auth_proxy: ProxyProcess, servers: TestServers, extra_head: str, reason: str
) -> None:
    tunnel, reply = await http_connect(
        auth_proxy.port, f"v4.test:{servers.echo_port}", extra_head=extra_head
    )
    await tunnel.close()
    assert reply.status == 407, reply
    assert reply.headers.get("proxy-authenticate") == 'Basic realm="ipv4proxy"', reply
    assert reason in reply.body_text
    fields = await auth_proxy.access(client=tunnel.client, after=tunnel.opened)
    assert fields["outcome"] == "AUTH_REQUIRED", fields
    await _echo_through(auth_proxy, servers, _basic("alice", PASSWORD))


async def test_http_with_credentials_from_config_and_file(
    auth_proxy: ProxyProcess, servers: TestServers
) -> None:
    await _echo_through(auth_proxy, servers, _basic("alice", PASSWORD))
    await _echo_through(auth_proxy, servers, _basic("bob", FILE_PASSWORD))


async def test_socks5_auth(auth_proxy: ProxyProcess, servers: TestServers) -> None:
    # No-auth only: no acceptable method.
    tunnel = await open_tunnel_socket(auth_proxy.port)
    tunnel.writer.write(b"\x05\x01\x00")
    assert await tunnel.read_exactly(2) == b"\x05\xff"
    await tunnel.close()
    # Wrong password: the RFC 1929 failure status, then the connection is closed.
    tunnel = await open_tunnel_socket(auth_proxy.port)
    tunnel.writer.write(b"\x05\x01\x02\x01\x05alice\x05wrong")
    assert await tunnel.read_exactly(4) == b"\x05\x02\x01\x01"
    assert await tunnel.read_to_eof() == b""
    await tunnel.close()
    fields = await auth_proxy.access(client=tunnel.client, after=tunnel.opened)
    assert fields["outcome"] == "AUTH_REQUIRED", fields
    # python-socks with the right and the wrong credentials.
    good = SocksProxy.from_url(f"socks5://bob:{FILE_PASSWORD}@127.0.0.1:{auth_proxy.port}")
    async with asyncio.timeout(WIRE_SECONDS):
        sock = await good.connect("v4.test", servers.echo_port)
    sock.close()
    bad = SocksProxy.from_url(f"socks5://bob:nope@127.0.0.1:{auth_proxy.port}")
    with pytest.raises(SocksProxyError):
        async with asyncio.timeout(WIRE_SECONDS):
            await bad.connect("v4.test", servers.echo_port)
    await _echo_through(auth_proxy, servers, _basic("alice", PASSWORD))


async def test_socks4_cannot_authenticate(auth_proxy: ProxyProcess, servers: TestServers) -> None:
    tunnel, reply = await socks4_connect(auth_proxy.port, "v4.test", servers.echo_port, user=b"bob")
    await tunnel.close()
    assert reply.code == 0x5B
    fields = await auth_proxy.access(client=tunnel.client, after=tunnel.opened)
    assert fields["outcome"] == "AUTH_REQUIRED", fields
    assert "SOCKS4 cannot carry a password" in fields["reason"], fields


async def test_no_password_in_the_log(auth_proxy: ProxyProcess, servers: TestServers) -> None:
    await _echo_through(auth_proxy, servers, _basic("alice", PASSWORD))
    text = "\n".join(auth_proxy.logs())
    assert PASSWORD not in text
    assert FILE_PASSWORD not in text
    assert base64.b64encode(f"alice:{PASSWORD}".encode()).decode() not in text


# --- destinations -------------------------------------------------------------------------


async def test_dns_answer_cannot_smuggle_a_denied_address(
    policy_proxy: ProxyProcess, servers: TestServers
) -> None:
    tunnel, reply = await http_connect(policy_proxy.port, f"rebind.test:{servers.echo_port}")
    await tunnel.close()
    assert reply.status == 403, reply
    assert "policy.deny_cidrs[0] 127.0.0.8/29" in reply.body_text
    fields = await policy_proxy.access(client=tunnel.client, after=tunnel.opened)
    assert fields["outcome"] == "DENIED", fields
    assert "policy.deny_cidrs[0]" in fields["reason"], fields
    s5, s5_reply = await socks5_request(policy_proxy.port, "rebind.test", servers.echo_port)
    await s5.close()
    assert s5_reply.code == 0x02
    s4, s4_reply = await socks4_connect(policy_proxy.port, "rebind.test", servers.echo_port)
    await s4.close()
    assert s4_reply.code == 0x5B
    literal, literal_reply = await http_connect(policy_proxy.port, "127.0.0.9:443")
    await literal.close()
    assert literal_reply.status == 403, literal_reply
    await _echo_through(policy_proxy, servers)


async def test_denied_domain_and_own_address(
    policy_proxy: ProxyProcess, servers: TestServers
) -> None:
    tunnel, reply = await http_connect(policy_proxy.port, f"x.denied.test:{servers.echo_port}")
    await tunnel.close()
    assert reply.status == 403, reply
    assert "policy.deny_domains[0] *.denied.test" in reply.body_text
    own, own_reply = await http_connect(policy_proxy.port, f"127.0.0.1:{policy_proxy.port}")
    await own.close()
    assert own_reply.status == 403, own_reply
    assert "own listen address" in own_reply.body_text
    await _echo_through(policy_proxy, servers)
