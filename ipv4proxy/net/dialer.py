"""IPv4 dialing: race a destination's A records, RFC 8305 style, under one timeout.

Why not aiohappyeyeballs: it folds the attempts' errors into one message string, and this
proxy must name every address and the errno each failed with (for the client's answer, the
log line and the per-cause metrics). The race itself is short, so it lives here.

Rules (RFC 8305 section 5):
- Sockets are AF_INET only; an address that is not an IPv4 literal never reaches connect().
- Attempts start ``attempt_delay`` apart (250 ms by default), or at once when the previous
  attempt has failed; earlier attempts stay alive; the first to connect wins and every
  other socket is closed.
- One ``connect_timeout`` covers the whole race. On failure the error names every address
  tried and why it failed; the failure is that of the most telling error (a refusal says
  more than a timeout).
- An attempt is a plain TCP connect unless the caller passes its own (a parent proxy's
  connect and handshake): the race, the timeout and the error report are the same.

`Dialer` adds memory (``breaker``): per name the address that last connected goes first,
and an address whose breaker is open sits out while the name has others. Its one way to
a relay-ready upstream is `Dialer.connect`, which always gives the transport of the
protocol it is handed (one address: connected and made in one step; several: raced, and
the winner's socket wrapped); `Dialer.dial` races for a socket (a parent proxy's
handshake runs on it before it is wrapped).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn, Protocol, cast

from ipv4proxy.config import DialerConfig
from ipv4proxy.errors import DialError, Failure, ProxyError, UpstreamTimeout, failure_for_errno
from ipv4proxy.log import event
from ipv4proxy.net.breaker import Breaker, Clock, Endpoint, Memory

__all__ = ["Attempt", "Dialer", "Opening", "adopt", "describe_attempts", "dial"]

log = logging.getLogger("ipv4proxy.dialer")

# One attempt: (IPv4 address, port) -> a connected socket, or OSError.
Attempt = Callable[[str, int], Coroutine[Any, Any, socket.socket]]
# Told of each attempt that ended: (address, None) for a success, (address, error) otherwise.
AttemptHook = Callable[[str, OSError | None], None]

# When attempts fail differently, the answer reports the first of these that occurred:
# what the destination said beats what the path did, which beats silence.
_PRECEDENCE = (
    Failure.DENIED,
    Failure.REFUSED,
    Failure.HOST_UNREACHABLE,
    Failure.NET_UNREACHABLE,
    Failure.CONNECT_FAILED,
    Failure.TIMEOUT,
)


def _errno_name(error: OSError) -> str:
    if isinstance(error, ProxyError):
        return str(error)  # a parent's answer: its reason names the parent and what it said
    return errno.errorcode.get(error.errno or 0, type(error).__name__)


def failure_of(error: OSError) -> Failure:
    """The failure one attempt's error stands for."""
    if isinstance(error, ProxyError):
        return error.failure
    return failure_for_errno(error.errno)


class _Expired(Exception):
    """A `_tcp_connect` whose own deadline ran out (told apart from a connect's errors)."""


