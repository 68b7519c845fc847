"""HTTP proxy requests, sans-IO: CONNECT tunnels and plain http:// forwarding.

Job: buffer one request head, check it, and return one `Connect` (CONNECT authority-form)
or `Forward` (absolute-form ``http://`` request, with the head rewritten for the origin
server). Also build the replies: the CONNECT 200 and the error responses (or, for a
failed CONNECT destination the session may send none: ``DESTINATION_FAILURES``).

Rules (RFC 9112 / RFC 9110), each refusal a `Refused` event carrying a ProtocolError:
- The head ends at the first CRLF CRLF. Longer than ``max_head`` bytes -> HEAD_TOO_LARGE;
  more than ``max_headers`` header lines -> HEAD_TOO_LARGE.
- Request line ``METHOD SP target SP HTTP/1.0|HTTP/1.1``; every line ends in CRLF: a bare
  CR or LF anywhere in the head is MALFORMED (RFC 9112 2.2 lets us refuse; lenient
  parsing of line ends is a request-smuggling shape). LF LF is refused as soon as it
  arrives, so LF-only clients get a 400 rather than a timeout.
- Headers: no obs-fold (RFC 9112 5.2), name a token with no whitespace before ':',
  value stripped of OWS, no control character but HTAB in a value.
- Framing (RFC 9112 6.1-6.3): Content-Length with Transfer-Encoding, differing or
  non-digit Content-Length values, a Transfer-Encoding other than exactly "chunked", or
  Transfer-Encoding in an HTTP/1.0 request -> MALFORMED. The body is not parsed here:
  for a CONNECT it is tunnel data, for forwarding ``protocols.forward`` frames it.
- Forwarding hands on a checked head: origin-form request line in the client's version,
  ``Host`` from the URI first and any Host header the client sent dropped (RFC 9112
  3.2.2: a proxy MUST ignore it; a disagreeing Host must not redirect the request), the
  other headers as sent. ``protocols.forward`` parses it with h11, frames the body and
  rewrites the head for the origin (hop-by-hop and ``Proxy-*`` removed). Every request
  of a forwarding connection passes through here first, the first and each later one.
- Credentials come from ``Proxy-Authorization: Basic`` (RFC 7617), decoded as UTF-8 with
  ``surrogateescape`` so every byte survives; missing or malformed -> None.
- A leading empty line before the request line is not skipped (RFC 9112 2.2 "SHOULD"):
  the session tells protocols apart by the first byte, so it would not reach us anyway.
"""

from __future__ import annotations

import binascii
import enum
import re
from http import HTTPStatus

from ipv4proxy.errors import Failure, ProtocolError, ProxyError
from ipv4proxy.protocols.events import (
    Connect,
    Destination,
    Event,
    Forward,
    ProtocolKind,
    Refused,
)
from ipv4proxy.protocols.host import parse_authority

__all__ = [
    "DESTINATION_FAILURES",
    "MAX_HEAD",
    "MAX_HEADERS",
    "HttpHandshake",
    "error_response",
    "silenced",
]

# 32 KiB holds the largest real proxy request heads (long cookies go to the origin in
# the same head) and matches nginx's default large_client_header_buffers (4 x 8k).
MAX_HEAD = 32768
# The same bound as CPython's http.client (_MAXHEADERS = 100).
MAX_HEADERS = 100

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])")
_HEADER_NAME = re.compile(_TOKEN)
_VALUE_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")

_CONNECT_OK = b"HTTP/1.1 200 Connection established\r\n\r\n"

# Failures of a well-formed CONNECT whose destination cannot or may not be reached, with
# the RFC 9209 Proxy-Status error type each is named by: the ones
# ``http.connect_failure`` "close" and "reset" signal by closing (`silenced`). The others
# keep their status: the client sent something wrong (400, 431, 408, 501), or must answer
# a challenge (407).
_PROXY_STATUS = {
    Failure.IPV6_LITERAL: "destination_ip_unroutable",
    Failure.DENIED: "http_request_denied",
    Failure.NXDOMAIN: 'dns_error; rcode="NXDOMAIN"',
    Failure.NODATA: 'dns_error; rcode="NOERROR"',
    Failure.DNS_FAILURE: "dns_error",
    Failure.REFUSED: "connection_refused",
    Failure.HOST_UNREACHABLE: "destination_ip_unroutable",
    Failure.NET_UNREACHABLE: "destination_ip_unroutable",
    Failure.CONNECT_FAILED: "destination_unavailable",
    Failure.TIMEOUT: "connection_timeout",
}
DESTINATION_FAILURES = frozenset(_PROXY_STATUS)


