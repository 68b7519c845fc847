"""SOCKS5 (RFC 1928, user/password RFC 1929) and SOCKS4/4a handshakes, sans-IO.

Job: turn client bytes into events (`Send`, `Authenticate`, `Connect`) and build the
replies. The state machines follow mitmproxy's SOCKS5 layer: a buffer, and one step per
phase that returns early until enough bytes have arrived; one recv is never assumed to be
one message, and bytes past a message stay buffered for the next phase.

Rules:
- Every refusal is a `Refused` event, the last one, carrying a ProtocolError whose
  failure picks the reply; `error_reply` answers in the format of the phase the handshake
  was in (RFC 1928 section 3 and 6, RFC 1929 section 2). Nothing escapes `feed` for any
  input; calling `feed` after a Connect or a refusal, or `authenticated` out of turn, is
  a bug in the caller: RuntimeError.
- Only CONNECT; BIND and UDP ASSOCIATE are UNSUPPORTED. IPv6 addresses are refused
  (IPV6_LITERAL, reply 0x08): this proxy connects over IPv4 only. Domain names go through
  `parse_host`, so a "domain" that is an IPv4 or IPv6 literal is classified as such.
- Usernames, passwords and SOCKS4 user ids are decoded as UTF-8 with
  ``surrogateescape``: UTF-8 credentials compare equal to configured strings, and any
  other byte survives (``.encode("utf-8", "surrogateescape")`` gives the bytes back).
  Domain names are decoded as latin-1, so non-ASCII ones are refused as MALFORMED.

SOCKS5 with user/password: `feed` stops at the `Authenticate` event and keeps any later
bytes. The session checks the credentials: good ones are answered with
``authenticated()`` (the RFC 1929 success status, then the events of what was buffered),
bad ones with ``error_reply`` (status 0x01).
"""

from __future__ import annotations

import enum
import functools
import ipaddress

from ipv4proxy.errors import Failure, ProtocolError, ProxyError, Socks4Reply, Socks5Reply
from ipv4proxy.protocols.events import Authenticate, Connect, Event, ProtocolKind, Refused, Send
from ipv4proxy.protocols.host import parse_host

__all__ = ["Socks4Handshake", "Socks5Handshake"]

NO_AUTH = 0x00
USER_PASS = 0x02
NO_ACCEPTABLE = b"\x05\xff"
_AUTH_OK = b"\x01\x00"
_AUTH_FAILED = b"\x01\x01"
# The fixed first bytes of the success replies: SOCKS5 VER REP RSV ATYP(IPv4), SOCKS4 VN CD.
_S5_SUCCEEDED = bytes((5, Socks5Reply.SUCCEEDED, 0, 1))
_S4_GRANTED = bytes((0, Socks4Reply.GRANTED))
# RFC 1928 section 4 command names, for the reasons of refused commands.
_COMMANDS = {1: "CONNECT", 2: "BIND", 3: "UDP ASSOCIATE"}
# SOCKS4 gives USERID and HOST no bound; 255 is SOCKS5's own limit for both.
MAX_SOCKS4_FIELD = 255


def _malformed(reason: str) -> ProtocolError:
    return ProtocolError(reason, failure=Failure.MALFORMED)


def _unsupported(command: int) -> ProtocolError:
    name = _COMMANDS.get(command, f"command {command}")
    return ProtocolError(f"{name} is not supported, only CONNECT", failure=Failure.UNSUPPORTED)


@functools.lru_cache(maxsize=64)  # the proxy's own few local addresses, once per reply
def _pack_ipv4(address: str) -> bytes:
    """``address`` packed; a non-IPv4 address (a parent proxy's name) is sent as 0.0.0.0."""
    try:
        return ipaddress.IPv4Address(address).packed
    except ValueError:
        return bytes(4)


def _pack_port(port: int) -> bytes:
    return (port if 0 <= port <= 0xFFFF else 0).to_bytes(2, "big")


