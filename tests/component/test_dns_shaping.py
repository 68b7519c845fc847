"""DNS mode's shaping, in-process with real sockets on loopback: a name with several A
records is answered with the address that connects (docs/dns-mode.md, "Names with several
A records"). The lab (tests/lab) shows what this does for Node clients.

The upstream answers ``several.test`` with A 127.0.0.2, 127.0.0.3, 127.0.0.4 (TTL 300) and
``one.test`` with 127.0.0.3 alone. Only 127.0.0.3 listens on the race port: the others
refuse at once.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from collections.abc import AsyncIterator, Sequence

import dns.asyncquery
import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from helpers.wire import WIRE_SECONDS
from ipv4proxy import doctor
from ipv4proxy.config import load
from ipv4proxy.metrics import Metrics
from ipv4proxy.net.breaker import Endpoint
from ipv4proxy.net.dialer import Dialer
from ipv4proxy.net.dnslisten import DnsListener
from ipv4proxy.net.dnsshaper import Shaper
from ipv4proxy.policy import Policy
from ipv4proxy.protocols import dnsrewrite

GOOD = "127.0.0.3"
SEVERAL = ("127.0.0.2", GOOD, "127.0.0.4")
UPSTREAM_TTL = 300
SHAPE_TTL = 20


class _Upstream(asyncio.DatagramProtocol):
    """A nameserver on 127.0.0.1: several.test, one.test; NXDOMAIN otherwise."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.asked = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.DatagramTransport, transport)  # uvloop's too

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        query = dns.message.from_wire(data)
        self.asked += 1
        response = dns.message.make_response(query)
        name = query.question[0].name
        records = {"several.test.": SEVERAL, "one.test.": (GOOD,)}.get(name.to_text().lower())
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif query.question[0].rdtype == dns.rdatatype.A:
            response.answer.append(
                dns.rrset.from_text_list(name, UPSTREAM_TTL, "IN", "A", list(records))
            )
        assert self.transport is not None
        self.transport.sendto(response.to_wire(want_shuffle=False), addr)


class _Service:
    """The race port on 127.0.0.3: counts the connections it accepts."""

    def __init__(self) -> None:
        self.accepted = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[_Upstream, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        _Upstream, local_addr=("127.0.0.1", 0)
    )
    yield protocol, transport.get_extra_info("sockname")[1]
    transport.close()


@pytest.fixture
async def service() -> AsyncIterator[tuple[_Service, int]]:
    counted = _Service()
    server = await asyncio.start_server(counted.handle, GOOD, 0)
    yield counted, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def _config(upstream_port: int, port: int, mode: str = "one", names: str = "") -> str:
    names = names or f"'*.test:{port}'"
    return (
        f"dns: {{listen: ['127.0.0.1:0'], upstreams: ['127.0.0.1:{upstream_port}'], "
        f"shape: {mode}, shape_names: [{names}], shape_ttl: {SHAPE_TTL}, "
        "shape_race_timeout: 2}\n"
        "policy: {allow_cidrs: ['127.0.0.0/8']}\n"
        "resolver: {hosts_file: /dev/null, resolv_conf: /dev/null}"
    )


async def _started(text: str, dialer: Dialer | None = None) -> tuple[DnsListener, int, Metrics]:
    config = load(text)
    metrics = Metrics()
    own = dialer or Dialer(config.dialer)
    policy = Policy(config)
    listener = DnsListener(config, metrics, dialer=lambda: own, policy=lambda: policy)
    (_, port), *_ = await listener.start()
    return listener, port, metrics


async def _ask(port: int, name: str = "several.test") -> tuple[list[str], int]:
    answer = await dns.asyncquery.udp(
        dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=WIRE_SECONDS
    )
    rrsets = [r for r in answer.answer if r.rdtype == dns.rdatatype.A]
    return ([rd.to_text() for rd in rrsets[0]] if rrsets else []), (rrsets[0].ttl if rrsets else 0)


def _count(metrics: Metrics, name: str, label: str) -> float:
    key = "outcome" if "races" in name else "source"
    return metrics.registry.get_sample_value(name, {key: label}) or 0.0


