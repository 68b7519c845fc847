"""The server in this process with the embedded defaults, and a listener's ``clients``:
what is refused, and that a refused address costs no slot."""

from __future__ import annotations

import asyncio
import logging

import pytest

from helpers.wire import (
    WIRE_SECONDS,
    http_connect,
    open_tunnel_socket,
)
from ipv4proxy.config import load
from ipv4proxy.net.resolver import Resolver
from ipv4proxy.policy import Policy
from ipv4proxy.server import Proxy


async def test_default_policy_refuses_loopback_and_odd_ports() -> None:
    """The embedded defaults, in-process (the test proxies open loopback on purpose)."""
    # The status answer names the rule; by default a refused CONNECT is reset instead.
    config = load(
        "listeners: ['127.0.0.1:0']\nresolver: {hosts_file: /dev/null}\n"
        "http: {connect_failure: status}"
    )
    proxy = Proxy(config, Resolver(config.resolver), Policy(config))
    (_, port), *_ = await proxy.start()
    try:
        for authority, rule in (
            ("127.0.0.1:443", "special range loopback"),
            ("169.254.169.254:80", "link-local (cloud metadata)"),
            ("10.0.0.1:22", "port 22 is not in policy.ports"),
        ):
            tunnel, reply = await http_connect(port, authority)
            await tunnel.close()
            assert reply.status == 403, reply
            assert rule in reply.body_text, reply
    finally:
        await proxy.close()


async def test_client_outside_the_listener_cidrs_is_closed_at_accept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused address is closed at once, before any byte, and never takes a slot: with
    every slot's worth of refused sockets held open, the allowed client still gets in."""
    slots = 20
    config = load(
        "listeners: [{host: 127.0.0.1, port: 0, clients: [127.0.0.2/32]}]\n"
        f"limits: {{max_connections: {slots}}}\n"
        "log: {refusals_per_second: 7}\n"
        "resolver: {hosts_file: /dev/null}"
    )
    caplog.set_level(logging.INFO, logger="ipv4proxy.access")
    proxy = Proxy(config, Resolver(config.resolver), Policy(config))
    (_, port), *_ = await proxy.start()
    refused = []
    try:
        for _ in range(slots * 5):
            refused.append(await open_tunnel_socket(port))
        for tunnel in refused:  # closed by the proxy with no reply, before any byte is sent
            assert await tunnel.read_to_eof() == b""
        assert (proxy.connections, proxy.per_client) == (0, {})
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.2", 0)
        )
        writer.write(b"\x05\x01\x00")
        async with asyncio.timeout(WIRE_SECONDS):
            answer = await reader.readexactly(2)
        writer.close()
        assert answer == b"\x05\x00"  # 127.0.0.2 is in the list: the greeting is accepted
    finally:
        for tunnel in refused:
            await tunnel.close()
        await proxy.close()  # logs the summary of the window still open
    # The log took its budget of refusal lines; the rest are one count (per window).
    lines = [r.getMessage() for r in caplog.records if r.name == "ipv4proxy.access"]
    denied = [line for line in lines if line.startswith("tunnel ") and "outcome=DENIED" in line]
    counted = [
        int(line.rsplit("count=", 1)[1])
        for line in lines
        if line.startswith("refusals-suppressed outcome=DENIED")
    ]
    assert 7 <= len(denied) < slots * 5
    assert len(denied) + sum(counted) == slots * 5
