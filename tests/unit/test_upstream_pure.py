"""The pure parts of the upstream layer: DNS cache rules, breaker and memory, parent rules."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers.clock import Clock
from ipv4proxy.config import ParentConfig, load, redact_url
from ipv4proxy.errors import ConfigError, Failure
from ipv4proxy.net.breaker import Breaker, Endpoint, Memory
from ipv4proxy.net.dnscache import STALE_RECHECK, DnsCache, Entry
from ipv4proxy.net.parents import Parent, matching, parents_of
from ipv4proxy.net.resolver import negative_ttl
from ipv4proxy.rules import domain_matches

# --- DNS cache ----------------------------------------------------------------------------


def positive(expires: float, ttl: float = 100.0) -> Entry:
    return Entry(("192.0.2.1",), expires, ttl)


def test_entry_is_fresh_until_it_expires() -> None:
    cache = DnsCache(size=10, stale_window=50, prefetch=0.1)
    cache.put("a", positive(100))
    assert cache.fresh("a", 99.9) is not None
    assert cache.fresh("a", 100) is None


def test_prefetch_only_in_the_last_fraction_of_a_positive_ttl() -> None:
    cache = DnsCache(size=10, stale_window=50, prefetch=0.1)
    entry = positive(100, ttl=100)
    assert not cache.wants_prefetch(entry, 89.9)
    assert cache.wants_prefetch(entry, 90)
    negative = Entry((), 100, 100, failure=Failure.NXDOMAIN)
    assert not cache.wants_prefetch(negative, 99)
    assert not DnsCache(size=10, stale_window=50, prefetch=0).wants_prefetch(entry, 99)


def test_stale_window_and_recheck_timer() -> None:
    cache = DnsCache(size=10, stale_window=50, prefetch=0.1)
    cache.put("a", positive(100))
    cache.put("n", Entry((), 100, 100, failure=Failure.NXDOMAIN))
    assert cache.recently_failed("a", 101) is None  # no failure yet: ask DNS first
    assert cache.failed("a", 101) is not None
    assert cache.recently_failed("a", 101 + STALE_RECHECK - 0.1) is not None
    assert cache.recently_failed("a", 101 + STALE_RECHECK) is None
    assert cache.stale("a", 149.9) is not None
    assert cache.stale("a", 150) is None
    assert cache.failed("n", 101) is None  # negative answers are not served stale


@given(st.lists(st.sampled_from("abcdefgh"), max_size=60), st.integers(1, 5))
def test_cache_never_holds_more_than_its_size(names: list[str], size: int) -> None:
    cache = DnsCache(size=size, stale_window=0, prefetch=0)
    for name in names:
        cache.put(name, positive(10))
        assert len(cache) <= size
    if names:
        assert cache.fresh(names[-1], 0) is not None  # the latest is always kept


def _negative_response(soa_ttl: int, minimum: int, *, with_soa: bool = True) -> dns.message.Message:
    query = dns.message.make_query("x.example", "A")
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.NXDOMAIN)
    if with_soa:
        soa = f"ns.example. admin.example. 1 3600 600 86400 {minimum}"
        response.authority.append(
            dns.rrset.from_text("example.", soa_ttl, dns.rdataclass.IN, dns.rdatatype.SOA, soa)
        )
    return response


@pytest.mark.parametrize(
    ("soa_ttl", "minimum", "expected"), [(300, 60, 60.0), (30, 60, 30.0), (0, 60, 0.0)]
)
def test_negative_ttl_is_the_smaller_of_soa_ttl_and_minimum(
    soa_ttl: int, minimum: int, expected: float
) -> None:
    assert negative_ttl([_negative_response(soa_ttl, minimum)]) == expected


def test_negative_answer_without_soa_is_not_cached() -> None:
    assert negative_ttl([_negative_response(0, 0, with_soa=False)]) is None
    assert negative_ttl([]) is None


# --- breaker and memory -------------------------------------------------------------------

A1, B1 = Endpoint("192.0.2.1", 1), Endpoint("192.0.2.2", 1)


def test_breaker_opens_after_n_failures_then_half_opens_then_closes() -> None:
    clock = Clock(0.0)
    breaker = Breaker(threshold=3, cooldown=30, clock=clock)
    assert breaker.failure(A1) is False
    assert breaker.failure(A1) is False
    assert breaker.state(A1) == "closed"
    assert breaker.failure(A1) is True
    assert breaker.state(A1) == "open"
    assert breaker.select([A1, B1]) == [B1]
    clock.now = 30
    assert breaker.state(A1) == "half-open"
    assert breaker.select([A1, B1]) == [A1, B1]
    assert breaker.failure(A1) is True  # one failure when half-open opens it again
    assert breaker.state(A1) == "open"
    clock.now = 60
    assert breaker.success(A1) is True
    assert breaker.state(A1) == "closed"
    assert breaker.success(A1) is False


def test_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = Breaker(threshold=2, cooldown=30, clock=Clock(0.0))
    breaker.failure(A1)
    breaker.success(A1)
    assert breaker.failure(A1) is False


def test_when_every_address_is_open_all_are_tried() -> None:
    breaker = Breaker(threshold=1, cooldown=30, clock=Clock(0.0))
    breaker.failure(A1)
    breaker.failure(B1)
    assert breaker.select([A1, B1]) == [A1, B1]
    assert breaker.failure(A1) is False  # already open: the opening was reported once


@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, min_size=1), st.data())
def test_memory_puts_the_last_good_address_first(addresses: list[str], data: st.DataObject) -> None:
    memory = Memory()
    good = data.draw(st.sampled_from(addresses))
    memory.connected("name", good)
    ordered = memory.order("name", addresses)
    assert ordered[0] == good
    assert sorted(ordered) == sorted(addresses)
    assert memory.order("other", addresses) == addresses


def test_memory_ignores_an_address_the_name_no_longer_has() -> None:
    memory = Memory()
    memory.connected("name", "x")
    assert memory.order("name", ["a", "b"]) == ["a", "b"]


# --- parents ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("*.whatsapp.net", "g.whatsapp.net", True),
        ("*.whatsapp.net", "a.b.whatsapp.net", True),
        ("*.whatsapp.net", "whatsapp.net", False),
        ("*.whatsapp.net", "evilwhatsapp.net", False),
        ("whatsapp.com", "whatsapp.com", True),
        ("whatsapp.com", "web.whatsapp.com", False),
    ],
)
def test_domain_patterns(pattern: str, host: str, expected: bool) -> None:
    assert domain_matches(host, pattern) is expected


def _parents(*texts: str) -> tuple[Parent, ...]:
    return parents_of(load(flags={("parents",): list(texts)}).parents)


def test_rules_choose_parents_in_order() -> None:
    parents = _parents(
        "name=wa url=socks5://10.0.0.1:1080 domains=*.whatsapp.net ports=443;5222",
        "name=meta url=http://10.0.0.2:3128 cidrs=157.240.0.0/16",
        "name=backup url=socks4://10.0.0.3:1080 domains=*.whatsapp.net",
    )

    def labels(host: str, addresses: list[str], port: int) -> list[str]:
        return [p.label for p in matching(parents, host, addresses, port)]

    assert labels("g.whatsapp.net", ["192.0.2.1"], 443) == ["wa", "backup"]
    assert labels("g.whatsapp.net", ["192.0.2.1"], 80) == ["backup"]
    assert labels("example.com", ["192.0.2.1", "157.240.1.1"], 443) == ["meta"]
    assert labels("example.com", ["192.0.2.1"], 443) == []


def test_a_parent_without_rules_takes_everything() -> None:
    (parent,) = _parents("http://10.0.0.1:3128")
    assert parent.label == "10.0.0.1:3128"
    assert parent.matches("anything.example", ["192.0.2.1"], 1)


def test_credentials_are_decoded_and_never_printed() -> None:
    config = load(flags={("parents",): ["name=p url=socks5://us%40er:p%3Ass@10.0.0.1:1080"]})
    (parent,) = parents_of(config.parents)
    assert (parent.username, parent.password) == ("us@er", "p:ss")
    assert "p%3Ass" not in repr(config)
    assert "p:ss" not in repr(parent)
    assert redact_url("socks5://u:secret@h:1") == "socks5://u:***@h:1"
    assert redact_url("http://h:1") == "http://h:1"
    field = {f.name: f for f in ParentConfig.__dataclass_fields__.values()}["url"]
    assert field.metadata["secret"] is True


def test_parents_from_yaml_and_env() -> None:
    text = (
        "parents:\n"
        "  - name: corp\n"
        "    url: socks5://user:pw@proxy.corp.example:1080\n"
        "    domains: ['*.whatsapp.net']\n"
        "    ports: [443]\n"
    )
    (parent,) = load(text).parents
    assert parent.domains == ("*.whatsapp.net",)
    env = {"IPV4PROXY_PARENTS": "name=a url=http://10.0.0.1:1, name=b url=http://10.0.0.2:2"}
    assert [p.name for p in load(environ=env).parents] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("url=ftp://h:1", r"parents\[0\]\.url: expected a URL of scheme"),
        ("url=socks5://h", r"parents\[0\]\.url: expected SCHEME://"),
        ("url=socks5://[::1]:1080", r"parents\[0\]\.url: ::1 is IPv6"),
        ("url=socks5://u:topsecret@h:1/path", r"parents\[0\]\.url: expected no path"),
        ("name=x", r"parents\[0\]\.url: required"),
        ("url=http://h:1 cidrs=10.0.0.0/33", r"parents\[0\]\.cidrs: expected IPv4 networks"),
        ("url=http://h:1 domains=a*.b", r"parents\[0\]\.domains: expected a domain"),
        ("url=http://h:1 ports=0", r"parents\[0\]\.ports: expected ports within 1-65535"),
        ("url=http://h:1 junk", r"parents\[0\]: expected KEY=VALUE words"),
        ("name=a junk:topsecret", r"parents\[0\]: expected KEY=VALUE words"),
        ("socks5://u:topsecret@h:1 junk", r"parents\[0\]: expected KEY=VALUE words"),
    ],
)
def test_bad_parents_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load(flags={("parents",): [text]})
    assert "topsecret" not in str(caught.value)


def test_two_parents_with_one_name_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"parents\[1\]\.name: 'a' is used twice"):
        load(flags={("parents",): ["name=a url=http://h:1", "name=a url=http://h:2"]})


def test_the_docs_worked_example_loads() -> None:
    import re
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    block = re.search(r"```yaml\n(parents:.*?)```", docs, re.DOTALL)
    assert block is not None
    parents = parents_of(load(block[1]).parents)
    assert [p.label for p in parents] == ["corp", "corp-backup"]
    assert [p.label for p in matching(parents, "g.whatsapp.net", ["157.240.1.1"], 443)] == [
        "corp",
        "corp-backup",
    ]
    assert matching(parents, "example.com", ["93.184.216.34"], 443) == ()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        (("resolver", "prefetch"), "1", r"resolver\.prefetch: expected a fraction"),
        (
            ("resolver", "negative_max_ttl"),
            "-1",
            r"resolver\.negative_max_ttl: expected a number >= 0",
        ),
        (("resolver", "stale_window"), "-5", r"resolver\.stale_window: expected a number >= 0"),
        (("resolver", "cache_size"), "0", r"resolver\.cache_size: expected a number > 0"),
        (("dialer", "breaker_failures"), "0", r"dialer\.breaker_failures: expected a number > 0"),
        (("dialer", "breaker_cooldown"), "0", r"dialer\.breaker_cooldown: expected a number > 0"),
    ],
)
def test_bad_dns_and_breaker_settings_name_the_key(
    flag: tuple[str, ...], value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(flags={flag: value})


def test_dns_and_breaker_settings_have_all_three_spellings() -> None:
    env = {"IPV4PROXY_RESOLVER_STALE_WINDOW": "60", "IPV4PROXY_DIALER_BREAKER_FAILURES": "5"}
    config = load("resolver: {prefetch: 0}\n", env, {("dialer", "breaker_cooldown"): "9"})
    assert (config.resolver.prefetch, config.resolver.stale_window) == (0.0, 60.0)
    assert (config.dialer.breaker_failures, config.dialer.breaker_cooldown) == (5, 9.0)


def test_effective_configuration_shows_a_parent_without_its_password() -> None:
    from ipv4proxy.config import to_yaml

    config = load(flags={("parents",): ["name=p url=socks5://user:topsecret@10.0.0.1:1080"]})
    text = to_yaml(config)
    assert "topsecret" not in text
    assert "socks5://user:********@10.0.0.1:1080" in text


async def test_reload_keeps_the_dialer_memory_unless_its_settings_change() -> None:
    from ipv4proxy.config import Config, DialerConfig, ResolverConfig
    from ipv4proxy.net.resolver import Resolver
    from ipv4proxy.net.upstream import Upstream

    resolver = Resolver(ResolverConfig(resolv_conf="/dev/null"), hosts={})
    first = Upstream(Config(), resolver)
    with_parent = load(flags={("parents",): ["name=p url=http://10.0.0.1:3128"]})
    second = first.reconfigured(with_parent, resolver)
    assert second.dialer is first.dialer
    assert [p.label for p in second.parents] == ["p"]
    third = second.reconfigured(Config(dialer=DialerConfig(breaker_failures=9)), resolver)
    assert third.dialer is not first.dialer
    assert third.parents == ()
    await resolver.close()
