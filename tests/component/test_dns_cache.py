"""The resolver's cache against a real DNS server whose answers change and stop mid-run.

DNS is real (UDP on loopback, `helpers.dnsserver`); only the cache's clock is a number the
test moves, so TTLs, negative TTLs and the stale window pass without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from helpers.clock import Clock
from helpers.dnsserver import DnsServer
from ipv4proxy.config import ResolverConfig
from ipv4proxy.errors import Failure, ResolveError
from ipv4proxy.net.resolver import Resolver


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer(soa_ttl=40, soa_minimum=20) as dns_server:
        yield dns_server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outcomes() -> list[str]:
    return []


def make_resolver(
    server: DnsServer, clock: Clock, outcomes: list[str], **settings: float
) -> Resolver:
    config = ResolverConfig(
        nameservers=(f"127.0.0.1:{server.port}",),
        resolv_conf="/dev/null",
        timeout=settings.pop("timeout", 1.0),
        **settings,  # type: ignore[arg-type]
    )
    return Resolver(config, clock=clock, hosts={}, on_lookup=outcomes.append)


@pytest.fixture
async def resolver(server: DnsServer, clock: Clock, outcomes: list[str]) -> AsyncIterator[Resolver]:
    made = make_resolver(server, clock, outcomes)
    yield made
    await made.close()


async def test_ttl_expiry_picks_up_the_new_address(
    server: DnsServer, clock: Clock, resolver: Resolver, outcomes: list[str]
) -> None:
    server.set("moving.test", "127.0.0.10", ttl=30)
    assert await resolver.resolve("moving.test") == ("127.0.0.10",)
    server.set("moving.test", "127.0.0.11", ttl=30)
    clock.now += 20  # before the last tenth of the TTL: a plain hit, no query
    assert await resolver.resolve("moving.test") == ("127.0.0.10",)
    assert server.count("moving.test") == 1
    clock.now += 10  # expired
    assert await resolver.resolve("moving.test") == ("127.0.0.11",)
    assert server.count("moving.test") == 2
    assert outcomes == ["miss", "hit", "miss"]
    assert server.count("moving.test", "AAAA") == 0


async def test_ttl_is_clamped_to_the_floor_and_ceiling(
    server: DnsServer, clock: Clock, outcomes: list[str]
) -> None:
    resolver = make_resolver(server, clock, outcomes, min_ttl=5.0, max_ttl=100.0, prefetch=0.0)
    try:
        server.set("zero.test", "127.0.0.10", ttl=0)
        server.set("long.test", "127.0.0.10", ttl=86400)
        await resolver.resolve("zero.test")
        await resolver.resolve("long.test")
        clock.now += 4.9
        await resolver.resolve("zero.test")
        assert server.count("zero.test") == 1  # the floor held it
        clock.now += 95.2
        await resolver.resolve("long.test")
        assert server.count("long.test") == 2  # the ceiling cut it
    finally:
        await resolver.close()


async def test_nxdomain_is_cached_for_the_soa_minimum_then_expires(
    server: DnsServer, clock: Clock, resolver: Resolver, outcomes: list[str]
) -> None:
    for _ in range(3):
        with pytest.raises(ResolveError) as caught:
            await resolver.resolve("later.test")
        assert caught.value.failure is Failure.NXDOMAIN
    assert server.count("later.test") == 1
    server.set("later.test", "127.0.0.12")
    clock.now += 19  # min(SOA TTL 40, MINIMUM 20) = 20 s (RFC 2308 section 5)
    with pytest.raises(ResolveError):
        await resolver.resolve("later.test")
    clock.now += 1
    assert await resolver.resolve("later.test") == ("127.0.0.12",)
    assert server.count("later.test") == 2
    assert outcomes == ["nxdomain"] * 4 + ["miss"]


async def test_nodata_is_cached_and_the_cap_applies(
    server: DnsServer, clock: Clock, outcomes: list[str]
) -> None:
    server.soa_minimum = 3600
    server.soa_ttl = 3600
    resolver = make_resolver(server, clock, outcomes, negative_max_ttl=10.0)
    try:
        server.set("v6.test")  # the name exists, with no A record
        with pytest.raises(ResolveError) as caught:
            await resolver.resolve("v6.test")
        assert caught.value.failure is Failure.NODATA
        clock.now += 9.9
        with pytest.raises(ResolveError):
            await resolver.resolve("v6.test")
        assert server.count("v6.test") == 1
        clock.now += 0.1  # the cap, not the SOA's hour
        with pytest.raises(ResolveError):
            await resolver.resolve("v6.test")
        assert server.count("v6.test") == 2
        assert outcomes == ["nodata"] * 3
    finally:
        await resolver.close()


async def test_dead_dns_server_serves_stale_until_the_window_ends(
    server: DnsServer,
    clock: Clock,
    outcomes: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    resolver = make_resolver(server, clock, outcomes, stale_window=600.0)
    try:
        server.set("kept.test", "127.0.0.13", ttl=30)
        assert await resolver.resolve("kept.test") == ("127.0.0.13",)
        server.stop()  # killed: its port now refuses every query
        clock.now += 31
        with caplog.at_level(logging.WARNING, logger="ipv4proxy.resolver"):
            assert await resolver.resolve("kept.test") == ("127.0.0.13",)
        assert any(
            "dns_stale" in r.getMessage() and "host=kept.test" in r.getMessage()
            for r in caplog.records
        ), caplog.text
        # RFC 8767 recheck timer: within 30 s the stale answer is served without a query.
        clock.now += 10
        assert await resolver.resolve("kept.test") == ("127.0.0.13",)
        clock.now += 600  # past expiry + the stale window
        with pytest.raises(ResolveError) as caught:
            await resolver.resolve("kept.test")
        assert caught.value.failure is Failure.DNS_FAILURE
        assert outcomes == ["miss", "stale", "stale", "error"]
        server.start()  # back on the same port: answers flow again
        assert await resolver.resolve("kept.test") == ("127.0.0.13",)
    finally:
        await resolver.close()


async def test_silent_dns_server_times_out_into_stale(
    server: DnsServer, clock: Clock, outcomes: list[str]
) -> None:
    resolver = make_resolver(server, clock, outcomes, timeout=0.3)
    try:
        server.set("quiet.test", "127.0.0.14", ttl=30)
        await resolver.resolve("quiet.test")
        server.silent = True
        clock.now += 31
        assert await resolver.resolve("quiet.test") == ("127.0.0.14",)
        assert outcomes[-1] == "stale"
        with pytest.raises(ResolveError, match="timed out"):
            await resolver.resolve("never-seen.test")
    finally:
        await resolver.close()


async def test_busy_name_is_prefetched_before_it_expires(
    server: DnsServer, clock: Clock, resolver: Resolver, outcomes: list[str]
) -> None:
    server.set("busy.test", "127.0.0.15", ttl=100)
    await resolver.resolve("busy.test")
    server.set("busy.test", "127.0.0.16", ttl=100)
    clock.now += 91  # in the last 10 % of the TTL: answered from cache, refreshed behind
    assert await resolver.resolve("busy.test") == ("127.0.0.15",)
    refresh = [t for t in asyncio.all_tasks() if t.get_name() == "dns busy.test"]
    assert len(refresh) == 1
    assert (await refresh[0]).addresses == ("127.0.0.16",)
    clock.now += 5  # the old entry would still be fresh; the refreshed one is served
    assert await resolver.resolve("busy.test") == ("127.0.0.16",)
    assert server.count("busy.test") == 2
    assert outcomes == ["miss", "hit", "hit"]


async def test_concurrent_lookups_share_one_query(
    server: DnsServer, resolver: Resolver, outcomes: list[str]
) -> None:
    server.set("crowd.test", "127.0.0.17")
    results = await asyncio.gather(*(resolver.resolve("crowd.test") for _ in range(20)))
    assert set(results) == {("127.0.0.17",)}
    assert server.count("crowd.test") == 1


async def test_cache_is_bounded_least_recently_used_first(
    server: DnsServer, clock: Clock, outcomes: list[str]
) -> None:
    resolver = make_resolver(server, clock, outcomes, cache_size=2)
    try:
        for name in ("a.test", "b.test", "c.test"):
            server.set(name, "127.0.0.18")
        await resolver.resolve("a.test")
        await resolver.resolve("b.test")
        await resolver.resolve("a.test")  # a is now the most recently used
        await resolver.resolve("c.test")  # evicts b
        await resolver.resolve("a.test")
        await resolver.resolve("b.test")
        assert (server.count("a.test"), server.count("b.test")) == (1, 2)
    finally:
        await resolver.close()


async def test_close_cancels_a_refresh_in_flight(
    server: DnsServer, clock: Clock, outcomes: list[str]
) -> None:
    resolver = make_resolver(server, clock, outcomes, timeout=5.0)
    server.set("slow.test", "127.0.0.19", ttl=100)
    await resolver.resolve("slow.test")
    server.silent = True
    clock.now += 95
    await resolver.resolve("slow.test")  # starts a refresh that will not be answered
    assert [t for t in asyncio.all_tasks() if t.get_name() == "dns slow.test"]
    await resolver.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "dns slow.test"]
