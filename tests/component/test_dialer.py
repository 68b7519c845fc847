"""The dialer against real sockets on loopback: refused ports, black holes, races."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator
from typing import cast

import pytest

from helpers.net import black_hole_beside_listener, loopback_listener
from ipv4proxy.config import DialerConfig
from ipv4proxy.errors import DialError, Failure, UpstreamTimeout
from ipv4proxy.net.breaker import Endpoint
from ipv4proxy.net.dialer import Dialer, dial

FAST = DialerConfig(attempt_delay=0.05, connect_timeout=2.0)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with loopback_listener() as sock:
        yield sock


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A loopback port that drops SYNs: backlog 0, its one queue slot taken."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port: int = sock.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    yield port
    filler.close()
    sock.close()


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def test_connects_to_the_only_address(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    sock, address = await dial(["127.0.0.1"], port, FAST)
    with sock:
        assert address == "127.0.0.1"
        assert sock.family == socket.AF_INET
        assert sock.getpeername() == ("127.0.0.1", port)


async def test_refused_names_the_address_and_errno() -> None:
    port = closed_port()
    with pytest.raises(DialError) as caught:
        await dial(["127.0.0.1"], port, FAST)
    assert caught.value.failure is Failure.REFUSED
    assert "127.0.0.1: ECONNREFUSED" in str(caught.value)
    assert [e.errno for _, e in caught.value.attempts] == [errno.ECONNREFUSED]


async def test_next_address_starts_at_once_after_a_refusal(listener: socket.socket) -> None:
    """Two refusing addresses, then a good one: a failure starts the next attempt at once."""
    port = listener.getsockname()[1]
    slow = DialerConfig(attempt_delay=30.0, connect_timeout=5.0)
    refusing = closed_port()
    assert refusing != port
    # 127.0.0.2 and .3 are loopback too, but nothing listens there on this port.
    sock, address = await dial(["127.0.0.2", "127.0.0.3", "127.0.0.1"], port, slow)
    with sock:
        assert address == "127.0.0.1"


async def test_black_hole_then_good_address_wins_the_race() -> None:
    hole, good = black_hole_beside_listener("127.0.0.2")  # same port, another loopback address
    with hole, good:
        sock, address = await dial(["127.0.0.1", "127.0.0.2"], hole.port, FAST)
        with sock:
            assert address == "127.0.0.2"


async def test_only_black_holes_time_out_naming_each(black_hole: int) -> None:
    config = DialerConfig(attempt_delay=0.05, connect_timeout=0.3)
    with pytest.raises(UpstreamTimeout) as caught:
        await dial(["127.0.0.1"], black_hole, config)
    assert caught.value.failure is Failure.TIMEOUT
    assert isinstance(caught.value, TimeoutError)
    assert "127.0.0.1: ETIMEDOUT" in str(caught.value)


async def test_cancelled_dial_leaves_no_task(black_hole: int) -> None:
    task = asyncio.create_task(dial(["127.0.0.1"], black_hole, FAST))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    others = [t for t in asyncio.all_tasks() if t.get_name().startswith("dial ")]
    assert others == []


async def test_rejects_anything_but_ipv4_literals() -> None:
    with pytest.raises(ValueError, match="octets"):
        await dial(["::1"], 80, FAST)


class Recording(asyncio.Protocol):
    """A protocol for Dialer.connect: what it saw, in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.seen: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.seen.append("made")

    def data_received(self, data: bytes) -> None:
        self.seen.append(f"data {data!r}")


async def test_dial_transport_makes_the_protocols_transport(listener: socket.socket) -> None:
    """The transport is the protocol's, connection_made has run when the dial returns, the
    dialer remembers the address; nothing is read before connection_made."""
    port = listener.getsockname()[1]
    dialer = Dialer(FAST)
    protocol = Recording()
    transport, _ = await dialer.connect("name.test", ["127.0.0.1"], port, protocol)
    try:
        assert protocol.transport is transport
        assert protocol.seen == ["made"]
        assert transport.get_extra_info("peername") == ("127.0.0.1", port)
        assert transport.get_extra_info("socket").family == socket.AF_INET
        assert dialer.memory.order("name.test", ["127.0.0.2", "127.0.0.1"])[0] == "127.0.0.1"
    finally:
        transport.close()


async def test_dial_transport_refused_names_the_errno_and_counts_for_the_breaker() -> None:
    port = closed_port()
    dialer = Dialer(DialerConfig(connect_timeout=2.0, breaker_failures=1))
    protocol = Recording()
    with pytest.raises(DialError) as caught:
        await dialer.connect("name.test", ["127.0.0.1"], port, protocol)
    assert caught.value.failure is Failure.REFUSED
    assert "connect to name.test:" in str(caught.value)
    assert "127.0.0.1: ECONNREFUSED" in str(caught.value)
    assert [e.errno for _, e in caught.value.attempts] == [errno.ECONNREFUSED]
    assert dialer.breaker.is_open(Endpoint("127.0.0.1", port))
    assert protocol.seen == []


async def test_dial_transport_black_hole_times_out_and_leaves_the_task_uncancelled(
    black_hole: int,
) -> None:
    dialer = Dialer(DialerConfig(connect_timeout=0.3))
    with pytest.raises(UpstreamTimeout) as caught:
        await dialer.connect("name.test", ["127.0.0.1"], black_hole, Recording())
    assert caught.value.failure is Failure.TIMEOUT
    assert "timed out after 0.3 s (127.0.0.1: ETIMEDOUT)" in str(caught.value)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # the timer's cancel was taken back


async def test_dial_transport_cancelled_from_outside_stays_cancelled(black_hole: int) -> None:
    """A cancel that is not the deadline's (the client left) is not turned into a timeout."""
    dialer = Dialer(FAST)
    protocol = Recording()
    task = asyncio.create_task(dialer.connect("name.test", ["127.0.0.1"], black_hole, protocol))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert protocol.seen == []