def silenced(protocol: ProtocolKind, error: ProxyError, connect_failure: str) -> bool:
    """True when ``error`` gets no answer but a closed connection in this mode.

    That is a CONNECT whose destination failed or was refused (`DESTINATION_FAILURES`)
    when ``connect_failure`` is "close" (FIN) or "reset" (RST): proxy agents that would
    replay a status to their caller (https-proxy-agent) then raise an error instead.
    """
    return (
        connect_failure != "status"
        and protocol is ProtocolKind.HTTP_CONNECT
        and error.failure in DESTINATION_FAILURES
    )


Header = tuple[bytes, bytes, bytes]  # (lower-cased name, name as sent, stripped value)


class _State(enum.Enum):
    READING = "reading"
    CONNECT = "connect"
    FORWARD = "forward"
    FAILED = "failed"


def _malformed(reason: str) -> ProtocolError:
    return ProtocolError(reason, failure=Failure.MALFORMED)


def _too_large(reason: str) -> ProtocolError:
    return ProtocolError(reason, failure=Failure.HEAD_TOO_LARGE)


class HttpHandshake:
    """Parses one HTTP proxy request head; see the module docstring for the rules."""

    __slots__ = ("_buf", "_max_head", "_max_headers", "_scanned", "_state", "protocol", "target")

    def __init__(self, *, max_head: int = MAX_HEAD, max_headers: int = MAX_HEADERS) -> None:
        # What the request asked for, as far as it was read: named in the log line even
        # when the request is refused.
        self.protocol = ProtocolKind.HTTP
        self.target = "-"
        self._buf = bytearray()
        self._max_head = max_head
        self._max_headers = max_headers
        self._scanned = 0  # bytes already searched for the end of the head
        self._state = _State.READING

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished head held so far."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Take client bytes; return [] until the head is whole, then [Connect | Forward],
        or [Refused] for a bad request.

        Raises RuntimeError if fed after it returned an event (the session must stop
        feeding then).
        """
        if self._state is not _State.READING:
            raise RuntimeError("HttpHandshake.feed() called after the handshake ended")
        try:
            return self._feed(data)
        except ProtocolError as error:
            self._state = _State.FAILED
            return [Refused(error)]

    def authenticated(self) -> list[Event]:
        """Never asked: HTTP credentials come in the request's event."""
        raise RuntimeError("HttpHandshake never asks for authentication")

    def _feed(self, data: bytes) -> list[Event]:
        buf = self._buf
        buf += data
        end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
        stop = len(buf) if end < 0 else end
        # An LF LF within the size limit fails at once, as it would byte by byte.
        if buf.find(b"\n\n", max(0, self._scanned - 1), min(stop, self._max_head + 1)) >= 0:
            raise _malformed("the request head has lines ending in a bare LF (expected CRLF)")
        self._scanned = len(buf)
        if end < 0:
            if len(buf) > self._max_head:
                raise _too_large(f"the request head is longer than {self._max_head} bytes")
            return []
        if end + 4 > self._max_head:
            raise _too_large(f"the request head is longer than {self._max_head} bytes")
        event = self._parse(bytes(buf[:end]), bytes(buf[end + 4 :]))
        self._state = _State.CONNECT if isinstance(event, Connect) else _State.FORWARD
        buf.clear()
        return [event]

    def _parse(self, head: bytes, early_data: bytes) -> Event:
        lines = head.split(b"\r\n")
        if len(lines) - 1 > self._max_headers:
            raise _too_large(f"the request has more than {self._max_headers} headers")
        if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1:
            raise _malformed("the request head has a bare CR or LF (lines must end in CRLF)")
        match = _REQUEST_LINE.fullmatch(lines[0])
        if match is None:
            raise _malformed("the request line is not 'METHOD target HTTP/1.x'")
        method, target_bytes, minor = match.groups()
        target = target_bytes.decode("ascii")  # the regex allowed only visible ASCII
        if method == b"CONNECT":
            self.protocol, self.target = ProtocolKind.HTTP_CONNECT, target
        else:
            self.protocol = ProtocolKind.HTTP_FORWARD
        headers = [_parse_header(line) for line in lines[1:]]
        _check_framing(headers, http10=minor == b"0")
        credentials = _credentials(headers)
        if method == b"CONNECT":
            destination = parse_authority(target)
            return Connect(ProtocolKind.HTTP_CONNECT, destination, early_data, credentials)
        authority, path = _absolute_target(target)
        self.target = authority if authority.rpartition(":")[2].isdigit() else authority + ":80"
        destination = parse_authority(authority, default_port=80)
        head = _checked_head(method, path, minor, destination, headers)
        return Forward(ProtocolKind.HTTP_FORWARD, destination, head, early_data, credentials)

    def success_reply(self, address: str, port: int) -> bytes:
        """The reply once the tunnel is open: 200 for CONNECT, nothing for forwarding."""
        return _CONNECT_OK if self._state is _State.CONNECT else b""

    def error_reply(self, error: ProxyError) -> bytes:
        """A complete ``Connection: close`` response for ``error``, reason in the body."""
        return error_response(error)