def _writable(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(_Expired())


async def tcp_connect(address: str, port: int) -> socket.socket:
    """A connected non-blocking AF_INET socket to ``address``:``port``; raises OSError.

    A plain non-blocking ``connect()`` and a writer callback, not ``loop.sock_connect()``:
    uvloop's sock_connect passes the address through ``getaddrinfo()`` in libuv's thread
    pool even for an IP literal (a thread hand-off per tunnel, 13% of the proxy's CPU when
    opening tunnels at full rate, measured with py-spy).
    """
    return await _tcp_connect(address, port, None)


async def _tcp_connect(address: str, port: int, seconds: float | None) -> socket.socket:
    """`tcp_connect`; with ``seconds``, raises _Expired when the connect is still pending
    after that long. The deadline is a timer on the writer's future, not asyncio.timeout()
    (a Timeout object, a task-cancel round and a reschedule: 4% per tunnel, py-spy)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.connect((address, port))
        except BlockingIOError:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            fd = sock.fileno()
            loop.add_writer(fd, _writable, waiter)
            timer = None if seconds is None else loop.call_later(seconds, _expire, waiter)
            try:
                await waiter
            finally:
                loop.remove_writer(fd)
                if timer is not None:
                    timer.cancel()
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code != 0:
                raise OSError(code, f"Connect call failed {(address, port)}") from None
    except BaseException:
        sock.close()
        raise
    return sock


class Opening(Protocol):
    """The protocol a transport connect makes its transport for (a relay `Pump`):
    ``transport`` is None until its connection_made has run."""

    transport: asyncio.Transport | None


# Module-level: subscripting Callable in the call would cost ~1 us per connect.
_Factory = Callable[[], asyncio.BaseProtocol]


class _Deadline:
    """The connect_timeout of `_transport_connect`: cancels the connecting task when it runs
    out, unless the protocol already has its transport (the tunnel is then live)."""

    __slots__ = ("expired", "protocol", "task")

    def __init__(self, task: asyncio.Task[Any], protocol: Opening) -> None:
        self.task = task
        self.protocol = protocol
        self.expired = False

    def __call__(self) -> None:
        if self.protocol.transport is None:
            self.expired = True
            self.task.cancel()


async def _transport_connect(
    address: str, port: int, seconds: float, protocol: Opening
) -> asyncio.Transport:
    """Connect to ``address``:``port`` and make the transport for ``protocol`` in one step:
    uvloop's create_connection() with an IPv4 literal and AF_INET (no getaddrinfo, no Python
    socket object, no writer callback, no second step wrapping the socket in a transport).
    Raises OSError, or _Expired when the connect is still pending after ``seconds``: the
    timer cancels the task, as asyncio.timeout() would, without its Timeout object."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    deadline = _Deadline(task, protocol)
    timer = loop.call_later(seconds, deadline)
    factory = cast(_Factory, lambda: protocol)
    try:
        transport, _ = await loop.create_connection(factory, address, port, family=socket.AF_INET)
    except asyncio.CancelledError:
        if deadline.expired and task.uncancel() == 0:
            raise _Expired from None
        raise
    finally:
        timer.cancel()
    return transport


def _require_ipv4(address: str) -> None:
    """Raise ValueError unless ``address`` is a dotted-quad IPv4 literal: a programming
    error, not wire input, so it fails loudly. inet_pton accepts exactly what
    ipaddress.IPv4Address accepts from a string (no leading zeros, four octets) at a tenth
    of the cost (it was 4% of the proxy's CPU per tunnel)."""
    try:
        socket.inet_pton(socket.AF_INET, address)
    except (OSError, TypeError):
        ipaddress.IPv4Address(address)  # raises ValueError, with ipaddress's own reason
        raise ValueError(f"{address!r} is not an IPv4 address") from None


def _error_of(task: asyncio.Task[socket.socket]) -> OSError:
    exc = task.exception()
    if isinstance(exc, OSError):
        return exc
    # uvloop may raise RuntimeError where asyncio raises OSError.
    return OSError(errno.ECONNABORTED, str(exc))


async def dial(
    addresses: Sequence[str],
    port: int,
    config: DialerConfig,
    *,
    name: str = "",
    via: str = "",
    connect: Attempt = tcp_connect,
    on_attempt: AttemptHook | None = None,
) -> tuple[socket.socket, str]:
    """Connect to the first of ``addresses`` (IPv4 literals) that answers on ``port``.

    ``name`` (the destination as the client gave it) and ``via`` (a parent proxy's label)
    are only for messages; ``connect`` makes
    one attempt; ``on_attempt`` hears how each attempt that ran to its end ended (losers
    cancelled after a win are not reported). Returns the connected socket and the address
    used. Raises DialError (every attempt failed; ``attempts`` lists them) or UpstreamTimeout
    (connect_timeout ran out).
    """
    for address in addresses:
        _require_ipv4(address)
    target = _target(name, port, via)
    if len(addresses) == 1:
        return await _dial_one(
            addresses[0], port, config, target, connect=connect, on_attempt=on_attempt
        )
    loop = asyncio.get_running_loop()
    queue = list(addresses)
    running: dict[asyncio.Task[socket.socket], str] = {}
    failed: list[tuple[str, OSError]] = []
    try:
        async with asyncio.timeout(config.connect_timeout):
            while queue or running:
                if queue:
                    address = queue.pop(0)
                    task = loop.create_task(connect(address, port), name=f"dial {address}")
                    running[task] = address
                done, _ = await asyncio.wait(
                    running,
                    timeout=config.attempt_delay if queue else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                winner = None
                for task in done:
                    address = running.pop(task)
                    if task.exception() is None and winner is None:
                        winner = (task.result(), address)
                    elif task.exception() is None:
                        task.result().close()
                    else:
                        failed.append((address, _error_of(task)))
                        if on_attempt is not None:
                            on_attempt(address, failed[-1][1])
                if winner is not None and on_attempt is not None:
                    on_attempt(winner[1], None)
                if winner is not None:
                    return winner
    except TimeoutError:
        pending = tuple(
            (a, OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))) for a in running.values()
        )
        attempts = (*failed, *pending)
        if on_attempt is not None:
            for address, error in pending:
                on_attempt(address, error)
        raise _timeout_error(target, config, attempts) from None
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
            for task in running:  # a connect that completed as it was being cancelled
                if not task.cancelled() and task.exception() is None:
                    task.result().close()
    raise _dial_error(target, tuple(failed))


