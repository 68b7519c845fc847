"""The relay's registry of open tunnels: the idle sweep, the cut, the bytes each moved.
No sockets: the pumps' transports are stand-ins that record an abort."""

from __future__ import annotations

import asyncio
from typing import cast

from ipv4proxy.net.relay import Buffers, Tunnel, Tunnels


class Transport:
    """What the registry may do to a pump's transport: abort it."""

    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def tunnel() -> tuple[Tunnel, Transport, Transport]:
    made = Tunnel(lambda _: None, Buffers(1 << 20))
    client, upstream = Transport(), Transport()
    made.client.transport = cast(asyncio.Transport, client)
    made.upstream.transport = cast(asyncio.Transport, upstream)
    return made, client, upstream


def test_sweep_aborts_only_tunnels_idle_for_the_timeout() -> None:
    tunnels = Tunnels()
    quiet, quiet_client, quiet_upstream = tunnel()
    busy, busy_client, _ = tunnel()
    tunnels.add(quiet, 0.0)
    tunnels.add(busy, 0.0)
    busy.client.received = 10
    assert tunnels.sweep(5.0, 10.0) == 0
    busy.upstream.received = 20
    assert tunnels.sweep(10.0, 10.0) == 1  # quiet since 0; busy moved at 10
    assert (quiet.idle, quiet_client.aborted, quiet_upstream.aborted) == (True, True, True)
    assert (busy.idle, busy_client.aborted) == (False, False)
    assert tunnels.sweep(11.0, 10.0) == 0  # aborted once
    assert (busy.sent, busy.received) == (10, 20)


def test_remove_and_cut() -> None:
    tunnels = Tunnels()
    first, first_client, _ = tunnel()
    second, second_client, _ = tunnel()
    tunnels.add(first, 0.0)
    tunnels.add(second, 0.0)
    assert len(tunnels) == 2
    assert tunnels.remove(first)
    assert not tunnels.remove(first)  # once
    assert first not in tunnels
    assert tunnels.cut() == 1
    assert (first_client.aborted, second_client.aborted) == (False, True)
    assert not second.idle  # a cut is not an idle timeout
