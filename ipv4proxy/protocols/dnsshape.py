"""Which addresses a name with several A records is answered with (DNS mode's shaping).

Job: given an A answer of several addresses, what the proxy knows about them (the dialer's
last good address for the name, the breakers that are open) and what it learned before
(a connect race's result), decide the A records the client gets; and rewrite the answer.
Pure: no sockets, no asyncio; time comes from an injected monotonic clock.

Why (docs/dns-mode.md, "Names with several A records"): Node >= 20 cuts every connection
attempt but the last after 250 ms, IPv4 ones too. With three A records of which one works
and answers slowly (~1 s), the working one is cut unless it is listed last, and a
black-holed last one stalls the client. A single A record gets one attempt with no timer.

Rules:
- Shaped: an answer to an A question (NOERROR) with one A RRset of more than one record,
  for a name matching ``dns.shape_names`` (the first matching entry gives the port).
- The good address, first found wins: the dialer's last good address for the name (its
  breaker not open); else a remembered race result (`Choices`) for this name that is still
  in the answer and whose breaker is not open; else the only address whose breaker is
  not open; else a connect race (the glue runs it) among the addresses not open. When
  every address is open, or the race found none, the answer goes out unshaped.
- ``one``: the good address alone. ``first``: every address, the good one first, those
  known bad (breaker open, or failed in the race) left out.
- A shaped A RRset's TTL is at most ``dns.shape_ttl``; nothing else in the answer changes.
- A race result is fresh for ``dns.shape_ttl``; until the upstream's answer itself expires
  it is still used, while one background race (`Choices.stale`) refreshes it. So a race
  runs at most once per name per shape_ttl, never per query.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Sequence

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = [
    "A_TYPE",
    "MODES",
    "Answer",
    "Choice",
    "Choices",
    "Known",
    "ShapeRule",
    "a_records",
    "decide",
    "parse_rule",
    "port_for",
    "race_choice",
    "shape",
    "shaped_addresses",
]

Clock = Callable[[], float]

MODES = ("one", "first", "off")
A_TYPE = int(dns.rdatatype.A)
# Names whose race result is remembered; far above the names one gateway resolves, and a
# client looping over random names cannot grow memory (the same bound as the breakers').
TABLE_SIZE = 10000


@dataclasses.dataclass(frozen=True, slots=True)
class ShapeRule:
    """One entry of ``dns.shape_names``: ``*`` (any name), ``*.suffix`` (the suffix and
    every name under it) or an exact name; and the port its race connects to."""

    pattern: str
    port: int

    def matches(self, name: str) -> bool:
        if self.pattern == "*":
            return True
        if self.pattern.startswith("*."):
            suffix = self.pattern[2:]
            return name == suffix or name.endswith("." + suffix)
        return name == self.pattern


def parse_rule(text: str, default_port: int = 443) -> ShapeRule:
    """``PATTERN[:PORT]`` as a rule. Raises ValueError with the reason."""
    pattern, sep, port_text = text.rpartition(":")
    if not sep:
        pattern, port_text = text, str(default_port)
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected NAME[:PORT] with a port of 1-65535, got {text!r}")
    pattern = pattern.lower()
    if pattern.endswith(".") and pattern != "*.":
        pattern = pattern[:-1]  # the root's dot of a fully qualified name
    bare = pattern.removeprefix("*.")
    if pattern != "*" and (not bare or "*" in bare or not bare.isascii() or " " in bare):
        raise ValueError(f"expected *, *.DOMAIN or a NAME, got {text!r}")
    return ShapeRule(pattern, int(port_text))


def port_for(rules: Sequence[ShapeRule], name: str) -> int | None:
    """The race port for ``name`` (lower case, no final dot): the first matching rule's."""
    return next((rule.port for rule in rules if rule.matches(name)), None)


@dataclasses.dataclass(frozen=True, slots=True)
class Known:
    """What the dialer knows now: the last good address of the name, the open breakers."""

    last_good: str | None = None
    open: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True, slots=True)
class Choice:
    """The address known to work (None: answer unshaped), those known bad, and whence."""

    good: str | None
    bad: frozenset[str] = frozenset()
    # memory: the dialer's last good address; race: a race's winner (or, good None, its
    # failure); breaker: the only address whose breaker is not open; open: every one is.
    source: str = "race"


