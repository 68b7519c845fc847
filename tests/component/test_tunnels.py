"""The relay's registry of open tunnels: the idle sweep, the cut, the bytes each moved.
Each pump holds a real transport over a socket pair; the registry's clock is passed in."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from ipv4proxy.net.relay import Buffers, Tunnel, Tunnels

Made = tuple[Tunnel, asyncio.Transport, asyncio.Transport]
MakeTunnel = Callable[[], Coroutine[Any, Any, Made]]


@pytest.fixture
async def tunnel() -> AsyncIterator[MakeTunnel]:
    """Makes tunnels whose pumps hold transports of real sockets; closes them all after."""
    loop = asyncio.get_running_loop()
    made: list[asyncio.Transport] = []
    peers: list[socket.socket] = []

    async def transport() -> asyncio.Transport:
        ours, theirs = socket.socketpair()
        peers.append(theirs)
        made_transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        made.append(made_transport)
        return made_transport

    async def make() -> Made:
        result = Tunnel(lambda _: None, Buffers(1 << 20))
        client, upstream = await transport(), await transport()
        result.client.transport, result.upstream.transport = client, upstream
        return result, client, upstream

    yield make
    for each in made:
        each.abort()
    for peer in peers:
        peer.close()
    await asyncio.sleep(0)  # let the aborted transports finish closing


async def test_sweep_aborts_only_tunnels_idle_for_the_timeout(
    tunnel: MakeTunnel,
) -> None:
    tunnels = Tunnels()
    quiet, quiet_client, quiet_upstream = await tunnel()
    busy, busy_client, _ = await tunnel()
    tunnels.add(quiet, 0.0)
    tunnels.add(busy, 0.0)
    busy.client.received = 10
    assert tunnels.sweep(5.0, 10.0) == 0
    busy.upstream.received = 20
    assert tunnels.sweep(10.0, 10.0) == 1  # quiet since 0; busy moved at 10
    assert quiet.idle
    assert quiet_client.is_closing()
    assert quiet_upstream.is_closing()
    assert (busy.idle, busy_client.is_closing()) == (False, False)
    assert tunnels.sweep(11.0, 10.0) == 0  # aborted once
    assert (busy.sent, busy.received) == (10, 20)


async def test_remove_and_cut(tunnel: MakeTunnel) -> None:
    tunnels = Tunnels()
    first, first_client, _ = await tunnel()
    second, second_client, _ = await tunnel()
    tunnels.add(first, 0.0)
    tunnels.add(second, 0.0)
    assert len(tunnels) == 2
    assert tunnels.remove(first)
    assert not tunnels.remove(first)  # once
    assert first not in tunnels
    assert tunnels.cut() == 1
    assert (first_client.is_closing(), second_client.is_closing()) == (False, True)
    assert not second.idle  # a cut is not an idle timeout