def _decode(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("utf-8", "surrogateescape")


class _Phase(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    AUTH_WAIT = "auth-wait"
    REQUEST = "request"
    DONE = "done"


class Socks5Handshake:
    """The server side of a SOCKS5 handshake; see the module docstring for the rules."""

    __slots__ = (
        "_buf",
        "_credentials",
        "_failed",
        "_phase",
        "_require_auth",
        "protocol",
        "target",
    )

    def __init__(self, *, require_auth: bool = False) -> None:
        self.protocol = ProtocolKind.SOCKS5
        self.target = "-"  # host:port once the request's address was read, even if refused
        self._require_auth = require_auth
        self._buf = bytearray()
        self._phase = _Phase.GREETING
        self._failed = False
        self._credentials: tuple[str, str] | None = None

    def feed(self, data: bytes) -> list[Event]:
        """Take client bytes and return the events they complete, in order; a bad or
        refused request ends them with `Refused`."""
        if self._failed or self._phase is _Phase.DONE:
            raise RuntimeError("Socks5Handshake.feed() called after the handshake ended")
        self._buf += data
        return self._run([])

    def _run(self, events: list[Event]) -> list[Event]:
        try:
            while (event := self._step()) is not None:
                events.append(event)
        except ProtocolError as error:
            self._failed = True
            # The method choice made in this feed still goes out, before the error reply.
            events.append(Refused(error))
        return events

    def _step(self) -> Event | None:
        if self._phase is _Phase.GREETING:
            return self._greeting()
        if self._phase is _Phase.AUTH:
            return self._auth()
        if self._phase is _Phase.REQUEST:
            return self._request()
        return None  # AUTH_WAIT: until authenticated(); DONE: never

    def _greeting(self) -> Event | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        if buf[0] != 5:
            raise _malformed(f"SOCKS version {buf[0]} in the greeting, expected 5")
        if buf[1] == 0:
            raise _malformed("the SOCKS5 greeting offers no authentication method")
        end = 2 + buf[1]
        if len(buf) < end:
            return None
        methods = buf[2:end]
        del buf[:end]
        if USER_PASS in methods and (self._require_auth or NO_AUTH not in methods):
            method, self._phase = USER_PASS, _Phase.AUTH
        elif NO_AUTH in methods and not self._require_auth:
            method, self._phase = NO_AUTH, _Phase.REQUEST
        else:
            needed = "username/password" if self._require_auth else "none or username/password"
            raise ProtocolError(
                f"no acceptable SOCKS5 authentication method offered (need {needed})",
                failure=Failure.AUTH_REQUIRED,
            )
        return Send(bytes((5, method)))

    def _auth(self) -> Event | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        if buf[0] != 1:
            raise _malformed(f"username/password version {buf[0]}, expected 1 (RFC 1929)")
        user_end = 2 + buf[1]
        if len(buf) < user_end + 1:
            return None
        end = user_end + 1 + buf[user_end]
        if len(buf) < end:
            return None
        username, password = _decode(buf[2:user_end]), _decode(buf[user_end + 1 : end])
        del buf[:end]
        self._credentials = (username, password)
        self._phase = _Phase.AUTH_WAIT
        return Authenticate(username, password)

    def authenticated(self) -> list[Event]:
        """The credentials were good: the RFC 1929 success status, then the events of the
        bytes buffered after them. (Bad ones are answered with ``error_reply``.)"""
        if self._phase is not _Phase.AUTH_WAIT or self._failed:
            raise RuntimeError("authenticated() called without a pending Authenticate")
        self._phase = _Phase.REQUEST
        return self._run([Send(_AUTH_OK)])

    def _request(self) -> Event | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        version, command, reserved, atyp = buf[:4]
        if version != 5:
            raise _malformed(f"SOCKS version {version} in the request, expected 5")
        if reserved != 0:
            raise _malformed("the reserved byte of the SOCKS5 request is not 0")
        if atyp == 1:
            end = 10
            if len(buf) < end:
                return None
            host = ".".join(map(str, buf[4:8]))
        elif atyp == 3:
            if len(buf) < 5:
                return None
            end = 7 + buf[4]
            if len(buf) < end:
                return None
            if end == 7:
                raise _malformed("the SOCKS5 request names an empty domain")
            host = bytes(buf[5 : end - 2]).decode("latin-1")
        elif atyp == 4:
            end = 22
            if len(buf) < end:
                return None
            host = f"[{ipaddress.IPv6Address(bytes(buf[4:20]))}]"  # refused by parse_host
        else:
            raise ProtocolError(
                f"unknown SOCKS5 address type {atyp}", failure=Failure.BAD_ADDRESS_TYPE
            )
        port = int.from_bytes(buf[end - 2 : end], "big")
        self.target = f"{host}:{port}"
        if command != 1:
            raise _unsupported(command)
        destination = parse_host(host, port)
        early_data = bytes(buf[end:])
        buf.clear()
        self._phase = _Phase.DONE
        return Connect(ProtocolKind.SOCKS5, destination, early_data, self._credentials)

    def success_reply(self, address: str, port: int) -> bytes:
        """``05 00 00 01 <ipv4> <port>``: the tunnel is open, bound to address:port."""
        return _S5_SUCCEEDED + _pack_ipv4(address) + _pack_port(port)

    def error_reply(self, error: ProxyError) -> bytes:
        """The refusal in the format of the current phase (RFC 1928 / RFC 1929)."""
        if self._phase is _Phase.GREETING:
            return NO_ACCEPTABLE
        if self._phase in (_Phase.AUTH, _Phase.AUTH_WAIT):
            return _AUTH_FAILED
        return bytes((5, error.failure.socks5, 0, 1, 0, 0, 0, 0, 0, 0))


class Socks4Handshake:
    """The server side of a SOCKS4 / SOCKS4a handshake (CONNECT only)."""

    __slots__ = ("_buf", "_done", "protocol", "target")

    def __init__(self) -> None:
        self.protocol = ProtocolKind.SOCKS4
        self.target = "-"  # host:port once the request was read, even if refused
        self._buf = bytearray()
        self._done = False

    def feed(self, data: bytes) -> list[Event]:
        """Take client bytes; return [] until the request is whole, then [Connect], or
        [Refused] for a bad or refused request."""
        if self._done:
            raise RuntimeError("Socks4Handshake.feed() called after the handshake ended")
        self._buf += data
        try:
            event = self._request()
        except ProtocolError as error:
            self._done = True
            return [Refused(error)]
        if event is None:
            return []
        self._done = True
        return [event]

    def authenticated(self) -> list[Event]:
        """Never asked: a SOCKS4 user id comes in the request's event."""
        raise RuntimeError("Socks4Handshake never asks for authentication")

    def _request(self) -> Event | None:
        buf = self._buf
        if len(buf) < 8:
            return None
        if buf[0] != 4:
            raise _malformed(f"SOCKS version {buf[0]} in the request, expected 4")
        port = int.from_bytes(buf[2:4], "big")
        user_end = _field_end(buf, 8, "user id")
        if user_end < 0:
            return None
        end = user_end + 1
        socks4a = buf[4:7] == b"\x00\x00\x00" and buf[7] != 0
        if socks4a:
            host_end = _field_end(buf, end, "host name")
            if host_end < 0:
                return None
            host = bytes(buf[end:host_end]).decode("latin-1")
            end = host_end + 1
        else:
            host = ".".join(map(str, buf[4:8]))
        self.protocol = ProtocolKind.SOCKS4A if socks4a else ProtocolKind.SOCKS4
        self.target = f"{host}:{port}"
        if buf[1] != 1:
            raise _unsupported(buf[1])
        if port == 0:
            raise _malformed("the SOCKS4 request names port 0")
        destination = parse_host(host, port)
        user = _decode(buf[8:user_end])
        credentials = (user, "") if user else None
        return Connect(self.protocol, destination, bytes(buf[end:]), credentials)

    def success_reply(self, address: str, port: int) -> bytes:
        """``00 5A <port> <ipv4>``: request granted."""
        return _S4_GRANTED + _pack_port(port) + _pack_ipv4(address)

    def error_reply(self, error: ProxyError) -> bytes:
        """``00 <code> 0000 00000000``: request rejected or failed."""
        return bytes((0, error.failure.socks4, 0, 0, 0, 0, 0, 0))


def _field_end(buf: bytearray, start: int, what: str) -> int:
    """Index of the NUL ending the field at ``start``, or -1 if it has not arrived yet."""
    end = buf.find(b"\x00", start, start + MAX_SOCKS4_FIELD + 1)
    if end < 0 and len(buf) > start + MAX_SOCKS4_FIELD:
        raise _malformed(f"the SOCKS4 {what} is longer than {MAX_SOCKS4_FIELD} bytes")
    return end