def decide(
    addresses: Sequence[str], known: Known, remembered: Choice | None, stale: bool = False
) -> Choice | None:
    """The choice for a name answered with ``addresses``, or None: a race must decide, among
    the addresses whose breaker is not open.

    A fresh race result comes first, then the dialer's last good address, then a stale race
    result: the dialer's memory has no age (an address that died while only clients that
    bypass the proxy used it stays there until the proxy's own tunnels open its breaker),
    so the glue verifies a memory answer with a background race once per ``fresh``
    period, and that race's result outranks it while it is fresh."""
    usable = [a for a in addresses if a not in known.open]
    kept = None
    if remembered is not None:
        if remembered.good is None and remembered.source == "race":
            kept = remembered  # the race found none: unshaped until it runs again
        elif remembered.good in usable:
            kept = Choice(remembered.good, remembered.bad | known.open, remembered.source)
    if kept is not None and not stale:
        return kept
    if known.last_good is not None and known.last_good in usable:
        return Choice(known.last_good, known.open, "memory")
    if kept is not None:
        return kept
    if not usable:
        return Choice(None, known.open, "open")  # the dialer too tries them all then
    if len(usable) == 1:
        return Choice(usable[0], known.open, "breaker")
    return None


def race_choice(winner: str | None, failed: Iterable[str], known: Known) -> Choice:
    """What a race found: its winner (None: every attempt failed or timed out) and the
    addresses that failed in it."""
    return Choice(winner, frozenset(failed) | known.open, "race")


def shaped_addresses(addresses: Sequence[str], choice: Choice, mode: str) -> tuple[str, ...]:
    """The A records the client gets: ``addresses`` unchanged when there is no good one."""
    if choice.good is None or choice.good not in addresses or mode == "off":
        return tuple(addresses)
    if mode == "one":
        return (choice.good,)
    rest = (a for a in addresses if a != choice.good and a not in choice.bad)
    return (choice.good, *rest)


@dataclasses.dataclass(slots=True)
class _Memo:
    choice: Choice
    fresh_until: float
    keep_until: float


class Choices:
    """Race results by name: fresh for ``fresh`` seconds, then stale (still used, while one
    refresh runs) until the upstream's answer they were made for expires."""

    def __init__(self, clock: Clock, fresh: float, size: int = TABLE_SIZE) -> None:
        self._clock = clock
        self.fresh = fresh
        self._size = size
        self._memos: collections.OrderedDict[str, _Memo] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._memos)

    def get(self, name: str) -> tuple[Choice | None, bool]:
        """The remembered choice for ``name`` (None when none or expired) and whether it
        is stale (a refresh is due)."""
        memo = self._memos.get(name)
        now = self._clock()
        if memo is None or now >= memo.keep_until:
            self._memos.pop(name, None)
            return None, False
        self._memos.move_to_end(name)
        return memo.choice, now >= memo.fresh_until

    def put(self, name: str, choice: Choice, lifetime: float) -> None:
        """Remember ``choice`` for ``lifetime`` seconds (the upstream answer's TTL), fresh
        for ``fresh`` of them; for ``fresh`` at least, so a short TTL never makes every
        query race."""
        now = self._clock()
        self._memos[name] = _Memo(choice, now + self.fresh, now + max(self.fresh, lifetime))
        self._memos.move_to_end(name)
        while len(self._memos) > self._size:
            self._memos.popitem(last=False)

    def touch(self, name: str) -> None:
        """Mark ``name``'s choice fresh again without a new one (a refresh could not run)."""
        memo = self._memos.get(name)
        if memo is not None:
            memo.fresh_until = min(memo.keep_until, self._clock() + self.fresh)


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """An A answer worth shaping: the question's name (lower case, no final dot), the A
    records in order and their TTL."""

    name: str
    addresses: tuple[str, ...]
    ttl: int


def a_records(message: dns.message.Message) -> Answer | None:
    """The A records of ``message`` when it answers an A question (NOERROR, not truncated)
    with one A RRset of more than one record; else None."""
    if (
        not message.question
        or message.question[0].rdtype != dns.rdatatype.A
        or message.rcode() != dns.rcode.NOERROR
        or message.flags & dns.flags.TC
    ):
        return None
    rrsets = [r for r in message.answer if r.rdtype == dns.rdatatype.A]
    if len(rrsets) != 1 or len(rrsets[0]) < 2:
        return None
    rrset = rrsets[0]
    addresses = tuple(dict.fromkeys(rd.to_text() for rd in rrset))
    name = message.question[0].name.to_text().rstrip(".").lower()
    return Answer(name, addresses, int(rrset.ttl))


def shape(message: dns.message.Message, addresses: Sequence[str], ttl_cap: int) -> bytes:
    """``message`` with its A RRset holding ``addresses`` (in this order) and a TTL of at
    most ``ttl_cap``; every other record, flag and option as it was. Mutates ``message``."""
    for index, rrset in enumerate(message.answer):
        if rrset.rdtype != dns.rdatatype.A:
            continue
        shaped = dns.rrset.from_text_list(
            rrset.name, min(int(rrset.ttl), ttl_cap), dns.rdataclass.IN, "A", list(addresses)
        )
        message.answer[index] = shaped
    # dnspython shuffles an RRset's records when writing it unless told not to: the order
    # is the point of ``first``.
    wire: bytes = message.to_wire(max_size=65535, want_shuffle=False)
    return wire
