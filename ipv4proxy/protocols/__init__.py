"""Pure protocol layer: client bytes in, events and reply bytes out.

Job: everything the proxy must understand of a client's request before it can dial: the
HTTP proxy head, SOCKS5 and SOCKS4/4a, and the checks on the destination host they name;
which first bytes start none of them (``sniff``); and the framing of forwarded plain-HTTP
requests and responses, request by request (``forward``, on h11).

Rules: no I/O here. No module in this package imports asyncio or socket (a test holds
this); the session in the server feeds bytes to a handshake and acts on its events. A
handshake raises nothing but ProtocolError for any input bytes.
"""

from __future__ import annotations

from ipv4proxy.protocols.events import (
    Authenticate,
    Connect,
    Destination,
    Event,
    Forward,
    HostKind,
    Send,
)
from ipv4proxy.protocols.host import parse_authority, parse_host
from ipv4proxy.protocols.http import MAX_HEAD, HttpHandshake
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
    "Send",
    "Socks4Handshake",
    "Socks5Handshake",
    "new_handshake",
    "parse_authority",
    "parse_host",
]

Handshake = HttpHandshake | Socks5Handshake | Socks4Handshake


def new_handshake(
    first_byte: int, *, max_head: int = MAX_HEAD, require_auth: bool = False
) -> Handshake:
    """The handshake for a connection whose first byte is ``first_byte``.

    0x05 is SOCKS5, 0x04 is SOCKS4/4a, anything else is taken for HTTP (a bad method is
    then refused by the HTTP parser with a 400). ``require_auth`` applies to SOCKS5 method
    selection; HTTP and SOCKS4 report credentials in their events and the session decides.
    """
    if first_byte == 0x05:
        return Socks5Handshake(require_auth=require_auth)
    if first_byte == 0x04:
        return Socks4Handshake()
    return HttpHandshake(max_head=max_head)