async def _dial_one(
    address: str,
    port: int,
    config: DialerConfig,
    target: str,
    *,
    connect: Attempt,
    on_attempt: AttemptHook | None,
) -> tuple[socket.socket, str]:
    """`dial()` of a single address, with the same outcomes and reports, but no task and no
    `asyncio.wait()`: most destinations have one address, and the race's machinery was a
    fifth of the proxy's CPU per tunnel when opening tunnels at full rate (py-spy)."""
    expired = False
    try:
        if connect is tcp_connect:  # the usual case: its own timer, no asyncio.timeout()
            sock = await _tcp_connect(address, port, config.connect_timeout)
        else:
            timeout = asyncio.timeout(config.connect_timeout)
            try:
                async with timeout:
                    sock = await connect(address, port)
            finally:
                expired = timeout.expired()
    except Exception as exc:  # as dial() takes any attempt's exception
        _one_failed(address, config, target, exc, expired=expired, on_attempt=on_attempt)
    if on_attempt is not None:
        on_attempt(address, None)
    return sock, address


def _one_failed(
    address: str,
    config: DialerConfig,
    target: str,
    exc: Exception,
    *,
    expired: bool,
    on_attempt: AttemptHook | None,
) -> NoReturn:
    """Report and raise the failure of a single-address dial, as `dial()` would."""
    expired = expired or isinstance(exc, _Expired)
    if expired:
        error: OSError = OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
    elif isinstance(exc, OSError):
        error = exc
    else:  # uvloop may raise RuntimeError where asyncio raises OSError
        error = OSError(errno.ECONNABORTED, str(exc))
    if on_attempt is not None:
        on_attempt(address, error)
    attempts = ((address, error),)
    if expired:
        raise _timeout_error(target, config, attempts) from None
    raise _dial_error(target, attempts) from None


def _target(name: str, port: int, via: str = "") -> str:
    """The destination as an error names it: ``name:port [via parent P]``."""
    target = f"{name}:{port}" if name else f"port {port}"
    return f"{target} via parent {via}" if via else target


def _timeout_error(
    target: str, config: DialerConfig, attempts: tuple[tuple[str, OSError], ...]
) -> UpstreamTimeout:
    """The error of a race that connect_timeout ended."""
    return UpstreamTimeout(
        f"connect to {target} timed out after {config.connect_timeout:g} s ({_describe(attempts)})",
        attempts=attempts,
    )


def _dial_error(target: str, attempts: tuple[tuple[str, OSError], ...]) -> DialError:
    """The error of a race in which every attempt failed: the most telling failure."""
    failures = {failure_of(error) for _, error in attempts}
    failure = next((f for f in _PRECEDENCE if f in failures), Failure.CONNECT_FAILED)
    return DialError(
        f"connect to {target} failed ({_describe(attempts)})", failure=failure, attempts=attempts
    )


