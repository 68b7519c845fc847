"""The resolver's UDP socket pool and its in-flight cap, in process, against real sockets.

The nameservers are `helpers.dnsfake.ScriptedNameserver` threads on 127.0.0.1 (silent,
truncating, forging, or answering); the resolver is the proxy's own, so the sockets it
holds are counted exactly (`DnsClient.open_sockets`) and the source ports the server saw
show how many sockets carried the queries.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from helpers.clock import Clock
from helpers.dnsfake import ScriptedNameserver
from ipv4proxy.config import ResolverConfig
from ipv4proxy.errors import Failure, ResolveError
from ipv4proxy.net.dnsclient import SOCKETS_PER_SERVER, DnsClient
from ipv4proxy.net.resolver import Resolver

# Bounds for the waits below: polls of the event loop, and seconds.
_POLLS = 400
_POLL_SECONDS = 0.025


def make_resolver(
    *ports: int,
    outcomes: list[str] | None = None,
    clock: Clock | None = None,
    client: DnsClient | None = None,
    **settings: float,
) -> Resolver:
    # A long lifetime by default: on a loaded host a server thread may miss dnspython's 2 s
    # per-try timeout, and the lookup must then retry rather than fail the test.
    settings.setdefault("timeout", 30.0)
    config = ResolverConfig(
        nameservers=tuple(f"127.0.0.1:{port}" for port in ports),
        resolv_conf="/dev/null",
        hosts_file="/dev/null",
        **settings,  # type: ignore[arg-type]
    )
    hook = outcomes.append if outcomes is not None else (lambda result: None)
    return Resolver(
        config, hosts={}, on_lookup=hook, clock=clock or Clock(), client=client or DnsClient()
    )


async def until(condition: object, what: str) -> None:
    """Poll ``condition()`` on the event loop, bounded; fail naming ``what``."""
    for _ in range(_POLLS):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(_POLL_SECONDS)
    pytest.fail(f"not reached in {_POLLS * _POLL_SECONDS} s: {what}")


@pytest.fixture
def silent() -> Iterator[ScriptedNameserver]:
    with ScriptedNameserver("drop", answers={"kept.test": "127.0.0.5"}) as server:
        yield server


async def test_concurrent_lookups_share_a_few_sockets() -> None:
    with ScriptedNameserver("answer") as server:
        resolver = make_resolver(server.port)
        try:
            names = [f"n{i}.test" for i in range(60)]
            results = await asyncio.gather(*(resolver.lookup(name) for name in names))
            assert [r.name for r in results] == names
            assert {r.addresses for r in results} == {("127.0.0.1",)}
            assert resolver.client.open_sockets() <= SOCKETS_PER_SERVER
            assert 1 <= len(server.source_ports) <= SOCKETS_PER_SERVER
        finally:
            await resolver.close()
        assert resolver.client.open_sockets() == 0


async def test_sequential_lookups_reuse_one_socket() -> None:
    with ScriptedNameserver("answer") as server:
        resolver = make_resolver(server.port)
        try:
            for i in range(5):
                await resolver.lookup(f"seq{i}.test")
            assert len(server.source_ports) == 1
        finally:
            await resolver.close()


async def test_idle_sockets_are_closed() -> None:
    with ScriptedNameserver("answer") as server:
        client = DnsClient(idle_seconds=0.05)
        resolver = make_resolver(server.port, client=client)
        try:
            await asyncio.gather(*(resolver.lookup(f"idle{i}.test") for i in range(10)))
            assert client.open_sockets() >= 1
            await until(lambda: client.open_sockets() == 0, "idle sockets closed")
            await resolver.lookup("again.test")  # a new socket opens when needed
        finally:
            await resolver.close()


async def test_a_forged_id_is_ignored() -> None:
    """The decoy answer (another ID, another address) comes first; the real one wins."""
    with ScriptedNameserver("decoy") as server:
        resolver = make_resolver(server.port)
        try:
            assert (await resolver.lookup("real.test")).addresses == ("127.0.0.1",)
        finally:
            await resolver.close()


async def test_truncated_answer_is_asked_again_over_tcp() -> None:
    with ScriptedNameserver("truncate") as server:
        resolver = make_resolver(server.port)
        try:
            assert (await resolver.lookup("big.test")).addresses == ("127.0.0.1",)
        finally:
            await resolver.close()
        assert server.names["big.test"] >= 1  # more if a try timed out on a loaded host
        assert server.tcp_names["big.test"] == 1


async def test_a_closed_port_fails_over_to_the_next_server() -> None:
    """ICMP port unreachable on the pooled socket fails the query over, not out."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    alone = make_resolver(dead_port, timeout=30.0)
    try:
        # Refused, not timed out: the ICMP error reached the query on the shared socket.
        with pytest.raises(ResolveError, match="refused") as caught:
            await alone.lookup("nobody.test")
        assert caught.value.failure is Failure.DNS_FAILURE
    finally:
        await alone.close()
    with ScriptedNameserver("answer") as server:
        resolver = make_resolver(dead_port, server.port, timeout=30.0)
        try:
            for i in range(3):
                assert (await resolver.lookup(f"over{i}.test")).addresses == ("127.0.0.1",)
        finally:
            await resolver.close()


