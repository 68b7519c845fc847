"""One client connection's whole life before the relay, sans-IO: inputs in, commands out.

Job: everything the proxy decides about a client connection, made without I/O so a table
test can drive it (h11's and mitmproxy's habit). The glue (``server``) calls one input
method per thing that happened and carries out the commands it gets back, in order:

    inputs                          commands
    accepted()                      Send(bytes)            write to the client
    over_limit(reason)              Close(reset)           close (an RST when reset)
    received(bytes)                 LogRefusal(error, …)   the refusal's access line
    over_budget(held)               OpenUpstream(dest)     resolve the destination
    timed_out()                     Dial(addresses)        connect to these addresses
    resolved(route)                 StartRelay(first)      hand the client to the relay,
    failed(error)                                          ``first`` goes upstream first
    connected(address, port)        StartForward(request)  hand the client to the forwarder

Rules:
- The first byte picks the handshake (``handshake.new_handshake``); a byte no protocol
  starts with is refused at once (``sniff``).
- Every check, in one order: the client's address (``accepted``, before anything is
  read); credentials (SOCKS5 when it authenticates, else when the request is complete;
  SOCKS4 cannot carry a password); the destination's port and name
  (``Rules.destination``); after resolution, the name the search list made of it and
  each address (``resolved``). Nothing is dialled that a rule refuses.
- Every refusal is one answer (the handshake's ``error_reply``), a close and one log
  command, and nothing after it: later inputs give no command. A CONNECT whose
  destination fails or is refused gets no answer in the ``connect_failure`` modes "close"
  (FIN) and "reset" (RST) (``http.silenced``).
- The session keeps the settings and rules it was made with: a reload changes what later
  connections get, never an open one.
- Allocation matters (every tunnel passes here): commands are small slotted objects,
  inputs with nothing to do return one shared empty tuple, and the common path of a
  CONNECT is four inputs and four commands (OpenUpstream, Dial, Send, StartRelay).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ipv4proxy.errors import Failure, PolicyDenied, ProtocolError, ProxyError
from ipv4proxy.protocols.events import (
    Authenticate,
    Connect,
    Destination,
    Event,
    Forward,
    ProtocolKind,
    Refused,
    Send,
)
from ipv4proxy.protocols.handshake import Handshake, new_handshake
from ipv4proxy.protocols.http import silenced
from ipv4proxy.protocols.sniff import foreign

__all__ = [
    "NOT_READ",
    "Close",
    "Command",
    "Dial",
    "LogRefusal",
    "OpenUpstream",
    "RouteView",
    "Rules",
    "Session",
    "Settings",
    "StartForward",
    "StartRelay",
    "Verdict",
]


# --- what the session needs to know -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """The settings of one listener under one configuration (``limits.*``,
    ``http.connect_failure``): built once per configuration, shared by its sessions."""

    listener: int = 0
    max_head: int = 32768
    handshake_timeout: float = 10.0
    handshake_memory: int = 16 * 1024 * 1024
    connect_failure: str = "reset"


class Verdict(Protocol):
    """A rule's answer (``policy.Decision``)."""

    @property
    def allowed(self) -> bool: ...

    def error(self) -> PolicyDenied: ...


class Rules(Protocol):
    """The access rules (``policy.Policy``): pure, and asked in the order of the module
    rules."""

    @property
    def auth_required(self) -> bool: ...

    def client(self, listener: int, address: str) -> Verdict: ...

    def credentials(
        self, credentials: tuple[str, str] | None, *, protocol: ProtocolKind
    ) -> Verdict: ...

    def destination(self, destination: Destination) -> Verdict: ...

    def address(self, address: str, port: int) -> Verdict: ...

    def resolved_name(self, name: str, resolved: str, port: int) -> Verdict: ...

    def addresses(
        self, addresses: Sequence[str], port: int, name: str
    ) -> tuple[tuple[str, ...], Verdict]: ...


class RouteView(Protocol):
    """What the session reads of a resolved route (``net.upstream.Route``)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def addresses(self) -> tuple[str, ...]: ...

    @property
    def literal(self) -> bool: ...

    @property
    def resolved(self) -> str: ...


# --- commands ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Close:
    """Close the client connection (after what was sent); ``reset``: abortively (RST)."""

    reset: bool = False


@dataclass(frozen=True, slots=True)
class LogRefusal:
    """Count the refusal and write its access line (``protocol`` "-" before any request)."""

    error: ProxyError
    protocol: str
    target: str


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Resolve ``destination`` and hand the route to `Session.resolved`; stop reading the
    client until the tunnel is open (what it sends meanwhile is for the destination)."""

    destination: Destination


