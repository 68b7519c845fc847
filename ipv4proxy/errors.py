"""The error tree, and the one table that maps each failure to its answer.

Every failure the proxy can meet is a `Failure`: the HTTP status, the SOCKS5 and SOCKS4
reply codes it is answered with, and the short cause name that logs and metrics use
(``NXDOMAIN``, ``ECONNREFUSED`` ...). Errors carry a `Failure` and a one-line reason; the
protocol modules turn that pair into bytes, so no other layer decides what a client sees.

Rules: errors never hold a traceback meant for a client; ``str(error)`` is the one-line
reason, safe to send and to log (it never contains credentials).
"""

from __future__ import annotations

import enum
import errno

__all__ = [
    "ConfigError",
    "DialError",
    "Failure",
    "PolicyDenied",
    "ProtocolError",
    "ProxyError",
    "ResolveError",
    "Socks4Reply",
    "Socks5Reply",
    "UpstreamError",
    "UpstreamTimeout",
    "failure_for_errno",
]


class Socks5Reply(enum.IntEnum):
    """SOCKS5 reply codes, RFC 1928 section 6."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class Socks4Reply(enum.IntEnum):
    """SOCKS4 reply codes. Of the failures only 0x5B "request rejected or failed" is worth
    sending: 0x5C and 0x5D are about identd, which this proxy does not ask."""

    GRANTED = 0x5A
    REJECTED = 0x5B


S5_GENERAL = Socks5Reply.GENERAL_FAILURE
S5_NOT_ALLOWED = Socks5Reply.NOT_ALLOWED
S5_NET_UNREACHABLE = Socks5Reply.NETWORK_UNREACHABLE
S5_HOST_UNREACHABLE = Socks5Reply.HOST_UNREACHABLE
S5_REFUSED = Socks5Reply.CONNECTION_REFUSED
S5_COMMAND = Socks5Reply.COMMAND_NOT_SUPPORTED
S5_ADDRESS_TYPE = Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED
S4_REJECTED = Socks4Reply.REJECTED


class Failure(enum.Enum):
    """Each way a request can fail: (cause name, HTTP status, SOCKS5 code, SOCKS4 code)."""

    MALFORMED = ("MALFORMED", 400, S5_GENERAL, S4_REJECTED)
    HEAD_TOO_LARGE = ("HEAD_TOO_LARGE", 431, S5_GENERAL, S4_REJECTED)
    HANDSHAKE_TIMEOUT = ("HANDSHAKE_TIMEOUT", 408, S5_GENERAL, S4_REJECTED)
    UNSUPPORTED = ("UNSUPPORTED", 501, S5_COMMAND, S4_REJECTED)
    BAD_ADDRESS_TYPE = ("BAD_ADDRESS_TYPE", 400, S5_ADDRESS_TYPE, S4_REJECTED)
    IPV6_LITERAL = ("IPV6_LITERAL", 502, S5_ADDRESS_TYPE, S4_REJECTED)
    AUTH_REQUIRED = ("AUTH_REQUIRED", 407, S5_NOT_ALLOWED, S4_REJECTED)
    DENIED = ("DENIED", 403, S5_NOT_ALLOWED, S4_REJECTED)
    NXDOMAIN = ("NXDOMAIN", 502, S5_HOST_UNREACHABLE, S4_REJECTED)
    NODATA = ("NODATA", 502, S5_HOST_UNREACHABLE, S4_REJECTED)
    DNS_FAILURE = ("DNS_FAILURE", 502, S5_HOST_UNREACHABLE, S4_REJECTED)
    # resolver.max_in_flight lookups are already waiting on DNS: this one is not queued
    # (a flood of random names must not hold sockets and memory); the client may retry.
    DNS_BUSY = ("DNS_BUSY", 503, S5_GENERAL, S4_REJECTED)
    REFUSED = ("ECONNREFUSED", 502, S5_REFUSED, S4_REJECTED)
    HOST_UNREACHABLE = ("EHOSTUNREACH", 502, S5_HOST_UNREACHABLE, S4_REJECTED)
    NET_UNREACHABLE = ("ENETUNREACH", 502, S5_NET_UNREACHABLE, S4_REJECTED)
    CONNECT_FAILED = ("ECONNFAILED", 502, S5_GENERAL, S4_REJECTED)
    TIMEOUT = ("ETIMEDOUT", 504, S5_HOST_UNREACHABLE, S4_REJECTED)
    # Refused at accept, before the protocol is known: the connection is closed with no
    # reply (waiting for the first byte would let the excess hold descriptors). The codes
    # are what a reply would carry.
    TOO_MANY_CONNECTIONS = ("TOO_MANY_CONNECTIONS", 503, S5_GENERAL, S4_REJECTED)
    # Unfinished requests already hold limits.handshake_memory: a request that would hold
    # more is refused rather than buffered (the client may try again at once).
    OVERLOADED = ("OVERLOADED", 503, S5_GENERAL, S4_REJECTED)
    # A tunnel that moved no byte for limits.idle_timeout; mid-tunnel there is no reply.
    IDLE_TIMEOUT = ("IDLE_TIMEOUT", 408, S5_GENERAL, S4_REJECTED)
    BAD_RESPONSE = ("BAD_RESPONSE", 502, S5_GENERAL, S4_REJECTED)  # forwarded: origin broke HTTP

    def __init__(
        self, cause: str, http_status: int, socks5: Socks5Reply, socks4: Socks4Reply
    ) -> None:
        self.cause = cause
        self.http_status = http_status
        self.socks5 = socks5
        self.socks4 = socks4


_ERRNO_FAILURES = {
    errno.ECONNREFUSED: Failure.REFUSED,
    errno.ECONNRESET: Failure.REFUSED,
    errno.EHOSTUNREACH: Failure.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Failure.HOST_UNREACHABLE,
    errno.ENETUNREACH: Failure.NET_UNREACHABLE,
    errno.ENETDOWN: Failure.NET_UNREACHABLE,
    errno.ETIMEDOUT: Failure.TIMEOUT,
}


def failure_for_errno(code: int | None) -> Failure:
    """The failure a connect() errno stands for; unknown codes are CONNECT_FAILED."""
    return _ERRNO_FAILURES.get(code or 0, Failure.CONNECT_FAILED)


class ProxyError(Exception):
    """Root of every error the proxy raises on purpose. ``str()`` is the one-line reason."""

    failure: Failure = Failure.MALFORMED

    def __init__(self, reason: str, *, failure: Failure | None = None) -> None:
        super().__init__(reason)
        if failure is not None:
            self.failure = failure

    @property
    def reason(self) -> str:
        return str(self.args[0])

    def __str__(self) -> str:
        return self.reason


class ConfigError(ProxyError, ValueError):
    """The configuration is invalid; the reason names the key path and what was expected."""


class ProtocolError(ProxyError):
    """The client sent something the protocol does not allow; the failure is the reply hint."""


class PolicyDenied(ProxyError):
    """A client or destination is refused by policy; the reason names the rule."""

    failure = Failure.DENIED


class UpstreamError(ProxyError, OSError):
    """The destination could not be reached (resolution or connection)."""

    failure = Failure.CONNECT_FAILED

    def __init__(self, reason: str, *, failure: Failure | None = None) -> None:
        ProxyError.__init__(self, reason, failure=failure)


class ResolveError(UpstreamError):
    """A name has no usable IPv4 address: NXDOMAIN, NODATA (no A record), a DNS failure, or
    DNS_BUSY (too many lookups in flight)."""

    failure = Failure.DNS_FAILURE


class DialError(UpstreamError):
    """Every IPv4 address of a destination failed; ``attempts`` holds each (address, error)."""

    def __init__(
        self,
        reason: str,
        *,
        failure: Failure | None = None,
        attempts: tuple[tuple[str, OSError], ...] = (),
    ) -> None:
        super().__init__(reason, failure=failure)
        self.attempts = attempts


class UpstreamTimeout(DialError, TimeoutError):
    """The overall connect timeout ran out before any address answered."""

    failure = Failure.TIMEOUT
