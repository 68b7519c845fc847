"""What the DNS listener answers: an upstream response with every IPv6 address taken out.

Job: given the client's query and the upstream's response (wire bytes, the response's ID
already the client's), return the bytes the client gets. Pure: no sockets, no clock;
dnspython parses and builds the messages.

Rules (docs/dns-mode.md):
- An AAAA query that the upstream answered NOERROR gets NOERROR with no AAAA record
  (NODATA): the CNAME chain stays in the answer, the authority section stays as it came
  (the zone's SOA when the upstream gave one, so RFC 2308 negative caching works).
  NXDOMAIN, SERVFAIL and every other rcode are passed on as they came.
- Every other answer loses its AAAA RRsets (and their RRSIGs) in the answer and additional
  sections; HTTPS and SVCB records (types 65 and 64) lose only their ``ipv6hint``
  parameter (and its mention in ``mandatory``).
- Nothing else changes. When there is nothing to take out, the upstream's bytes are returned
  unchanged (ID, flags with CD/AD, EDNS0 OPT and its options, TTLs, compression).
- A response that does not parse, or does not answer the query (QR, opcode, question),
  gives SERVFAIL to the client: never an exception.
"""

from __future__ import annotations

import dataclasses

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset
from dns.rdtypes.svcbbase import MandatoryParam, ParamKey, SVCBBase

__all__ = [
    "QTYPE_LABELS",
    "Question",
    "Rewritten",
    "answered",
    "parse_query",
    "refused",
    "rewrite",
    "servfail",
    "truncated",
]

# The qtype label of the metrics: a bounded set.
QTYPE_LABELS = ("A", "AAAA", "HTTPS", "SVCB", "ANY", "other")

_AAAA = dns.rdatatype.AAAA
_SVCB_TYPES = (dns.rdatatype.SVCB, dns.rdatatype.HTTPS)
_HEADER = 12


@dataclasses.dataclass(frozen=True, slots=True)
class Question:
    """A client's parsed query: what the cache key and the log line need."""

    message: dns.message.Message
    name: str
    qtype: int
    qclass: int
    edns: bool
    do: bool
    cd: bool
    # The largest UDP answer the client takes (512 without EDNS).
    payload: int

    @property
    def qtype_label(self) -> str:
        text = dns.rdatatype.to_text(self.qtype)  # type: ignore[arg-type]
        return text if text in QTYPE_LABELS else "other"

    @property
    def key(self) -> tuple[str, int, int, bool, bool, bool]:
        return (self.name.lower(), self.qtype, self.qclass, self.edns, self.do, self.cd)


@dataclasses.dataclass(frozen=True, slots=True)
class Rewritten:
    """The bytes for the client and what was done to them (for the metrics)."""

    wire: bytes
    aaaa_emptied: bool = False
    hints_removed: int = 0
    servfail: bool = False


def parse_query(wire: bytes) -> Question | None:
    """The client's query, or None when it is not one (not parseable, a response, not a
    standard QUERY: no NOTIFY or UPDATE is forwarded, no question or more than one)."""
    try:
        message = dns.message.from_wire(wire)
    except Exception:  # any bad query is dropped, whatever dnspython raises
        return None
    if (
        message.flags & dns.flags.QR
        or message.opcode() != dns.opcode.QUERY
        or len(message.question) != 1
    ):
        return None
    rrset = message.question[0]
    edns = message.edns >= 0
    return Question(
        message=message,
        name=rrset.name.to_text(),
        qtype=int(rrset.rdtype),
        qclass=int(rrset.rdclass),
        edns=edns,
        do=bool(message.ednsflags & dns.flags.DO),
        cd=bool(message.flags & dns.flags.CD),
        payload=max(512, message.payload) if edns else 512,
    )


def _answer_to(query: dns.message.Message, rcode: int) -> bytes:
    """A header-and-question answer to ``query`` with ``rcode``, its EDNS echoed bare."""
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.Rcode(rcode))
    return response.to_wire()


def servfail(query: dns.message.Message) -> bytes:
    return _answer_to(query, dns.rcode.SERVFAIL)


def refused(query: dns.message.Message) -> bytes:
    return _answer_to(query, dns.rcode.REFUSED)


def truncated(query: dns.message.Message, response: bytes) -> bytes:
    """``response`` cut to its header and question with TC set: the client asks over TCP."""
    try:
        message = dns.message.from_wire(response)
    except Exception:
        return servfail(query)
    cut = dns.message.make_response(query)
    cut.flags = message.flags | dns.flags.TC
    cut.set_rcode(message.rcode())
    return cut.to_wire()


def rewrite(query: dns.message.Message, response: bytes) -> Rewritten:
    """The bytes the client gets for ``response``; SERVFAIL when it is no answer."""
    try:
        message = dns.message.from_wire(response)
        if len(response) < _HEADER or not query.is_response(message):
            return Rewritten(servfail(query), servfail=True)
        changed, emptied, hints = _strip(query, message)
        if not changed:
            return Rewritten(response)
        return Rewritten(message.to_wire(max_size=65535, want_shuffle=False), emptied, hints)
    except Exception:  # any upstream bytes: an answer or SERVFAIL, never a crash
        return Rewritten(servfail(query), servfail=True)


def _is_aaaa(rrset: dns.rrset.RRset) -> bool:
    return rrset.rdtype == _AAAA or (rrset.rdtype == dns.rdatatype.RRSIG and rrset.covers == _AAAA)


def _strip(query: dns.message.Message, message: dns.message.Message) -> tuple[bool, bool, int]:
    """Take the IPv6 addresses out of ``message``; (changed, AAAA emptied, hints removed)."""
    changed = False
    hints = 0
    for section in (message.answer, message.additional):
        kept = []
        for original in section:
            if _is_aaaa(original):
                changed = True
                continue
            rrset = original
            if rrset.rdtype in _SVCB_TYPES:
                rrset, removed = _without_ipv6hint(original)
                hints += removed
                changed = changed or removed > 0
            kept.append(rrset)
        section[:] = kept
    question = query.question[0]
    emptied = (
        question.rdtype == _AAAA
        and message.rcode() == dns.rcode.NOERROR
        and not any(r.rdtype == _AAAA for r in message.answer)
    )
    return changed, emptied and changed, hints


def _without_ipv6hint(rrset: dns.rrset.RRset) -> tuple[dns.rrset.RRset, int]:
    """``rrset`` with the ipv6hint of each record taken out; and how many were."""
    removed = 0
    records = []
    for original in rrset:
        assert isinstance(original, SVCBBase)
        rdata: dns.rdata.Rdata = original
        params = dict(original.params)
        if ParamKey.IPV6HINT in params:
            removed += 1
            del params[ParamKey.IPV6HINT]
            mandatory = params.get(ParamKey.MANDATORY)
            if isinstance(mandatory, MandatoryParam):
                keys = tuple(k for k in mandatory.keys if k != ParamKey.IPV6HINT)
                if keys:
                    params[ParamKey.MANDATORY] = MandatoryParam(keys)  # type: ignore[no-untyped-call]
                else:
                    del params[ParamKey.MANDATORY]
            rdata = original.replace(params=params)
        records.append(rdata)
    if not removed:
        return rrset, 0
    new = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype, rrset.covers)
    for rdata in records:
        new.add(rdata)
    new.ttl = rrset.ttl
    return new, removed


def answered(message: bytes) -> dns.message.Message | None:
    """``message`` parsed, or None (for the cache and the TTL count-down)."""
    try:
        return dns.message.from_wire(message)
    except Exception:
        return None
