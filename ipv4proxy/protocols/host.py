"""Destination hosts: check the host a client named and make it a `Destination`.

Job: turn the host of a CONNECT authority, an absolute URI or a SOCKS request into a
`Destination`, or refuse it with a `ProtocolError`. No other exception escapes.

Rules:
- IPv6 literals (bracketed or not) are refused with ``Failure.IPV6_LITERAL``: this proxy
  connects over IPv4 only, and saying so beats a confusing DNS error.
- A host whose last label is a number (WHATWG URL "ends in a number": all decimal digits
  or ``0x`` hex) is an IPv4 address and must be a canonical dotted quad. Other spellings
  (``127.1``, ``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.000.0.1``) are refused as
  MALFORMED: inet_aton() would read them as an address that policy never saw (aiohttp
  rejects them for the same reason).
- Names are ASCII (clients send IDNA A-labels), at most 253 characters after one trailing
  dot is stripped (255 octets on the wire, RFC 1035 section 2.3.4), labels of 1-63
  letters, digits, '-' or '_' (underscores occur in real names); they come back
  lower-cased.
- Ports are 1..65535; port 0 is never a destination.
"""

from __future__ import annotations

import ipaddress
import re

from ipv4proxy.errors import Failure, ProtocolError
from ipv4proxy.protocols.events import Destination, HostKind

__all__ = ["parse_authority", "parse_host"]

# RFC 1035 2.3.4: 255 octets on the wire is 253 characters of dotted text.
MAX_NAME = 253

_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def _show(text: str) -> str:
    """``text`` made safe for a one-line reason: quoted, escaped, at most 80 characters."""
    return ascii(text[:80])


def _malformed(reason: str) -> ProtocolError:
    return ProtocolError(reason, failure=Failure.MALFORMED)


def _refuse_ipv6(text: str) -> ProtocolError:
    """The error for a host holding ':' or brackets: IPV6_LITERAL if it is one."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.IPv6Address(inner)
    except ValueError:
        return _malformed(f"{_show(text)} is not a valid host")
    shown = inner if len(inner) <= 80 and inner.isascii() and inner.isprintable() else "..."
    return ProtocolError(
        f"[{shown}] is an IPv6 literal; this proxy connects over IPv4 only",
        failure=Failure.IPV6_LITERAL,
    )


def parse_host(text: str, port: int) -> Destination:
    """Check ``text`` and ``port`` and return the destination they name.

    Raises ProtocolError: IPV6_LITERAL for an IPv6 address, MALFORMED for anything else
    that is not a canonical dotted quad or a valid ASCII name, or a port outside 1..65535.
    """
    if not 1 <= port <= 65535:
        raise _malformed(f"port {port} is outside 1-65535")
    if ":" in text or text.startswith("["):
        raise _refuse_ipv6(text)
    if not text.isascii():
        raise _malformed(f"{_show(text)} is not an ASCII host name (send IDNA A-labels)")
    name = (text[:-1] if text.endswith(".") else text).lower()
    if not name:
        raise _malformed("the host is empty")
    if len(name) > MAX_NAME:
        raise _malformed(f"the host name is longer than {MAX_NAME} characters")
    if _NAME.fullmatch(name) is None:
        raise _malformed(f"{_show(text)} is not a valid host name")
    if _NUMERIC_LABEL.fullmatch(name[name.rfind(".") + 1 :]) is None:
        return Destination(name, port, HostKind.NAME)
    if _DOTTED_QUAD.fullmatch(name) is None:
        raise _malformed(f"{_show(text)} is not a canonical dotted-quad IPv4 address")
    return Destination(name, port, HostKind.IPV4)


def _parse_port(text: str, default: int | None, authority: str) -> int:
    if not text:
        if default is None:
            raise _malformed(f"{_show(authority)} has no port (expected host:port)")
        return default
    if len(text) > 5 or not (text.isascii() and text.isdigit()):
        raise _malformed(f"{_show(authority)} has an invalid port")
    return int(text)


def parse_authority(text: str, *, default_port: int | None = None) -> Destination:
    """Parse ``host:port`` or ``[v6]:port`` (RFC 9110 authority without userinfo).

    The port is required unless ``default_port`` is given (an empty port after ':' takes
    the default too, RFC 3986 section 3.2.3). Raises ProtocolError as `parse_host` does.
    """
    if text.startswith("["):
        close = text.find("]") + 1
        if not close:
            raise _malformed(f"{_show(text)} has an unclosed '['")
        host, rest = text[:close], text[close:]
        if rest and not rest.startswith(":"):
            raise _malformed(f"{_show(text)} is not host:port")
        port_text = rest[1:]
    elif text.count(":") > 1:
        host, port_text = text, ""  # a bare IPv6 address; refused below
    else:
        host, _, port_text = text.partition(":")
    if host.startswith("[") or ":" in host:
        raise _refuse_ipv6(host)
    return parse_host(host, _parse_port(port_text, default_port, text))
