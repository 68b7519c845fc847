"""Pure protocol layer: client bytes in, events and reply bytes out.

Job: everything the proxy must understand of a client's request before it can dial: the
HTTP proxy head, SOCKS5 and SOCKS4/4a, and the checks on the destination host they name;
which first bytes start none of them (``sniff``); and the framing of forwarded plain-HTTP
requests and responses, request by request (``forward``, on h11).

Rules: no I/O here. No module in this package imports asyncio or socket (a test holds
this); the session (``session``) feeds bytes to a handshake (``handshake``) and acts on
its events. A handshake raises nothing for any input bytes: a refusal is an event.
"""

from __future__ import annotations

from ipv4proxy.protocols.events import (
    Authenticate,
    Connect,
    Destination,
    Event,
    Forward,
    HostKind,
    ProtocolKind,
    Refused,
    Send,
)
from ipv4proxy.protocols.handshake import Handshake, new_handshake
from ipv4proxy.protocols.host import parse_authority, parse_host
from ipv4proxy.protocols.http import HttpHandshake
from ipv4proxy.protocols.socks import Socks4Handshake, Socks5Handshake

__all__ = [
    "Authenticate",
    "Connect",
    "Destination",
    "Event",
    "Forward",
    "Handshake",
    "HostKind",
    "HttpHandshake",
    "ProtocolKind",
    "Refused",
    "Send",
    "Socks4Handshake",
    "Socks5Handshake",
    "new_handshake",
    "parse_authority",
    "parse_host",
]
