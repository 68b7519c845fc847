"""The events a handshake hands to the session, and the destination they name.

Job: the vocabulary between the pure protocol parsers and the session
(``protocols.session``). A parser takes bytes and returns a list of these; the session
acts on each in order. A refusal is an event too (`Refused`), always the last one: the
`Send` events before it still reach the client (a SOCKS5 method choice, say), then the
handshake's ``error_reply``.

Rules: events are frozen, slotted dataclasses named as nouns (h11's habit). Credentials
and passwords are left out of ``repr()`` so that logging an event never leaks them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ipv4proxy.errors import ProxyError

__all__ = [
    "Authenticate",
    "Connect",
    "Destination",
    "Event",
    "Forward",
    "HostKind",
    "ProtocolKind",
    "Refused",
    "Send",
]


class ProtocolKind(enum.StrEnum):
    """What a client speaks, as far as its request was read; the value is the name logs and
    metrics use. HTTP is a request whose method is not read yet."""

    HTTP = "http"
    HTTP_CONNECT = "http-connect"
    HTTP_FORWARD = "http-forward"
    SOCKS5 = "socks5"
    SOCKS4 = "socks4"
    SOCKS4A = "socks4a"

    @property
    def socks4(self) -> bool:
        """SOCKS4 or 4a: a request that cannot carry a password."""
        return self in (ProtocolKind.SOCKS4, ProtocolKind.SOCKS4A)


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
    """SOCKS5 user/password (RFC 1929) to check: good ones are answered with the
    handshake's ``authenticated()``, bad ones with its ``error_reply``."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a tunnel to ``destination``.

    ``protocol`` is HTTP_CONNECT, SOCKS5, SOCKS4 or SOCKS4A. ``early_data`` is what the
    client sent after its request; it must be forwarded upstream first.
    """

    protocol: ProtocolKind
    destination: Destination
    early_data: bytes
    credentials: tuple[str, str] | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class Forward:
    """Forward a plain-HTTP absolute-form request (protocol HTTP_FORWARD).

    ``head`` is the checked request head (origin-form, Host from the URI) and
    ``early_data`` what followed it; ``protocols.forward`` parses both again with h11,
    frames the body and rewrites the head before anything goes upstream.
    """

    protocol: ProtocolKind
    destination: Destination
    head: bytes
    early_data: bytes
    credentials: tuple[str, str] | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class Refused:
    """The request is refused: answer with ``error_reply(error)`` and close. Always the last
    event; feeding the handshake again is a bug (RuntimeError)."""

    error: ProxyError


Event = Send | Authenticate | Connect | Forward | Refused
