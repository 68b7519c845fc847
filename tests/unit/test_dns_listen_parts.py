"""The DNS listener's pure parts: the rate limiter, the answer cache and the loop check."""

from __future__ import annotations

from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from helpers.clock import Clock
from ipv4proxy.config import DnsConfig, load
from ipv4proxy.errors import ConfigError
from ipv4proxy.net.dnslisten import AnswerCache, TokenBuckets, effective_upstreams, loop_problem
from ipv4proxy.protocols import dnsrewrite


def test_token_bucket_allows_a_burst_then_refills_with_time() -> None:
    clock = Clock()
    buckets = TokenBuckets(5, clock)
    assert [buckets.allow("a") for _ in range(6)] == [True] * 5 + [False]
    assert buckets.allow("b")  # another client has its own bucket
    clock.now += 0.2  # one token back
    assert buckets.allow("a")
    assert not buckets.allow("a")
    clock.now += 100  # never more than the burst
    assert [buckets.allow("a") for _ in range(6)] == [True] * 5 + [False]


def test_token_buckets_are_bounded_in_number() -> None:
    buckets = TokenBuckets(1, Clock(), max_keys=3)
    for index in range(10):
        buckets.allow(f"10.0.0.{index}")
    assert len(buckets) == 3


def _question(name: str, qtype: str, **kwargs: object) -> dnsrewrite.Question:
    query = dns.message.make_query(name, qtype, **kwargs)  # type: ignore[arg-type]
    parsed = dnsrewrite.parse_query(query.to_wire())
    assert parsed is not None
    return parsed


def _answer(question: dnsrewrite.Question, *lines: str, rcode: int = 0) -> bytes:
    response = dns.message.make_response(question.message)
    response.set_rcode(dns.rcode.Rcode(rcode))
    for line in lines:
        rrset = dns.rrset.from_text(*line.split(maxsplit=4))  # type: ignore[arg-type]
        target = response.authority if " SOA " in line else response.answer
        target.append(rrset)
    return bytes(response.to_wire())


def test_cache_counts_ttls_down_with_the_clock() -> None:
    clock = Clock()
    cache = AnswerCache(10, clock, max_ttl=3600, negative_max_ttl=300)
    question = _question("www.example.", "A")
    cache.put(question, _answer(question, "www.example. 60 IN A 192.0.2.1"))
    clock.now += 25.5
    again = _question("WWW.example.", "A")
    wire = cache.get(again)
    assert wire is not None
    message = dns.message.from_wire(wire)
    assert message.id == again.message.id
    assert message.answer[0].ttl == 35
    clock.now += 35
    assert cache.get(again) is None  # expired


def test_cache_keeps_negative_answers_for_the_soa_minimum() -> None:
    clock = Clock()
    cache = AnswerCache(10, clock, max_ttl=3600, negative_max_ttl=300)
    question = _question("gone.example.", "A")
    soa = "example. 600 IN SOA ns.example. h.example. 1 7200 900 1209600 40"
    cache.put(question, _answer(question, soa, rcode=dns.rcode.NXDOMAIN))
    clock.now += 39
    wire = cache.get(question)
    assert wire is not None
    message = dns.message.from_wire(wire)
    assert message.rcode() == dns.rcode.NXDOMAIN
    assert message.authority[0].ttl == 600 - 39
    clock.now += 1
    assert cache.get(question) is None


def test_cache_skips_what_must_not_be_kept() -> None:
    cache = AnswerCache(10, Clock(), max_ttl=3600, negative_max_ttl=300)
    question = _question("x.example.", "A")
    cache.put(question, _answer(question, rcode=dns.rcode.SERVFAIL))
    cache.put(question, _answer(question, rcode=dns.rcode.NXDOMAIN))  # no SOA: no TTL
    cache.put(question, _answer(question, "x.example. 0 IN A 192.0.2.1"))
    assert len(cache) == 0
    truncated = dns.message.from_wire(_answer(question, "x.example. 60 IN A 192.0.2.1"))
    truncated.flags |= dns.flags.TC
    cache.put(question, truncated.to_wire())
    assert len(cache) == 0


