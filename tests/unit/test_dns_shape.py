"""The choice of DNS mode's shaping (protocols/dnsshape.py): which address a name with
several A records is answered with, on a fake clock; and the rewrite of the answer."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers.clock import Clock
from ipv4proxy.protocols import dnsshape
from ipv4proxy.protocols.dnsshape import Choice, Choices, Known, ShapeRule

A, B, C = "192.0.2.1", "192.0.2.2", "192.0.2.3"
ADDRESSES = (A, B, C)


# --- rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("*", ShapeRule("*", 443)),
        ("*:5222", ShapeRule("*", 5222)),
        ("*.WhatsApp.net.", ShapeRule("*.whatsapp.net", 443)),
        ("web.whatsapp.com:443", ShapeRule("web.whatsapp.com", 443)),
    ],
)
def test_parse_rule(text: str, rule: ShapeRule) -> None:
    assert dnsshape.parse_rule(text) == rule


@pytest.mark.parametrize("text", ["*:0", "*:70000", "*:https", "a.*.net", "", "*.*", "*.:443"])
def test_parse_rule_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        dnsshape.parse_rule(text)


def test_port_for_first_match_wins() -> None:
    rules = tuple(map(dnsshape.parse_rule, ["chat.example:5222", "*.example:8443", "*:443"]))
    assert dnsshape.port_for(rules, "chat.example") == 5222
    assert dnsshape.port_for(rules, "example") == 8443
    assert dnsshape.port_for(rules, "media.example") == 8443
    assert dnsshape.port_for(rules, "other.test") == 443
    assert dnsshape.port_for(rules[:2], "other.test") is None
    assert dnsshape.port_for(rules[:2], "notexample") is None


# --- the choice -----------------------------------------------------------------------------


def test_a_fresh_race_result_then_memory_then_a_stale_race_result() -> None:
    """The dialer's memory has no age: a fresh race (which tried it too) outranks it; it
    outranks a stale race result."""
    remembered = Choice(B, frozenset({A}), "race")
    assert dnsshape.decide(ADDRESSES, Known(last_good=C), remembered) == remembered
    stale = dnsshape.decide(ADDRESSES, Known(last_good=C), remembered, stale=True)
    assert stale == Choice(C, frozenset(), "memory")
    assert dnsshape.decide(ADDRESSES, Known(last_good=C), None) == stale
    assert dnsshape.decide(ADDRESSES, Known(), remembered, stale=True) == remembered


def test_memory_with_an_open_breaker_is_passed_over() -> None:
    known = Known(last_good=C, open=frozenset({C}))
    remembered = Choice(B, frozenset({A}), "race")
    assert dnsshape.decide(ADDRESSES, known, remembered, stale=True) == Choice(
        B, frozenset({A, C}), "race"
    )
    # With nothing remembered, a race decides (among A and B).
    assert dnsshape.decide(ADDRESSES, known, None) is None


def test_memory_not_in_the_answer_is_passed_over() -> None:
    assert dnsshape.decide(ADDRESSES, Known(last_good="198.51.100.1"), None) is None


def test_remembered_race_result_is_used_while_in_the_answer() -> None:
    remembered = Choice(B, frozenset({A}), "race")
    assert dnsshape.decide(ADDRESSES, Known(), remembered) == remembered
    # The upstream no longer lists it (a CDN moved): a new race.
    assert dnsshape.decide((A, C), Known(), remembered) is None
    # Its breaker opened since (the proxy's own tunnels failed there): a new race.
    assert dnsshape.decide(ADDRESSES, Known(open=frozenset({B})), remembered) is None


def test_a_failed_race_leaves_the_name_unshaped_until_it_runs_again() -> None:
    failed = dnsshape.race_choice(None, [A, B, C], Known())
    assert dnsshape.decide(ADDRESSES, Known(), failed) == failed
    assert dnsshape.shaped_addresses(ADDRESSES, failed, "one") == ADDRESSES


def test_only_one_address_without_an_open_breaker_needs_no_race() -> None:
    known = Known(open=frozenset({A, C}))
    assert dnsshape.decide(ADDRESSES, known, None) == Choice(B, frozenset({A, C}), "breaker")


def test_every_breaker_open_leaves_the_answer_unshaped() -> None:
    known = Known(open=frozenset(ADDRESSES))
    choice = dnsshape.decide(ADDRESSES, known, None)
    assert choice is not None
    assert choice.good is None
    assert dnsshape.shaped_addresses(ADDRESSES, choice, "one") == ADDRESSES


def test_nothing_known_needs_a_race() -> None:
    assert dnsshape.decide(ADDRESSES, Known(), None) is None


def test_race_choice_counts_failures_and_open_breakers_as_bad() -> None:
    choice = dnsshape.race_choice(C, [A], Known(open=frozenset({B})))
    assert choice == Choice(C, frozenset({A, B}), "race")


# --- one / first ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("one", (B,)), ("first", (B, C)), ("off", ADDRESSES)],
)
def test_modes(mode: str, expected: tuple[str, ...]) -> None:
    choice = Choice(B, frozenset({A}), "race")
    assert dnsshape.shaped_addresses(ADDRESSES, choice, mode) == expected


@given(
    st.lists(st.sampled_from([f"192.0.2.{i}" for i in range(1, 9)]), min_size=2, unique=True),
    st.data(),
)
def test_shaped_addresses_are_the_good_one_first_and_never_a_bad_one(
    addresses: list[str], data: st.DataObject
) -> None:
    good = data.draw(st.sampled_from(addresses))
    bad = frozenset(data.draw(st.lists(st.sampled_from(addresses)))) - {good}
    choice = Choice(good, bad, "race")
    one = dnsshape.shaped_addresses(addresses, choice, "one")
    first = dnsshape.shaped_addresses(addresses, choice, "first")
    assert one == (good,)
    assert first[0] == good
    assert set(first) == set(addresses) - bad
    assert [a for a in addresses if a in first[1:]] == list(first[1:])  # DNS order kept


# --- remembered race results on a fake clock ------------------------------------------------


def test_choices_fresh_then_stale_then_gone() -> None:
    clock = Clock()
    choices = Choices(clock, fresh=30)
    choice = Choice(B, frozenset(), "race")
    choices.put("name.test", choice, lifetime=300)
    assert choices.get("name.test") == (choice, False)
    clock.now += 29.9
    assert choices.get("name.test") == (choice, False)
    clock.now += 0.1
    assert choices.get("name.test") == (choice, True)  # stale: refresh, still used
    choices.touch("name.test")
    assert choices.get("name.test") == (choice, False)
    clock.now += 300
    assert choices.get("name.test") == (None, False)
    assert len(choices) == 0


def test_choices_a_short_upstream_ttl_is_still_remembered_for_fresh() -> None:
    """An upstream TTL of 0 or 5 s must not make every query race."""
    clock = Clock()
    choices = Choices(clock, fresh=30)
    choices.put("name.test", Choice(A), lifetime=0)
    clock.now += 29
    assert choices.get("name.test") == (Choice(A), False)
    clock.now += 1
    assert choices.get("name.test") == (None, False)


def test_choices_are_bounded() -> None:
    choices = Choices(Clock(), fresh=30, size=3)
    for i in range(5):
        choices.put(f"n{i}.test", Choice(A), lifetime=60)
    assert len(choices) == 3
    assert choices.get("n0.test") == (None, False)
    assert choices.get("n4.test")[0] == Choice(A)


# --- the answer -----------------------------------------------------------------------------


def _answer(
    name: str = "multi.test.", addresses: tuple[str, ...] = ADDRESSES, ttl: int = 300
) -> dns.message.Message:
    query = dns.message.make_query(name, "A", use_edns=0)
    query.flags |= dns.flags.CD
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    response.answer.append(dns.rrset.from_text("alias.test.", 600, "IN", "CNAME", name))
    response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", "A", list(addresses)))
    response.question = [
        dns.rrset.RRset(dns.name.from_text("Alias.Test."), dns.rdataclass.IN, dns.rdatatype.A)
    ]
    return response


def test_a_records_of_a_cname_chain() -> None:
    found = dnsshape.a_records(_answer())
    assert found == dnsshape.Answer("alias.test", ADDRESSES, 300)


def test_a_records_not_worth_shaping() -> None:
    assert dnsshape.a_records(_answer(addresses=(A,))) is None
    nx = _answer()
    nx.set_rcode(dns.rcode.NXDOMAIN)
    assert dnsshape.a_records(nx) is None
    cut = _answer()
    cut.flags |= dns.flags.TC
    assert dnsshape.a_records(cut) is None
    other = dns.message.make_response(dns.message.make_query("multi.test.", "MX"))
    assert dnsshape.a_records(other) is None


def test_shape_keeps_everything_but_the_a_records_and_caps_their_ttl() -> None:
    original = _answer(ttl=300)
    flags, ident = original.flags, original.id
    shaped = dns.message.from_wire(dnsshape.shape(original, (C, A), ttl_cap=30))
    assert shaped.id == ident
    assert shaped.flags == flags
    assert shaped.question[0].name.to_text() == "Alias.Test."
    assert shaped.edns == 0
    cname, a = shaped.answer
    assert cname.rdtype == dns.rdatatype.CNAME
    assert cname.ttl == 600
    assert [rd.to_text() for rd in a] == [C, A]
    assert a.ttl == 30
    short = dns.message.from_wire(dnsshape.shape(_answer(ttl=5), (B,), ttl_cap=30))
    assert short.answer[1].ttl == 5
