"""Dialer memory and the circuit breaker against real sockets on loopback.

Refusing endpoints are bound-but-not-listening ports; black holes are listeners with a full
accept queue (`helpers.net`). The breaker's clock is a number the test moves; every
attempt is recorded by wrapping the real TCP connect, so "skipped" means "never dialled".
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from helpers.clock import Clock
from helpers.net import black_hole_beside_listener, loopback_listener
from ipv4proxy.config import DialerConfig
from ipv4proxy.errors import DialError, UpstreamTimeout
from ipv4proxy.net.breaker import Endpoint
from ipv4proxy.net.dialer import Dialer, tcp_connect

FAST = DialerConfig(
    attempt_delay=0.05, connect_timeout=0.5, breaker_failures=3, breaker_cooldown=30.0
)


class Recorder:
    """The real connect, with a list of the addresses it was asked for."""

    def __init__(self) -> None:
        self.tried: list[str] = []

    async def __call__(self, address: str, port: int) -> socket.socket:
        self.tried.append(address)
        return await tcp_connect(address, port)


@pytest.fixture
def good() -> Iterator[socket.socket]:
    """A listener on 127.0.0.1; the same port on 127.0.0.2 and .3 refuses."""
    with loopback_listener() as sock:
        yield sock


async def test_the_address_that_last_connected_goes_first(good: socket.socket) -> None:
    port = good.getsockname()[1]
    dialer = Dialer(DialerConfig(attempt_delay=5.0, connect_timeout=5.0), clock=Clock(0.0))
    first = Recorder()
    sock, address = await dialer.dial("n.test", ["127.0.0.2", "127.0.0.1"], port, connect=first)
    sock.close()
    assert (first.tried, address) == (["127.0.0.2", "127.0.0.1"], "127.0.0.1")
    again = Recorder()
    sock, address = await dialer.dial("n.test", ["127.0.0.2", "127.0.0.1"], port, connect=again)
    sock.close()
    assert (again.tried, address) == (["127.0.0.1"], "127.0.0.1")


async def test_refusing_address_opens_then_half_opens_then_closes(good: socket.socket) -> None:
    port = good.getsockname()[1]
    clock = Clock(0.0)
    dialer = Dialer(FAST, clock=clock)
    addresses = ["127.0.0.3", "127.0.0.1"]
    # Fresh names each time, so memory does not reorder and the breaker alone decides.
    for index in range(3):
        recorder = Recorder()
        sock, _ = await dialer.dial(f"n{index}.test", addresses, port, connect=recorder)
        sock.close()
        assert recorder.tried == addresses
    assert dialer.breaker.state(Endpoint("127.0.0.3", port)) == "open"

    skipped = Recorder()
    sock, _ = await dialer.dial("n3.test", addresses, port, connect=skipped)
    sock.close()
    assert skipped.tried == ["127.0.0.1"]

    clock.now += 30  # cooldown over: half-open, tried again, fails, open again
    retried = Recorder()
    sock, _ = await dialer.dial("n4.test", addresses, port, connect=retried)
    sock.close()
    assert retried.tried == addresses
    assert dialer.breaker.state(Endpoint("127.0.0.3", port)) == "open"

    clock.now += 30
    revived = socket.socket()
    revived.bind(("127.0.0.3", port))
    revived.listen(4)
    with revived:
        recorder = Recorder()
        sock, address = await dialer.dial("n5.test", addresses, port, connect=recorder)
        sock.close()
    assert address == "127.0.0.3"
    assert dialer.breaker.state(Endpoint("127.0.0.3", port)) == "closed"


async def test_black_hole_opens_and_then_costs_nothing() -> None:
    """A black hole listed first: three timeouts open it, then the next address is dialled
    at once instead of after a timeout."""
    clock = Clock(0.0)
    # The delay outlasts the timeout, so each race times out on the black hole alone.
    config = DialerConfig(
        attempt_delay=5.0, connect_timeout=0.3, breaker_failures=3, breaker_cooldown=30.0
    )
    dialer = Dialer(config, clock=clock)
    hole, alive = black_hole_beside_listener("127.0.0.2")
    with hole, alive:
        addresses = ["127.0.0.1", "127.0.0.2"]  # .1 drops SYNs, .2 accepts
        for index in range(3):
            with pytest.raises(UpstreamTimeout):
                await dialer.dial(f"h{index}.test", addresses, hole.port)
        assert dialer.breaker.state(Endpoint("127.0.0.1", hole.port)) == "open"
        recorder = Recorder()
        sock, address = await dialer.dial("h3.test", addresses, hole.port, connect=recorder)
        sock.close()
    assert (recorder.tried, address) == (["127.0.0.2"], "127.0.0.2")


async def test_a_name_whose_every_address_is_open_still_tries_them() -> None:
    clock = Clock(0.0)
    dialer = Dialer(DialerConfig(breaker_failures=1, connect_timeout=2.0), clock=clock)
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    with refusing:
        port = refusing.getsockname()[1]
        with pytest.raises(DialError):
            await dialer.dial("only.test", ["127.0.0.1"], port)
        assert dialer.breaker.state(Endpoint("127.0.0.1", port)) == "open"
        recorder = Recorder()
        with pytest.raises(DialError):
            await dialer.dial("only.test", ["127.0.0.1"], port, connect=recorder)
        assert recorder.tried == ["127.0.0.1"]