def error_response(error: ProxyError) -> bytes:
    """The HTTP response for ``error``: its status, and ``str(error)`` as a one-line body
    (for a failed destination, also as an RFC 9209 ``Proxy-Status`` header naming the
    error type, which curl -v and proxy-aware clients show)."""
    status = error.failure.http_status
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    reason = " ".join(str(error).splitlines())
    body = reason.encode("utf-8", "backslashreplace") + b"\n"
    extra = 'Proxy-Authenticate: Basic realm="ipv4proxy"\r\n' if status == 407 else ""
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        f"{_proxy_status(error.failure, reason)}"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _proxy_status(failure: Failure, reason: str) -> str:
    """``Proxy-Status: ipv4proxy; error=…; details="…"`` (RFC 9209) for a failed
    destination, else nothing. ``details`` is a structured-field string: printable ASCII,
    with ``\\`` and ``"`` escaped, anything else as ``?``."""
    kind = _PROXY_STATUS.get(failure)
    if kind is None:
        return ""
    details = "".join(
        "\\" + char if char in '\\"' else char if " " <= char <= "~" else "?" for char in reason
    )
    return f'Proxy-Status: ipv4proxy; error={kind}; details="{details}"\r\n'


def _parse_header(line: bytes) -> Header:
    if line[:1] in (b" ", b"\t"):
        raise _malformed("obsolete line folding in the request head (RFC 9112 5.2)")
    name, colon, value = line.partition(b":")
    if not colon or _HEADER_NAME.fullmatch(name) is None:
        raise _malformed("a header line is not 'Name: value' with a token name")
    value = value.strip(b" \t")
    if _VALUE_CTL.search(value) is not None:
        raise _malformed("a header value holds a control character")
    return name.lower(), name, value


def _check_framing(headers: list[Header], *, http10: bool) -> None:
    """Refuse the framing shapes that let a request be read two ways (RFC 9112 6)."""
    lengths = {value for key, _, value in headers if key == b"content-length"}
    encodings = [value for key, _, value in headers if key == b"transfer-encoding"]
    if lengths and encodings:
        raise _malformed("the request has both Content-Length and Transfer-Encoding")
    if lengths:
        if not all(v.isdigit() and len(v) <= 18 for v in lengths):
            raise _malformed("Content-Length is not a decimal number")
        if len({int(v) for v in lengths}) > 1:
            raise _malformed("the request has differing Content-Length values")
    if encodings:
        if http10:
            raise _malformed("Transfer-Encoding in an HTTP/1.0 request")
        if len(encodings) > 1 or encodings[0].lower() != b"chunked":
            raise _malformed("the only Transfer-Encoding accepted is 'chunked'")


def _credentials(headers: list[Header]) -> tuple[str, str] | None:
    """User and password from the first Proxy-Authorization: Basic, else None."""
    for key, _, value in headers:
        if key == b"proxy-authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() != b"basic":
                return None
            try:
                decoded = binascii.a2b_base64(token.strip(b" "), strict_mode=True)
            except binascii.Error:
                return None
            user, colon, password = decoded.partition(b":")
            if not colon:
                return None
            return (
                user.decode("utf-8", "surrogateescape"),
                password.decode("utf-8", "surrogateescape"),
            )
    return None


def _absolute_target(target: str) -> tuple[str, str]:
    """Authority and origin-form path of an absolute ``http://`` request target."""
    if target.startswith("/") or target == "*":
        raise _malformed(
            "this is a proxy: send an absolute URI (GET http://host/path) or use CONNECT"
        )
    scheme, sep, rest = target.partition("://")
    if not sep or _SCHEME.fullmatch(scheme) is None:
        raise _malformed("the request target is not an absolute http:// URI")
    scheme = scheme.lower()
    if scheme != "http":
        raise ProtocolError(f"use CONNECT for {scheme}://", failure=Failure.UNSUPPORTED)
    if "#" in rest:
        raise _malformed("the request target holds a fragment")
    cut = len(rest)
    for mark in ("/", "?"):
        found = rest.find(mark)
        if 0 <= found < cut:
            cut = found
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        raise _malformed("the URI holds userinfo; send credentials in Proxy-Authorization")
    return authority, path if path.startswith("/") else "/" + path


def _checked_head(
    method: bytes, path: str, minor: bytes, destination: Destination, headers: list[Header]
) -> bytes:
    """The head handed to the framer: origin-form, Host from the URI, other headers as sent."""
    host = destination.host if destination.port == 80 else str(destination)
    out = [method, b" ", path.encode("ascii"), b" HTTP/1.", minor, b"\r\nHost: "]
    out.append(host.encode("ascii"))
    for key, name, value in headers:
        if key != b"host":
            out += (b"\r\n", name, b": ", value)
    out.append(b"\r\n\r\n")
    return b"".join(out)
