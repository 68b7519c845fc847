"""The syntax of policy rules: port ranges, IPv4 networks, domain patterns, user lines.

Job: turn the strings an operator writes (``443``, ``8000-8100``, ``10.0.0.0/8``,
``*.whatsapp.net``, ``alice:secret``) into values, or say what is wrong with them. The
config checks call these so a bad rule stops the start with the key's path; the policy
builds its tables with them.

Rules: pure functions and values, no I/O. A value is parsed once (`parse_ports`,
`parse_cidr`, `parse_domain`) and used as it is by the policy and the parents: a domain
pattern is a `DomainPattern`, matched without re-reading its text. Each ``*_problem``
function returns None for good input or a short message ("expected ...") that the
config prefixes with the key's path. Networks are IPv4 only: this proxy never dials
anything else. A domain pattern is either a name (``whatsapp.net``: that name only) or
``*.`` and a name (``*.whatsapp.net``: every name below it, not the name itself),
matched case-insensitively.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "Cidr",
    "DomainPattern",
    "cidr_problem",
    "domain_matches",
    "domain_problem",
    "is_loopback_host",
    "local_addresses",
    "parse_cidr",
    "parse_cidrs",
    "parse_domain",
    "parse_domains",
    "parse_ports",
    "parse_user_line",
    "parse_users",
    "port_problem",
    "user_problem",
]

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def parse_ports(items: Iterable[str]) -> frozenset[int]:
    """``("80", "8000-8002")`` -> {80, 8000, 8001, 8002}. Raises ValueError."""
    ports: set[int] = set()
    for item in items:
        low, dash, high = item.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"expected a port or a range like 8000-8100, got {item!r}")
        first, last = int(low), int(high) if dash else int(low)
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"expected ports within 1-65535, low to high, got {item!r}")
        ports.update(range(first, last + 1))
    return frozenset(ports)


def port_problem(items: tuple[str, ...]) -> str | None:
    if not items:
        return "expected at least one port: an empty list would refuse every request"
    try:
        parse_ports(items)
    except ValueError as exc:
        return str(exc)
    return None


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    """``10.0.0.0/8`` or a bare address (a /32). Raises ValueError for IPv6 or host bits."""
    return ipaddress.IPv4Network(text.strip(), strict=True)


class Cidr(NamedTuple):
    """An IPv4 network rule: as written (rules are named by it) and parsed."""

    text: str
    network: ipaddress.IPv4Network


def parse_cidrs(items: Iterable[str]) -> tuple[Cidr, ...]:
    """Each item parsed (`parse_cidr`). Raises ValueError."""
    return tuple(Cidr(item, parse_cidr(item)) for item in items)


def cidr_problem(items: tuple[str, ...]) -> str | None:
    for item in items:
        try:
            parse_cidr(item)
        except ValueError:
            return f"expected IPv4 networks like 10.0.0.0/8 (no host bits set), got {item!r}"
    return None


@dataclass(frozen=True, slots=True)
class DomainPattern:
    """A parsed domain pattern: ``text`` as written (rules are named by it), and what it
    matches: the name itself, or (``*.`` patterns) every name ending in ``suffix``."""

    text: str
    name: str
    suffix: str  # ".whatsapp.net" for *.whatsapp.net; "" for an exact name

    def matches(self, name: str) -> bool:
        """Whether ``name`` (lower-case, no trailing dot) matches."""
        if self.suffix:
            return name.endswith(self.suffix)
        return name == self.name


def parse_domain(text: str) -> DomainPattern:
    """``whatsapp.net`` or ``*.whatsapp.net`` (any case, a trailing dot allowed). Raises
    ValueError."""
    lowered = text.lower().rstrip(".")
    below = lowered.startswith("*.")
    name = lowered.removeprefix("*.")
    labels = name.split(".")
    if "*" in name or not name or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"expected a domain like whatsapp.net or *.whatsapp.net, got {text!r}")
    return DomainPattern(text, name, "." + name if below else "")


def parse_domains(items: Iterable[str]) -> tuple[DomainPattern, ...]:
    """Each item parsed (`parse_domain`). Raises ValueError."""
    return tuple(parse_domain(item) for item in items)


def domain_problem(items: tuple[str, ...]) -> str | None:
    for item in items:
        try:
            parse_domain(item)
        except ValueError as exc:
            return str(exc)
    return None


def domain_matches(name: str, pattern: str) -> bool:
    """Whether ``name`` (lower-case, no trailing dot) matches ``pattern`` (a checked one)."""
    return parse_domain(pattern).matches(name)


def parse_user_line(line: str) -> tuple[str, str]:
    """``USER:PASSWORD`` (split at the first colon). Raises ValueError without the line."""
    user, colon, password = line.partition(":")
    if not colon or not user or not password:
        # The message never repeats the line: it holds a password.
        raise ValueError("expected USER:PASSWORD with both parts non-empty")
    return user, password


def user_problem(items: tuple[str, ...]) -> str | None:
    for index, item in enumerate(items):
        try:
            parse_user_line(item)
        except ValueError as exc:
            return f"entry {index}: {exc}"
    return None


def parse_users(text: str) -> list[tuple[str, str]]:
    """A users file: one ``USER:PASSWORD`` a line; blank lines and ``#`` lines are skipped.

    Surrounding whitespace is ignored (a mounted Secret often ends in a newline). Raises
    ValueError naming the line number, never its text.
    """
    users = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            users.append(parse_user_line(line))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    return users


def is_loopback_host(host: str) -> bool:
    """Whether a listener host only accepts clients of this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_addresses(fib_trie: str) -> frozenset[str]:
    """The IPv4 addresses of this host's interfaces, from Linux's /proc/net/fib_trie text:
    each ``|-- ADDRESS`` line followed by a ``/32 host LOCAL`` line (secondary addresses
    and every interface included, which the SIOCGIFCONF ioctl would miss)."""
    found: set[str] = set()
    last = ""
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            last = text[4:]
        elif text.startswith("/32 host LOCAL") and last:
            found.add(last)
    return frozenset(found)
