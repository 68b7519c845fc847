"""The events a handshake hands to the glue, and the destination they name.

Job: the vocabulary between the pure protocol parsers and the asyncio session. A parser
takes bytes and returns a list of these; the session acts on each in order.

Rules: events are frozen, slotted dataclasses named as nouns (h11's habit). Credentials
and passwords are left out of ``repr()`` so that logging an event never leaks them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Authenticate",
    "Connect",
    "Destination",
    "Event",
    "Forward",
    "HostKind",
    "Send",
]


class HostKind(enum.Enum):
    """What a destination host is: a DNS name to resolve (A only) or an IPv4 address."""

    NAME = "name"
    IPV4 = "ipv4"


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked destination.

    NAME hosts are lower-cased with the trailing dot stripped; IPV4 hosts are canonical
    dotted quads. ``port`` is 1..65535.
    """

    host: str
    port: int
    kind: HostKind

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes to write to the client now; the handshake goes on after them."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Authenticate:
    """SOCKS5 user/password (RFC 1929) to check; answer with ``auth_result(ok)``."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a tunnel to ``destination``.

    ``protocol`` is "http-connect", "socks5", "socks4" or "socks4a". ``early_data`` is
    what the client sent after its request; it must be forwarded upstream first.
    """

    protocol: str
    destination: Destination
    early_data: bytes
    credentials: tuple[str, str] | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class Forward:
    """Forward a plain-HTTP absolute-form request (protocol "http-forward").

    ``head`` is the checked request head (origin-form, Host from the URI) and
    ``early_data`` what followed it; ``protocols.forward`` parses both again with h11,
    frames the body and rewrites the head before anything goes upstream.
    """

    protocol: str
    destination: Destination
    head: bytes
    early_data: bytes
    credentials: tuple[str, str] | None = field(repr=False)


Event = Send | Authenticate | Connect | Forward
