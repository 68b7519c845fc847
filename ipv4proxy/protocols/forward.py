"""Plain-HTTP forwarding, sans-IO: every request of a connection framed, one at a time.

Job: stand between a client that sends absolute-form requests (``GET http://host/path``)
and the origin servers they name, on one client connection, request after request. Client
bytes go in (`receive_client`), and out come, in order, an `OriginRequest` to check, the
bytes to write to the origin, and `Wait` states; origin bytes go in (`receive_upstream`)
and out come the bytes to write to the client and a `ResponseEnd`.

Rules:
- Nothing the client sent reaches an origin as it came. Each request head is read by the
  hand parser (``protocols.http``: the same checks as the first request of any
  connection), then h11 reads the head it hands on and the body. The head sent upstream is
  rebuilt from h11's parsed request: origin-form target, ``Host`` from the URI, hop-by-hop
  headers (RFC 9110 7.6.1: Connection and the fields it names, Keep-Alive, TE, Trailer,
  Upgrade) and every ``Proxy-*`` header removed. The body is re-framed by h11 as the head
  declares it: Content-Length, or chunked with our own chunk sizes (RFC 9112 7.1);
  chunk extensions are dropped.
- Framing that can be read two ways is refused with MALFORMED (400), and the connection
  closes after the answer (RFC 9112 6.3, 9.6): both Content-Length and Transfer-Encoding,
  differing Content-Length values (``5`` and ``005`` too: RFC 9110 8.6 lets a recipient
  reject repeated values, and h11 compares them as written), a chunk size longer than 20
  hex digits or not hex, a chunk not followed by CRLF, a body cut short by EOF.
- One request at a time: the next request is read only once the response to this one has
  been sent to the client (pipelined bytes wait in h11's buffer, and the glue stops reading).
- Keep-alive (RFC 9112 9.3): the client connection stays open after a response when h11
  says both sides may go on (HTTP/1.1 without ``Connection: close``, a complete request
  and response); the upstream connection likewise. A later request for the same origin
  reuses the upstream connection when it is still open; a request for another origin gets
  a new upstream connection (`OriginRequest.reuse` is False), the old one is closed.
- Responses are parsed by h11 as the client of the origin and re-framed for our client
  (h11 as its server), hop-by-hop fields and ``Proxy-Authenticate`` removed. A response
  that is not valid HTTP/1.1 is BAD_RESPONSE (502) if nothing of it was sent yet.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from typing import cast

import h11

from ipv4proxy.errors import Failure, ProtocolError
from ipv4proxy.protocols.events import Destination, Forward, Refused
from ipv4proxy.protocols.http import MAX_HEAD, MAX_HEADERS, HttpHandshake

__all__ = ["ForwardFramer", "OriginRequest", "ResponseEnd", "Wait"]

# Never forwarded, either way (RFC 9110 7.6.1), besides the fields Connection names.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
# Named by Connection, still kept: h11 frames by them, and a request needs its Host.
_KEEP = frozenset({b"content-length", b"transfer-encoding", b"host"})
# An h11 reason is one line, but it quotes the client's bytes: keep the log line short.
_REASON_CHARS = 160
# h11's states of a client still sending its request; any other means it is complete
# (DONE, MUST_CLOSE, or MIGHT_SWITCH_PROTOCOL: it asked for an Upgrade, which is never
# passed on, so our response always declines it).
_SENDING = (h11.IDLE, h11.SEND_BODY)
_BYTEARRAY = re.compile(r"bytearray\((b'.*?')\)")


class Wait(enum.Enum):
    """Nothing to do for now: why."""

    NEED_DATA = "need data"  # read more from this side
    RESPONSE = "response"  # the request is complete: wait for its response
    CLOSED = "closed"  # this side has ended between messages


@dataclass(frozen=True, slots=True)
class OriginRequest:
    """A request head, parsed and checked, not sent yet: the glue checks policy, then calls
    `ForwardFramer.start_request` (dialling first when ``reuse`` is False)."""

    destination: Destination
    target: str  # host:port, as the access log names it
    credentials: tuple[str, str] | None = field(repr=False)
    reuse: bool  # the upstream connection to this origin is open and may be reused


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    """The response is complete: ``data`` ends it for the client; whether each connection
    may carry another request."""

    data: bytes
    keep_client: bool
    keep_upstream: bool


def _reason(prefix: str, exc: h11.ProtocolError) -> str:
    text = _BYTEARRAY.sub(r"\1", " ".join(str(exc).split()))
    if len(text) > _REASON_CHARS:
        text = text[:_REASON_CHARS] + "..."
    return f"{prefix}: {text}"


def _client_error(exc: h11.ProtocolError) -> ProtocolError:
    if exc.error_status_hint == 431:
        return ProtocolError(
            _reason("the request head is too large", exc), failure=Failure.HEAD_TOO_LARGE
        )
    return ProtocolError(_reason("malformed request framing", exc), failure=Failure.MALFORMED)


def _origin_error(exc: h11.ProtocolError) -> ProtocolError:
    return ProtocolError(
        _reason("the origin's response is not valid HTTP/1.1", exc), failure=Failure.BAD_RESPONSE
    )


def _without_hops(
    event: h11.Request | h11.Response | h11.InformationalResponse, *, response: bool
) -> list[tuple[bytes, bytes]]:
    """The headers of ``event`` as sent, minus hop-by-hop fields, Proxy-* ones and what
    Connection names."""
    headers = event.headers
    drop = set(_HOP_BY_HOP)
    for name, value in headers:
        if name == b"connection":
            drop.update(token.strip(b" \t").lower() for token in value.split(b","))
    drop -= _KEEP
    kept: list[tuple[bytes, bytes]] = []
    for raw_name, value in headers.raw_items():
        name = raw_name.lower()
        if name in drop or name.startswith(b"proxy-"):
            continue
        if response and name == b"transfer-encoding":
            continue  # our framing for our client is h11's choice (Content-Length or chunked)
        kept.append((raw_name, value))
    return kept


class ForwardFramer:
    """One forwarding client connection: see the module rules."""

    __slots__ = (
        "_client_eof",
        "_down",
        "_forward",
        "_head",
        "_inbox",
        "_max_head",
        "_max_headers",
        "_request",
        "_up",
        "in_flight",
        "origin",
        "responding",
        "target",
    )

    def __init__(self, *, max_head: int = MAX_HEAD, max_headers: int = MAX_HEADERS) -> None:
        self._max_head = max_head
        self._max_headers = max_headers
        self._head = HttpHandshake(max_head=max_head, max_headers=max_headers)
        self._inbox = bytearray()  # client bytes for the hand parser, not fed yet
        self._client_eof = False
        self._down: h11.Connection | None = None  # the client's current request (h11 server)
        self._up: h11.Connection | None = None  # the open upstream connection (h11 client)
        self._request: h11.Request | None = None  # parsed, waiting for start_request()
        self._forward: OriginRequest | None = None
        self.origin: Destination | None = None  # where _up goes
        self.in_flight = False  # a request went upstream; its response is not complete
        self.responding = False  # a response head went to the client
        self.target = "-"  # the current request's host:port

    # --- the client side

    def receive_client(self, data: bytes | memoryview) -> None:
        """Take bytes from the client (b"" is its EOF)."""
        if not data:
            self._client_eof = True
            if self._down is not None:
                self._down.receive_data(b"")
        elif self._down is not None:
            self._down.receive_data(cast(bytes, data))  # appended to a bytearray: any buffer
        else:
            self._inbox += data

    def buffered_head(self) -> int:
        """Bytes of an unfinished request head held (the glue charges them)."""
        return len(self._inbox) + self._head.buffered if self._down is None else 0

    def buffered_body(self) -> int:
        """Client bytes h11 holds past a complete request (pipelined), while it waits."""
        if self._down is None:
            return 0
        return len(self._down.trailing_data[0])

    def next_client(self) -> OriginRequest | bytes | Wait:
        """The next thing to do for client bytes: a request to check, bytes for the origin,
        or a `Wait`. Raises ProtocolError (400/431/501 and the like): answer it and close.
        """
        down = self._down
        if down is None or self._request is not None:
            return self._next_head()
        if down.their_state not in _SENDING:
            return Wait.RESPONSE
        try:
            event = down.next_event()
        except h11.RemoteProtocolError as exc:
            raise _client_error(exc) from None
        up = self._up
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return Wait.RESPONSE if down.their_state not in _SENDING else Wait.NEED_DATA
        if isinstance(event, h11.ConnectionClosed):
            return Wait.CLOSED
        assert up is not None  # set by start_request(), before any body event
        try:
            if isinstance(event, h11.Data):
                return up.send(h11.Data(data=event.data))
            if isinstance(event, h11.EndOfMessage):
                return up.send(h11.EndOfMessage(headers=event.headers))
        except h11.LocalProtocolError as exc:
            raise _client_error(exc) from None
        raise ProtocolError(f"unexpected {type(event).__name__} from the client")

    def receive_first(self, request: Forward) -> None:
        """Take the connection's first request, whose head the session's handshake has
        already read and checked (``head`` and what followed it, ``early_data``)."""
        self._begin(request)

    def _next_head(self) -> OriginRequest | Wait:
        if self._request is not None:  # the first request, given whole
            return self._pending()
        if self._inbox:
            data = bytes(self._inbox)
            self._inbox.clear()
            events = self._head.feed(data)
        else:
            events = []
        if not events:
            return Wait.CLOSED if self._client_eof else Wait.NEED_DATA
        [event] = events
        if isinstance(event, Refused):
            raise event.error
        if not isinstance(event, Forward):  # a CONNECT: the only other event a head gives
            raise ProtocolError(
                "CONNECT on a connection that forwards http:// requests: open a new connection",
                failure=Failure.MALFORMED,
            )
        self._head = HttpHandshake(max_head=self._max_head, max_headers=self._max_headers)
        self._begin(event)
        return self._pending()

    def _begin(self, event: Forward) -> None:
        """Let h11 read the checked head and what follows it."""
        down = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
        down.receive_data(event.head + event.early_data)
        if self._client_eof:
            down.receive_data(b"")
        destination = event.destination
        self.target = f"{destination.host}:{destination.port}"
        self._down = down
        self._forward = OriginRequest(destination, self.target, event.credentials, reuse=False)
        try:
            request = down.next_event()
        except h11.RemoteProtocolError as exc:
            self._forward = None
            raise _client_error(exc) from None
        if not isinstance(request, h11.Request):  # the checked head is always whole
            raise ProtocolError("the request head could not be parsed", failure=Failure.MALFORMED)
        self._request = request

    def _pending(self) -> OriginRequest:
        forward = self._forward
        assert forward is not None
        reuse = self._up is not None and forward.destination == self.origin
        self._forward = dataclasses.replace(forward, reuse=reuse)
        return self._forward

    def start_request(self, *, fresh: bool) -> bytes:
        """The head to send upstream for the request `next_client` returned; ``fresh``: on
        a new upstream connection (the old one, if any, is forgotten)."""
        request, forward = self._request, self._forward
        if request is None or forward is None:
            raise RuntimeError("no request to start")
        self._request = self._forward = None
        if fresh or self._up is None:
            self._up = h11.Connection(h11.CLIENT)
            self.origin = forward.destination
        self.in_flight, self.responding = True, False
        headers = _without_hops(request, response=False)
        try:
            return self._up.send(
                h11.Request(method=request.method, target=request.target, headers=headers)
            )
        except h11.LocalProtocolError as exc:
            raise _client_error(exc) from None

    # --- the upstream side

    def receive_upstream(self, data: bytes | memoryview) -> None:
        """Take bytes from the origin (b"" is its EOF)."""
        if self._up is not None:
            self._up.receive_data(cast(bytes, data))  # appended to a bytearray: any buffer

    def drop_upstream(self) -> None:
        """The upstream connection is gone: the next request dials again."""
        self._up = None
        self.origin = None

    def next_upstream(self) -> bytes | ResponseEnd | Wait:
        """The next thing to do for origin bytes: bytes for the client, the `ResponseEnd`,
        or a `Wait`. Raises ProtocolError BAD_RESPONSE: answer 502 if nothing was sent
        yet (`responding` is False), else cut the client connection."""
        up, down = self._up, self._down
        if up is None:
            return Wait.CLOSED
        try:
            event = up.next_event()
        except h11.RemoteProtocolError as exc:
            raise _origin_error(exc) from None
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return Wait.NEED_DATA
        if isinstance(event, h11.ConnectionClosed):
            return Wait.CLOSED
        if down is None or not self.in_flight:
            raise ProtocolError(
                "the origin sent bytes with no request", failure=Failure.BAD_RESPONSE
            )
        try:
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    raise ProtocolError(
                        "the origin switched protocols unasked", failure=Failure.BAD_RESPONSE
                    )
                headers = _without_hops(event, response=True)
                return down.send(
                    h11.InformationalResponse(
                        status_code=event.status_code, headers=headers, reason=event.reason
                    )
                )
            if isinstance(event, h11.Response):
                self.responding = True
                headers = _without_hops(event, response=True)
                return down.send(
                    h11.Response(
                        status_code=event.status_code, headers=headers, reason=event.reason
                    )
                )
            if isinstance(event, h11.Data):
                return down.send(h11.Data(data=event.data))
            if isinstance(event, h11.EndOfMessage):
                return self._end(up, down, down.send(h11.EndOfMessage(headers=event.headers)))
        except h11.LocalProtocolError as exc:
            raise _origin_error(exc) from None
        raise ProtocolError(
            f"unexpected {type(event).__name__} from the origin", failure=Failure.BAD_RESPONSE
        )

    def _end(self, up: h11.Connection, down: h11.Connection, data: bytes) -> ResponseEnd:
        self.in_flight = self.responding = False
        keep_up = up.our_state is h11.DONE and up.their_state is h11.DONE
        if keep_up:
            up.start_next_cycle()
        else:
            self.drop_upstream()
        keep_client = down.our_state is h11.DONE and down.their_state is h11.DONE
        if keep_client:
            self.target = "-"  # until the next head names one
            rest, closed = down.trailing_data
            self._inbox += rest
            self._client_eof = self._client_eof or closed
            self._down = None
        return ResponseEnd(data, keep_client, keep_up)
