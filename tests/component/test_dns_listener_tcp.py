"""The DNS listener's TCP side, in-process: a trickle of bytes does not keep a connection
alive, and closing the listener drops the connections it still has."""

from __future__ import annotations

import asyncio

import pytest

from helpers.wire import WIRE_SECONDS
from ipv4proxy.config import load
from ipv4proxy.metrics import Metrics
from ipv4proxy.net import dnslisten
from ipv4proxy.net.dnslisten import DnsListener

IDLE = 0.3


def _listener() -> DnsListener:
    config = load(
        "dns: {listen: ['127.0.0.1:0'], upstreams: ['127.0.0.1:9']}\n"
        "resolver: {hosts_file: /dev/null, resolv_conf: /dev/null}"
    )
    return DnsListener(config, Metrics())


async def test_a_trickle_of_bytes_does_not_hold_a_tcp_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One byte at a time, each well within the idle time, never a whole query: the
    connection is closed once the idle time has passed since it opened."""
    monkeypatch.setattr(dnslisten, "_TCP_IDLE", IDLE)
    listener = _listener()
    (_, port), *_ = await listener.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        closed = False
        for _ in range(40):  # 40 x IDLE/4: far past the idle time, bounded
            try:
                writer.write(b"\x00")
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            if reader.at_eof() or writer.transport.is_closing():
                closed = True
                break
            try:
                async with asyncio.timeout(IDLE / 4):
                    if await reader.read(1) == b"":
                        closed = True
                        break
            except TimeoutError:
                pass
        writer.close()
        assert closed
        assert not listener._tcp_clients
    finally:
        await listener.close()


async def test_close_drops_open_tcp_connections() -> None:
    listener = _listener()
    (_, port), *_ = await listener.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(50):  # bounded wait until the listener has the connection
        if listener._tcp_clients:
            break
        await asyncio.sleep(0.02)
    assert len(listener._tcp_clients) == 1
    await listener.close()
    async with asyncio.timeout(WIRE_SECONDS):
        assert await reader.read(1) == b""
    writer.close()
    for _ in range(50):
        if not listener._tcp_clients:
            break
        await asyncio.sleep(0.02)
    assert not listener._tcp_clients
