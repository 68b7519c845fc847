"""The first byte of a connection: which protocol it can start, or why it starts none.

Job: the session picks the handshake by the first byte (``protocols.new_handshake``): 0x05
SOCKS5, 0x04 SOCKS4/4a, an HTTP token character an HTTP request. Any other first byte
can never become a request, so it is refused at once rather than left waiting for the
handshake timeout.

Rules: 0x16 is a TLS handshake record (a ClientHello: the client was told
``https://proxy``); it is closed with no answer (a TLS client cannot read an HTTP one)
and a reason that says what to change. Every other foreign byte gets a 400 with a
one-line reason, which a person typing at the port can read and a binary client takes as
the close it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipv4proxy.errors import Failure, ProtocolError
from ipv4proxy.protocols.http import error_response

__all__ = ["TLS_REASON", "Foreign", "foreign"]

TLS_REASON = "client spoke TLS to the proxy: use an http:// proxy URL"
# A TLS record of type handshake (RFC 8446 5.1): what a ClientHello starts with.
_TLS_HANDSHAKE = 0x16
# tchar (RFC 9110 5.6.2): what an HTTP method can start with.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class Foreign:
    """A first byte no protocol starts with: the error to log, and the bytes to answer
    (empty: close with no answer)."""

    error: ProtocolError
    reply: bytes


def foreign(first: int) -> Foreign | None:
    """None when ``first`` can start SOCKS4, SOCKS5 or an HTTP request; else the refusal."""
    if first in (0x04, 0x05) or first in _TCHAR:
        return None
    if first == _TLS_HANDSHAKE:
        return Foreign(ProtocolError(TLS_REASON, failure=Failure.MALFORMED), b"")
    error = ProtocolError(
        f"the first byte 0x{first:02x} starts neither SOCKS4 (0x04), SOCKS5 (0x05)"
        " nor an HTTP request",
        failure=Failure.MALFORMED,
    )
    return Foreign(error, error_response(error))
