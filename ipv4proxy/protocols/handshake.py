"""What every handshake is to the session: one interface, chosen by the first byte.

Job: the `Handshake` protocol that HTTP, SOCKS5 and SOCKS4/4a all implement, and
`new_handshake`, which picks one for a connection's first byte.

Rules: ``feed`` never raises for any input bytes: a refusal is a `Refused` event, the last
one (the `Send` events before it still go to the client). After a `Connect`, a `Forward`
or a `Refused`, feeding again is a bug in the caller (RuntimeError). Only SOCKS5 emits
`Authenticate`; the session answers it with ``authenticated()`` when the credentials are
good, and with ``error_reply`` when they are not (RFC 1929 status 0x01).
"""

from __future__ import annotations

from typing import Protocol

from ipv4proxy.errors import ProxyError
from ipv4proxy.protocols.events import Event, ProtocolKind
from ipv4proxy.protocols.http import MAX_HEAD, HttpHandshake
from ipv4proxy.protocols.socks import Socks4Handshake, Socks5Handshake

__all__ = ["Handshake", "new_handshake"]


class Handshake(Protocol):
    """One client request being read; see the module docstring for the rules."""

    @property
    def protocol(self) -> ProtocolKind:
        """What the request is, as far as it was read (named in the log line)."""

    @property
    def target(self) -> str:
        """``host:port`` as the client wrote it, once read; "-" before."""

    def feed(self, data: bytes) -> list[Event]:
        """Take client bytes; return the events they complete, in order."""

    def authenticated(self) -> list[Event]:
        """The credentials of the last `Authenticate` are good: the events that follow."""

    def success_reply(self, address: str, port: int) -> bytes:
        """The reply once the tunnel is open, bound to ``address``:``port``."""

    def error_reply(self, error: ProxyError) -> bytes:
        """The refusal for ``error``, in the format of the phase the handshake is in."""


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