@dataclass(frozen=True, slots=True)
class Dial:
    """Connect to the first of ``addresses`` that answers (the route's, narrowed by the
    rules); then `Session.connected`, or `Session.failed`."""

    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StartRelay:
    """Hand the client connection to the relay; ``first`` goes upstream before anything."""

    first: bytes


@dataclass(frozen=True, slots=True)
class StartForward:
    """Hand the client connection to the plain-HTTP forwarder, ``request`` its first."""

    request: Forward


Command = Send | Close | LogRefusal | OpenUpstream | Dial | StartRelay | StartForward

# Nothing to do (most inputs while a request is incomplete), and the relay start of a
# request with no early data (most): one object for all of them.
_NOTHING: tuple[Command, ...] = ()
_RELAY = StartRelay(b"")
_CLOSE = Close()
_RESET = Close(reset=True)
# The protocol and target of a connection refused before any byte of a request.
NOT_READ = "-"


class Session:
    """One client connection from accept until its relay starts; see the module rules."""

    __slots__ = (
        "_authenticated",
        "_done",
        "_handshake",
        "_request",
        "host",
        "rules",
        "settings",
    )

    def __init__(self, settings: Settings, rules: Rules, host: str) -> None:
        """``host`` is the client's address (what ``listeners[].clients`` is matched on)."""
        self.settings = settings
        self.rules = rules
        self.host = host
        self._handshake: Handshake | None = None
        self._request: Connect | None = None
        self._authenticated = False
        self._done = False

    # --- what the glue reads

    @property
    def protocol(self) -> str:
        """The protocol as far as it was read, "-" before the first byte."""
        handshake = self._handshake
        return NOT_READ if handshake is None else handshake.protocol

    @property
    def target(self) -> str:
        handshake = self._handshake
        return NOT_READ if handshake is None else handshake.target

    @property
    def waiting(self) -> bool:
        """The request is not complete yet: what the client sent is held by the handshake
        (and counts against ``limits.handshake_memory``)."""
        return not self._done and self._request is None

    # --- inputs

    def accepted(self) -> Sequence[Command]:
        """The connection was accepted: refused at once (no reply, not counted) when the
        client's address is outside the listener's ``clients``; else nothing to do yet."""
        verdict = self.rules.client(self.settings.listener, self.host)
        if verdict.allowed:
            return _NOTHING
        return self._refuse(verdict.error())

    def over_limit(self, reason: str) -> Sequence[Command]:
        """The connection is over a connection limit: closed, no reply."""
        error = ProxyError(f"too many connections: {reason}", failure=Failure.TOO_MANY_CONNECTIONS)
        return self._refuse(error)

    def received(self, data: bytes) -> Sequence[Command]:
        """Client bytes (never empty)."""
        if self._done or self._request is not None:
            return _NOTHING
        handshake = self._handshake
        if handshake is None:
            refusal = foreign(data[0])
            if refusal is not None:  # no protocol starts so: refused now, not at the timeout
                self._done = True
                out: list[Command] = [Send(refusal.reply)] if refusal.reply else []
                out += (_CLOSE, LogRefusal(refusal.error, NOT_READ, NOT_READ))
                return out
            settings = self.settings
            handshake = new_handshake(
                data[0], max_head=settings.max_head, require_auth=self.rules.auth_required
            )
            self._handshake = handshake
        return self._act(handshake, handshake.feed(data))

    def over_budget(self, held: int) -> Sequence[Command]:
        """Taking this request's bytes would make the unfinished requests of the process
        hold more than ``limits.handshake_memory`` (they hold ``held`` now)."""
        budget = self.settings.handshake_memory
        error = ProxyError(
            f"unfinished requests hold {held} bytes (limits.handshake_memory {budget}): try again",
            failure=Failure.OVERLOADED,
        )
        return self._refuse(error)

    def timed_out(self) -> Sequence[Command]:
        """``limits.handshake_timeout`` ran out before the request was complete."""
        if self._done or self._request is not None:
            return _NOTHING
        timeout = self.settings.handshake_timeout
        error = ProtocolError(
            f"request not complete after {timeout:g} s", failure=Failure.HANDSHAKE_TIMEOUT
        )
        return self._refuse(error)

    def resolved(self, route: RouteView) -> Sequence[Command]:
        """The destination's route (after `OpenUpstream`): `Dial` what the rules allow."""
        try:
            addresses = self.allowed_addresses(route)
        except PolicyDenied as error:
            return self._refuse(error)
        return [Dial(addresses)]

    def failed(self, error: ProxyError) -> Sequence[Command]:
        """Resolving or dialling the destination failed."""
        return self._refuse(error)

    def connected(self, address: str, port: int) -> Sequence[Command]:
        """The upstream is connected, from the local ``address``:``port``: the success
        reply, then the relay (the reply goes before any upstream byte can)."""
        request = self._request
        handshake = self._handshake
        if self._done or request is None or handshake is None:
            raise RuntimeError("Session.connected() without an open request")
        self._done = True
        first = request.early_data
        relay = StartRelay(first) if first else _RELAY
        return [Send(handshake.success_reply(address, port)), relay]

    # --- the checks, also asked by the forwarder for each of its requests

    def check_request(
        self,
        protocol: ProtocolKind,
        credentials: tuple[str, str] | None,
        destination: Destination,
    ) -> PolicyDenied | None:
        """Credentials (unless SOCKS5 authenticated already), then the destination rules;
        the refusal, or None."""
        rules = self.rules
        if not self._authenticated:
            verdict = rules.credentials(credentials, protocol=protocol)
            if not verdict.allowed:
                return verdict.error()
        verdict = rules.destination(destination)
        return None if verdict.allowed else verdict.error()

    def allowed_addresses(self, route: RouteView) -> tuple[str, ...]:
        """The route's addresses the rules allow, in order; raises PolicyDenied when none
        is (or the name the search list made of the destination is refused)."""
        rules = self.rules
        if route.literal:
            verdict = rules.address(route.host, route.port)
            if not verdict.allowed:
                raise verdict.error()
            return route.addresses
        if route.resolved:  # the search list made it another name: judge that one too
            verdict = rules.resolved_name(route.host, route.resolved, route.port)
            if not verdict.allowed:
                raise verdict.error()
        addresses, verdict = rules.addresses(route.addresses, route.port, route.host)
        if not verdict.allowed:
            raise verdict.error()
        return addresses

    # --- inside

    def _act(self, handshake: Handshake, events: list[Event]) -> Sequence[Command]:
        out: list[Command] = []
        pending = events
        index = 0
        while index < len(pending):
            item = pending[index]
            index += 1
            if isinstance(item, Send):
                out.append(item)
            elif isinstance(item, Connect):
                denied = self.check_request(item.protocol, item.credentials, item.destination)
                if denied is not None:
                    out += self._refuse(denied)
                    return out
                self._request = item
                out.append(OpenUpstream(item.destination))
                return out
            elif isinstance(item, Forward):
                # The forwarder checks every request, this first one included.
                self._done = True
                out.append(StartForward(item))
                return out
            elif isinstance(item, Refused):
                out += self._refuse(item.error)
                return out
            elif isinstance(item, Authenticate):
                credentials = (item.username, item.password)
                verdict = self.rules.credentials(credentials, protocol=handshake.protocol)
                if not verdict.allowed:
                    out += self._refuse(verdict.error())  # RFC 1929 status 0x01
                    return out
                self._authenticated = True
                # Authenticate is the last event of its feed: what follows comes now.
                pending, index = handshake.authenticated(), 0
        return out

    def _refuse(self, error: ProxyError) -> Sequence[Command]:
        """The handshake's answer for ``error`` (if any), the close and the log line."""
        if self._done:
            return _NOTHING
        self._done = True
        handshake = self._handshake
        log = LogRefusal(error, self.protocol, self.target)
        if handshake is None:  # refused before a byte of a request: no reply
            return [_CLOSE, log]
        mode = self.settings.connect_failure
        if silenced(handshake.protocol, error, mode):
            return [_RESET if mode == "reset" else _CLOSE, log]
        return [Send(handshake.error_reply(error)), _CLOSE, log]