async def test_over_the_cap_a_lookup_fails_at_once(silent: ScriptedNameserver) -> None:
    outcomes: list[str] = []
    resolver = make_resolver(silent.port, outcomes=outcomes, max_in_flight=4, timeout=30.0)
    try:
        flights = [asyncio.create_task(resolver.lookup(f"wait{i}.test")) for i in range(4)]
        await until(lambda: silent.distinct_names() == 4, "four names asked")
        assert resolver.in_flight == 4
        # A fifth distinct name fails now, while the four still wait on the silent server.
        with pytest.raises(ResolveError) as caught:
            await resolver.lookup("fifth.test")
        assert caught.value.failure is Failure.DNS_BUSY
        assert "resolver.max_in_flight" in str(caught.value)
        assert not any(flight.done() for flight in flights)
        assert outcomes == ["busy"]
        # Asking again for a name in flight joins its lookup: no new slot, no refusal.
        joined = asyncio.create_task(resolver.lookup("wait0.test"))
        await asyncio.sleep(0)
        assert not joined.done()
        assert resolver.in_flight == 4
        assert resolver.client.open_sockets() <= SOCKETS_PER_SERVER
    finally:
        await resolver.close()
    assert resolver.in_flight == 0
    assert resolver.client.open_sockets() == 0
    assert all(flight.done() for flight in [*flights, joined])


async def test_over_the_cap_a_stale_answer_is_served(silent: ScriptedNameserver) -> None:
    outcomes: list[str] = []
    clock = Clock()
    resolver = make_resolver(
        silent.port, outcomes=outcomes, clock=clock, max_in_flight=2, timeout=30.0
    )
    try:
        assert (await resolver.lookup("kept.test")).addresses == ("127.0.0.5",)
        clock.now += 61  # past the 60 s TTL, inside the stale window
        flights = [asyncio.create_task(resolver.lookup(f"hold{i}.test")) for i in range(2)]
        await until(lambda: silent.distinct_names() == 3, "two names asked")
        assert (await resolver.lookup("kept.test")).addresses == ("127.0.0.5",)
        assert outcomes == ["miss", "stale"]
        assert not any(flight.done() for flight in flights)
    finally:
        await resolver.close()


async def test_lookups_time_out_and_the_slots_come_back(silent: ScriptedNameserver) -> None:
    outcomes: list[str] = []
    client = DnsClient(idle_seconds=0.05)
    resolver = make_resolver(
        silent.port, outcomes=outcomes, client=client, max_in_flight=3, timeout=0.3
    )
    try:
        results = await asyncio.gather(
            *(resolver.lookup(f"gone{i}.test") for i in range(6)), return_exceptions=True
        )
        failures = [r.failure for r in results if isinstance(r, ResolveError)]
        assert sorted(f.name for f in failures) == ["DNS_BUSY"] * 3 + ["DNS_FAILURE"] * 3
        assert resolver.in_flight == 0
        assert client.pending() == 0
        await until(lambda: client.open_sockets() == 0, "sockets closed after the storm")
        assert (await resolver.lookup("kept.test")).addresses == ("127.0.0.5",)
    finally:
        await resolver.close()
