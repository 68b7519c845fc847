"""The DNS listener's rewrite (protocols/dnsrewrite.py): IPv6 addresses out, the rest as it came."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipv4proxy.protocols import dnsrewrite


def _query(name: str, qtype: str, **kwargs: object) -> dns.message.Message:
    return dns.message.make_query(name, qtype, **kwargs)  # type: ignore[arg-type]


def _response(
    query: dns.message.Message,
    answer: list[str] = (),  # type: ignore[assignment]
    authority: list[str] = (),  # type: ignore[assignment]
    additional: list[str] = (),  # type: ignore[assignment]
    rcode: int = dns.rcode.NOERROR,
) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.Rcode(rcode))
    for section, lines in (
        (response.answer, answer),
        (response.authority, authority),
        (response.additional, additional),
    ):
        for line in lines:
            section.append(dns.rrset.from_text(*line.split(maxsplit=4)))  # type: ignore[arg-type]
    return bytes(response.to_wire())


def _parsed(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire)


def _types(section: list[dns.rrset.RRset]) -> list[str]:
    return [dns.rdatatype.to_text(r.rdtype) for r in section]


SOA = "example. 300 IN SOA ns.example. host.example. 1 7200 900 1209600 60"


def test_aaaa_query_gets_nodata_with_the_cname_chain_and_the_soa() -> None:
    query = _query("www.example.", "AAAA")
    upstream = _response(
        query,
        answer=[
            "www.example. 60 IN CNAME edge.example.",
            "edge.example. 30 IN AAAA 2001:db8::1",
        ],
        authority=[SOA],
    )
    result = dnsrewrite.rewrite(query, upstream)
    answer = _parsed(result.wire)
    assert answer.rcode() == dns.rcode.NOERROR
    assert _types(answer.answer) == ["CNAME"]
    assert answer.answer[0].ttl == 60
    assert _types(answer.authority) == ["SOA"]
    assert answer.id == query.id
    assert result.aaaa_emptied
    assert not result.servfail


@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL, dns.rcode.REFUSED])
def test_aaaa_query_with_a_failure_rcode_is_passed_on_as_it_came(rcode: int) -> None:
    query = _query("gone.example.", "AAAA")
    upstream = _response(query, authority=[SOA], rcode=rcode)
    assert dnsrewrite.rewrite(query, upstream).wire == upstream


def test_an_answer_with_nothing_to_strip_is_the_upstream_bytes() -> None:
    query = _query("www.example.", "A", use_edns=0, want_dnssec=True)
    query.flags |= dns.flags.CD
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AD | dns.flags.CD
    response.use_edns(
        0, dns.flags.DO, 1232, options=[dns.edns.GenericOption(dns.edns.OptionType.NSID, b"ns-1")]
    )
    response.answer.append(dns.rrset.from_text("www.example.", 42, "IN", "A", "192.0.2.1"))
    upstream = bytes(response.to_wire())
    assert dnsrewrite.rewrite(query, upstream).wire == upstream


def test_any_and_other_answers_lose_aaaa_and_its_rrsig_only() -> None:
    query = _query("host.example.", "ANY", use_edns=0)
    upstream = _response(
        query,
        answer=[
            "host.example. 60 IN A 192.0.2.1",
            "host.example. 60 IN AAAA 2001:db8::1",
            "host.example. 60 IN RRSIG AAAA 13 2 60 20300101000000 20200101000000 1 example. AAAA",
            "host.example. 60 IN TXT hello",
        ],
        additional=["ns.example. 60 IN AAAA 2001:db8::53", "ns.example. 60 IN A 192.0.2.53"],
    )
    answer = _parsed(dnsrewrite.rewrite(query, upstream).wire)
    assert sorted(_types(answer.answer)) == ["A", "TXT"]
    assert _types(answer.additional) == ["A"]
    assert answer.edns == 0


@pytest.mark.parametrize("rdtype", ["HTTPS", "SVCB"])
def test_https_and_svcb_lose_only_ipv6hint(rdtype: str) -> None:
    query = _query("svc.example.", rdtype)
    upstream = _response(
        query,
        answer=[
            f"svc.example. 300 IN {rdtype} 1 . alpn=h2,h3 ipv4hint=192.0.2.1 key65000=hi "
            "ipv6hint=2001:db8::1,2001:db8::2",
            f"svc.example. 300 IN {rdtype} 2 alt.example. port=8443",
        ],
    )
    result = dnsrewrite.rewrite(query, upstream)
    answer = _parsed(result.wire)
    texts = sorted(rd.to_text() for rd in answer.answer[0])
    assert texts == [
        '1 . alpn="h2,h3" ipv4hint="192.0.2.1" key65000="hi"',
        '2 alt.example. port="8443"',
    ]
    assert answer.answer[0].ttl == 300
    assert result.hints_removed == 1


def test_ipv6hint_named_mandatory_leaves_mandatory_too() -> None:
    query = _query("svc.example.", "SVCB")
    upstream = _response(
        query,
        answer=[
            "svc.example. 60 IN SVCB 1 . mandatory=ipv6hint,port port=8443 ipv6hint=::1",
            "svc.example. 60 IN SVCB 2 . mandatory=ipv6hint ipv6hint=::1",
        ],
    )
    answer = _parsed(dnsrewrite.rewrite(query, upstream).wire)
    assert sorted(rd.to_text() for rd in answer.answer[0]) == [
        '1 . mandatory="port" port="8443"',
        "2 .",
    ]


def test_https_in_the_additional_section_is_rewritten_too() -> None:
    query = _query("www.example.", "A")
    upstream = _response(
        query,
        answer=["www.example. 60 IN A 192.0.2.1"],
        additional=["www.example. 60 IN HTTPS 1 . ipv6hint=::1"],
    )
    answer = _parsed(dnsrewrite.rewrite(query, upstream).wire)
    assert answer.additional[0][0].to_text() == "1 ."


@pytest.mark.parametrize(
    "upstream",
    [b"", b"\x00" * 11, b"garbage that is not dns at all", b"\xff" * 40],
)
def test_unparseable_upstream_bytes_give_servfail(upstream: bytes) -> None:
    query = _query("www.example.", "A")
    result = dnsrewrite.rewrite(query, upstream)
    assert result.servfail
    answer = _parsed(result.wire)
    assert answer.rcode() == dns.rcode.SERVFAIL
    assert answer.id == query.id
    assert query.is_response(answer)


def test_an_answer_to_another_question_gives_servfail() -> None:
    query = _query("www.example.", "A")
    other = _query("evil.example.", "A")
    other.id = query.id
    upstream = _response(other, answer=["evil.example. 60 IN A 192.0.2.66"])
    assert dnsrewrite.rewrite(query, upstream).servfail


def test_parse_query_keys_and_payload() -> None:
    plain = dnsrewrite.parse_query(_query("WWW.Example.", "AAAA").to_wire())
    assert plain is not None
    assert plain.key == ("www.example.", dns.rdatatype.AAAA, 1, False, False, False)
    assert plain.payload == 512
    assert plain.qtype_label == "AAAA"
    edns = dnsrewrite.parse_query(_query("x.example.", "TXT", use_edns=0, payload=4096).to_wire())
    assert edns is not None
    assert (edns.payload, edns.edns, edns.qtype_label) == (4096, True, "other")
    assert dnsrewrite.parse_query(b"\x00\x01") is None
    response = dns.message.make_response(_query("x.example.", "A"))
    assert dnsrewrite.parse_query(response.to_wire()) is None
    notify = _query("x.example.", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dnsrewrite.parse_query(notify.to_wire()) is None


def test_truncated_keeps_header_and_question_with_tc() -> None:
    query = _query("big.example.", "A")
    upstream = _response(query, answer=[f"big.example. 60 IN A 192.0.2.{i}" for i in range(60)])
    cut = _parsed(dnsrewrite.truncated(query, upstream))
    assert cut.flags & dns.flags.TC
    assert not cut.answer
    assert query.is_response(cut)


_RECORDS = st.sampled_from(
    [
        "n.example. 60 IN A 192.0.2.1",
        "n.example. 60 IN AAAA 2001:db8::1",
        "n.example. 60 IN CNAME m.example.",
        "n.example. 60 IN HTTPS 1 . ipv4hint=192.0.2.1 ipv6hint=::1",
        "n.example. 60 IN SVCB 0 target.example.",
        "n.example. 60 IN TXT hi",
        SOA,
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    qtype=st.sampled_from(["A", "AAAA", "HTTPS", "SVCB", "ANY", "TXT"]),
    answer=st.lists(_RECORDS, max_size=4),
    additional=st.lists(_RECORDS, max_size=3),
    cut=st.integers(0, 400),
    flip=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
)
def test_any_upstream_bytes_give_an_answer_or_servfail(
    qtype: str,
    answer: list[str],
    additional: list[str],
    cut: int,
    flip: list[tuple[int, int]],
) -> None:
    query = _query("n.example.", qtype, use_edns=0)
    wire = bytearray(_response(query, answer=answer, additional=additional))
    for position, value in flip:
        if position < len(wire):
            wire[position] = value
    mangled = bytes(wire[: max(cut, 12)] if cut < len(wire) else wire)
    result = dnsrewrite.rewrite(query, mangled)
    reply = _parsed(result.wire)  # always well formed
    assert reply.id == query.id
    if result.servfail:
        assert reply.rcode() == dns.rcode.SERVFAIL
    else:
        assert query.is_response(reply)
        for section in (reply.answer, reply.additional):
            assert dns.rdatatype.AAAA not in [r.rdtype for r in section]
            for rrset in section:
                if rrset.rdtype in (dns.rdatatype.HTTPS, dns.rdatatype.SVCB):
                    assert all("ipv6hint" not in rd.to_text() for rd in rrset)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_random_bytes_never_crash(data: bytes) -> None:
    query = _query("n.example.", "AAAA")
    result = dnsrewrite.rewrite(query, query.id.to_bytes(2, "big") + data)
    assert _parsed(result.wire).id == query.id