class Dialer:
    """`dial()` with memory: the last good address first, open breakers left out."""

    def __init__(self, config: DialerConfig, *, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.memory = Memory()
        self.breaker = Breaker(
            threshold=config.breaker_failures, cooldown=config.breaker_cooldown, clock=clock
        )

    async def dial(
        self,
        name: str,
        addresses: Sequence[str],
        port: int,
        *,
        connect: Attempt = tcp_connect,
        via: str = "",
        track: bool = True,
    ) -> tuple[socket.socket, str]:
        """Race ``addresses`` of ``name`` (ordered and filtered by memory) on ``port``.

        ``via`` names a parent proxy in messages; ``track=False`` leaves the
        breakers alone (through a parent, a failure may be the parent's, not the address's).
        Raises as `dial()`.
        """
        if len(addresses) == 1:
            # Memory and breakers order and filter alternatives; a lone address is tried
            # even when its breaker is open (Breaker.select keeps it), so skip the work.
            chosen: Sequence[str] = addresses
        else:
            ordered = self.memory.order(name, addresses)
            usable = set(self.breaker.select([Endpoint(a, port) for a in ordered]))
            chosen = [a for a in ordered if Endpoint(a, port) in usable]
            if len(chosen) < len(ordered):
                skipped = [a for a in ordered if a not in chosen]
                log.debug("%s: skipping %s (breaker open)", name, ", ".join(skipped))

        def report(address: str, error: OSError | None) -> None:
            if track:
                self._report(name, Endpoint(address, port), error)

        sock, address = await dial(
            chosen, port, self.config, name=name, via=via, connect=connect, on_attempt=report
        )
        self.memory.connected(name, address)
        return sock, address

    async def connect(
        self, name: str, addresses: Sequence[str], port: int, protocol: Opening
    ) -> tuple[asyncio.Transport, str]:
        """Connect directly to the first of ``addresses`` of ``name`` that answers on
        ``port``, with the transport made for ``protocol``; returns it and the address.

        One address (most destinations) connects and makes the transport in one step
        (`_transport_connect`); several race as in `dial` and the winner is wrapped. Either
        way ``protocol``'s connection_made has run before this returns, and the transport
        reads from then on; the reports, breaker, memory and errors are `dial`'s. Raises as
        `dial()`."""
        if len(addresses) != 1:
            sock, address = await self.dial(name, addresses, port)
            return await adopt(sock, protocol), address
        address = addresses[0]
        _require_ipv4(address)
        try:
            transport = await _transport_connect(
                address, port, self.config.connect_timeout, protocol
            )
        except Exception as exc:  # as dial() takes any attempt's exception

            def report(address: str, error: OSError | None) -> None:
                self._report(name, Endpoint(address, port), error)

            _one_failed(
                address, self.config, _target(name, port), exc, expired=False, on_attempt=report
            )
        self._report(name, Endpoint(address, port), None)
        self.memory.connected(name, address)
        return transport, address

    # Read-only views and a race without a tunnel, for DNS mode's shaping (net/dnsshaper.py).

    def last_good(self, name: str) -> str | None:
        """The address of ``name`` that last connected through this dialer, or None."""
        return self.memory.last(name)

    def breaker_open(self, address: str, port: int) -> bool:
        """Whether ``address``:``port`` is left out of races now (its breaker is open)."""
        return self.breaker.is_open(Endpoint(address, port))

    async def race(
        self, name: str, addresses: Sequence[str], port: int, seconds: float
    ) -> tuple[str | None, tuple[tuple[str, OSError], ...]]:
        """Race ``addresses`` of ``name`` on ``port`` for at most ``seconds`` and close the
        winner's socket at once: which address answers. Each attempt tells the breakers as
        a tunnel's would; the memory is left alone (no tunnel ran). Returns the winner
        (None when every attempt failed or the time ran out) and the failed attempts."""
        config = dataclasses.replace(self.config, connect_timeout=seconds)
        failed: list[tuple[str, OSError]] = []

        def report(address: str, error: OSError | None) -> None:
            self._report(name, Endpoint(address, port), error)
            if error is not None:
                failed.append((address, error))

        try:
            sock, address = await dial(addresses, port, config, name=name, on_attempt=report)
        except (DialError, UpstreamTimeout):
            return None, tuple(failed)
        sock.close()
        return address, tuple(failed)

    def _report(self, name: str, key: Endpoint, error: OSError | None) -> None:
        """Tell the breaker how an attempt on ``key`` of ``name`` ended."""
        if error is None:
            if self.breaker.success(key):
                event(log, "breaker_closed", endpoint=str(key), host=name)
        elif not isinstance(error, ProxyError) and self.breaker.failure(key):
            # A parent's answer about the destination is not the parent's failure.
            event(
                log,
                "breaker_open",
                logging.WARNING,
                endpoint=str(key),
                host=name,
                cooldown_s=self.config.breaker_cooldown,
                error=_errno_name(error),
            )


async def adopt(sock: socket.socket, protocol: Opening) -> asyncio.Transport:
    """The transport of connected ``sock`` for ``protocol`` (its connection_made has run
    when this returns); ``sock`` is closed if that fails. Raises OSError."""
    loop = asyncio.get_running_loop()
    factory = cast(_Factory, lambda: protocol)
    try:
        transport, _ = await loop.create_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport


def _describe(attempts: Sequence[tuple[str, OSError]]) -> str:
    return (
        ", ".join(f"{address}: {_errno_name(error)}" for address, error in attempts) or "no address"
    )


def describe_attempts(attempts: Sequence[tuple[str, OSError]]) -> str:
    """``address: ERRNO`` of each attempt, as a dial error's message lists them."""
    return _describe(attempts)