async def test_one_address_known_to_work_and_one_race_for_many_queries(
    upstream: tuple[_Upstream, int], service: tuple[_Service, int]
) -> None:
    counted, port = service
    listener, dns_port, metrics = await _started(_config(upstream[1], port))
    try:
        answers = await asyncio.gather(*(_ask(dns_port) for _ in range(5)))
        cached = await _ask(dns_port)
    finally:
        await listener.close()
    assert {tuple(a) for a, _ in answers} == {(GOOD,)}
    assert {ttl for _, ttl in answers} == {SHAPE_TTL}
    assert cached[0] == [GOOD]
    assert 0 < cached[1] <= SHAPE_TTL
    # Five concurrent queries, one race, one connection to the good address.
    assert _count(metrics, "ipv4proxy_dns_shape_races_total", "won") == 1
    assert counted.accepted == 1
    assert _count(metrics, "ipv4proxy_dns_shaped_total", "race") == 5


async def test_first_puts_the_good_one_first_and_leaves_the_failed_ones_out(
    upstream: tuple[_Upstream, int], service: tuple[_Service, int]
) -> None:
    """127.0.0.2 refused in the race (left out); 127.0.0.4 was never tried (the good one
    won first): not known bad, so it stays, after the good one."""
    listener, dns_port, _ = await _started(_config(upstream[1], service[1], mode="first"))
    try:
        addresses, ttl = await _ask(dns_port)
    finally:
        await listener.close()
    assert addresses == [GOOD, "127.0.0.4"]
    assert ttl == SHAPE_TTL


async def test_the_dialers_last_good_address_answers_at_once_and_is_verified(
    upstream: tuple[_Upstream, int], service: tuple[_Service, int]
) -> None:
    """The memory answers the first query with no wait; a race in the background checks
    it, and its result (fresher than the memory, which has no age) answers the next one:
    an address that died since the proxy's own tunnel went there is not served for long."""
    config = load(_config(upstream[1], service[1]))
    dialer = Dialer(config.dialer)
    dialer.memory.connected("several.test", "127.0.0.4")  # the proxy's own tunnel went there
    listener, dns_port, metrics = await _started(_config(upstream[1], service[1]), dialer)
    try:
        first, _ = await _ask(dns_port)
        for _ in range(200):  # bounded: the background race ends within the race timeout
            if _count(metrics, "ipv4proxy_dns_shape_races_total", "won") == 1:
                break
            await asyncio.sleep(0.02)
        listener.cache = type(listener.cache)(100, asyncio.get_running_loop().time, 300, 300)
        again, _ = await _ask(dns_port)
    finally:
        await listener.close()
    assert first == ["127.0.0.4"]  # 127.0.0.4 refuses now: the memory is stale
    assert _count(metrics, "ipv4proxy_dns_shaped_total", "memory") == 1
    assert _count(metrics, "ipv4proxy_dns_shape_races_total", "won") == 1
    assert again == [GOOD]
    assert service[0].accepted == 1