def test_cache_keys_apart_edns_do_and_cd_and_drops_stale_options() -> None:
    clock = Clock()
    cache = AnswerCache(10, clock, max_ttl=3600, negative_max_ttl=300)
    with_edns = _question("www.example.", "A", use_edns=0)
    response = dns.message.make_response(with_edns.message)
    response.use_edns(
        0, 0, 1232, options=[dns.edns.GenericOption(dns.edns.OptionType.NSID, b"nsid")]
    )
    response.answer.append(dns.rrset.from_text("www.example.", 60, "IN", "A", "192.0.2.1"))
    cache.put(with_edns, response.to_wire())
    assert cache.get(_question("www.example.", "A")) is None  # no EDNS: another entry
    assert cache.get(_question("www.example.", "A", want_dnssec=True)) is None
    hit = cache.get(_question("www.example.", "A", use_edns=0))
    assert hit is not None
    message = dns.message.from_wire(hit)
    assert message.edns == 0
    assert not message.options


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = AnswerCache(2, Clock(), max_ttl=3600, negative_max_ttl=300)
    questions = [_question(f"n{i}.example.", "A") for i in range(3)]
    for question in questions:
        cache.put(question, _answer(question, f"{question.name} 60 IN A 192.0.2.1"))
    assert len(cache) == 2
    assert cache.get(questions[0]) is None


def test_max_ttl_caps_a_long_ttl() -> None:
    clock = Clock()
    cache = AnswerCache(10, clock, max_ttl=10, negative_max_ttl=300)
    question = _question("www.example.", "A")
    cache.put(question, _answer(question, "www.example. 86400 IN A 192.0.2.1"))
    clock.now += 10
    assert cache.get(question) is None


@pytest.mark.parametrize(
    ("listen", "upstreams", "loops"),
    [
        (["127.0.0.1:53"], [("127.0.0.1", 53)], True),
        (["127.0.0.1:53"], [("127.0.0.1", 5353)], False),
        (["127.0.0.1:53"], [("10.96.0.10", 53)], False),
        (["0.0.0.0:53"], [("127.0.0.53", 53)], True),
        (["0.0.0.0:53"], [("10.0.0.5", 53)], True),  # this host's own address
        (["0.0.0.0:53"], [("10.96.0.10", 53)], False),
    ],
)
def test_loop_problem_names_dns_upstreams(
    listen: list[str], upstreams: list[tuple[str, int]], loops: bool
) -> None:
    problem = loop_problem(DnsConfig(listen=tuple(listen)), upstreams, {"10.0.0.5"})
    assert (problem is not None) == loops
    if problem:
        assert "dns.upstreams" in problem


def test_effective_upstreams_prefer_dns_then_resolver_then_resolv_conf(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\nnameserver ::1\n")
    listen = "dns: {listen: ['127.0.0.1:53']"
    text = f"resolver: {{resolv_conf: {resolv}}}\n{listen}}}\n"
    assert effective_upstreams(load(text)) == (("127.0.0.1", 53),)  # IPv6 skipped
    text = f"resolver: {{resolv_conf: {resolv}, nameservers: [10.0.0.2:5300]}}\n{listen}}}\n"
    assert effective_upstreams(load(text)) == (("10.0.0.2", 5300),)
    text = f"resolver: {{resolv_conf: {resolv}}}\n{listen}, upstreams: [10.96.0.10]}}\n"
    assert effective_upstreams(load(text)) == (("10.96.0.10", 53),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dns: {listen: ['[::1]:53']}", "IPv6"),
        ("dns: {listen: ['nope']}", "HOST:PORT"),
        ("dns: {upstreams: ['dns.example']}", "IPv4 address"),
        ("dns: {client_rate: 0}", ">= 1"),
        ("dns: {max_in_flight: 0}", "1-10000"),
        ("dns: {clients: ['10.0.0.0/33']}", "dns.clients"),
    ],
)
def test_bad_dns_settings_are_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="dns\\.") as info:
        load(text)
    assert message in str(info.value)


def test_cache_is_bounded_in_bytes_as_well_as_in_answers() -> None:
    clock = Clock()
    questions = [_question(f"n{i}.example.", "A") for i in range(3)]
    answers = [_answer(q, f"n{i}.example. 60 IN A 192.0.2.{i}") for i, q in enumerate(questions)]
    size = len(answers[0])
    cache = AnswerCache(10, clock, max_ttl=3600, negative_max_ttl=300, max_bytes=2 * size + 1)
    for question, wire in zip(questions, answers, strict=True):
        cache.put(question, wire)
    assert cache.bytes <= 2 * size + 1
    assert len(cache) == 2
    assert cache.get(questions[0]) is None  # the least recently used went first
    assert cache.get(questions[2]) is not None
    cache.put(questions[0], answers[0] + b"\0" * (3 * size))  # over the whole budget
    assert cache.get(questions[0]) is None