async def test_a_name_the_race_cannot_reach_is_answered_unshaped_with_a_log_line(
    upstream: tuple[_Upstream, int],
    service: tuple[_Service, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The good address's breaker is open (the proxy's tunnels failed there): the race is
    among the two others, which refuse; the client gets the upstream's answer as it came."""
    config = load(_config(upstream[1], service[1]))
    dialer = Dialer(config.dialer)
    for _ in range(config.dialer.breaker_failures):
        dialer.breaker.failure(Endpoint(GOOD, service[1]))
    listener, dns_port, metrics = await _started(_config(upstream[1], service[1]), dialer)
    caplog.set_level(logging.WARNING, "ipv4proxy.dns")
    try:
        first = await _ask(dns_port)
        listener.cache = type(listener.cache)(100, asyncio.get_running_loop().time, 300, 300)
        again = await _ask(dns_port)  # not cached: the failed race is remembered
    finally:
        await listener.close()
    assert first == (list(SEVERAL), UPSTREAM_TTL)
    assert again == first
    assert _count(metrics, "ipv4proxy_dns_shape_races_total", "failed") == 1
    lines = [r.getMessage() for r in caplog.records if "dns_shape_unreachable" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "qname=several.test" in lines[0]
    assert "127.0.0.2: ECONNREFUSED" in lines[0]
    assert "outcome=unshaped" in lines[0]


async def test_names_not_listed_and_single_records_are_left_alone(
    upstream: tuple[_Upstream, int], service: tuple[_Service, int]
) -> None:
    text = _config(upstream[1], service[1], names=f"'only.example:{service[1]}'")
    listener, dns_port, metrics = await _started(text)
    try:
        several = await _ask(dns_port)
        one = await _ask(dns_port, "one.test")
    finally:
        await listener.close()
    assert several == (list(SEVERAL), UPSTREAM_TTL)
    assert one == ([GOOD], UPSTREAM_TTL)
    assert _count(metrics, "ipv4proxy_dns_shape_races_total", "won") == 0


async def test_doctor_shows_the_shaped_answer_next_to_the_upstreams(
    upstream: tuple[_Upstream, int], service: tuple[_Service, int]
) -> None:
    listener, dns_port, _ = await _started(_config(upstream[1], service[1]))
    try:
        text = _config(upstream[1], service[1]).replace("127.0.0.1:0", f"127.0.0.1:{dns_port}")
        line = await doctor._ask_listener(load(text), "several.test")
        single = await doctor._ask_listener(load(text), "one.test")
    finally:
        await listener.close()
    assert line == (
        f"127.0.0.1:{dns_port}: A {GOOD} (shaped; the upstream's: {', '.join(SEVERAL)}); "
        "AAAA none (NOERROR, 0 records)"
    )
    assert single == f"127.0.0.1:{dns_port}: A {GOOD}; AAAA none (NOERROR, 0 records)"


class _FakeDialer:
    """The dialer's read-only views and a race that answers ``winner`` (no sockets)."""

    def __init__(self, winner: str) -> None:
        self.winner = winner
        self.races = 0

    def last_good(self, name: str) -> str | None:
        return None

    def breaker_open(self, address: str, port: int) -> bool:
        return False

    async def race(
        self, name: str, addresses: Sequence[str], port: int, seconds: float
    ) -> tuple[str | None, tuple[tuple[str, OSError], ...]]:
        self.races += 1
        await asyncio.sleep(0)
        return self.winner, ()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_stale_result_is_served_while_one_background_race_refreshes_it() -> None:
    config = load(_config(53, 443))
    clock = _Clock()
    fake = _FakeDialer(GOOD)
    policy = Policy(config)
    shaper = Shaper(config, Metrics(), lambda: fake, lambda: policy, clock)  # type: ignore[arg-type, return-value]
    query = dns.message.make_query("several.test", "A")
    question = dnsrewrite.parse_query(query.to_wire())
    assert question is not None

    async def ask() -> list[str]:
        response = dns.message.make_response(query)
        response.answer.append(
            dns.rrset.from_text_list("several.test.", UPSTREAM_TTL, "IN", "A", list(SEVERAL))
        )
        wire = await shaper.shape(question, response.to_wire(want_shuffle=False))
        return [rd.to_text() for rd in dns.message.from_wire(wire).answer[0]]

    assert await ask() == [GOOD]
    clock.now += SHAPE_TTL - 1
    assert await ask() == [GOOD]
    assert fake.races == 1  # fresh: no race
    fake.winner = "127.0.0.4"  # the good address moved
    clock.now += 1
    assert await ask() == [GOOD]  # stale: served at once, a refresh started
    for _ in range(100):  # bounded: the background race ends within a few loop turns
        if not shaper._races:
            break
        await asyncio.sleep(0)
    assert fake.races == 2
    assert await ask() == ["127.0.0.4"]
    clock.now += UPSTREAM_TTL
    assert await ask() == ["127.0.0.4"]  # expired: a new race, waited for
    assert fake.races == 3
    shaper.close()
