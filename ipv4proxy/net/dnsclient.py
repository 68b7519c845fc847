"""DNS over UDP through a small pool of connected sockets per nameserver, shared by all lookups.

Job: carry one DNS question to one nameserver and bring back its answer, without a socket
per question. dnspython builds and parses the messages (``dns.message``) and keeps the
resolution logic (attempts, failover, backoff, the TCP retry): `PooledNameserver` is a
``dns.nameserver.Do53Nameserver`` whose UDP queries go through `DnsClient` instead of a
fresh socket each. Before this, 10,000 names behind a silent server held 3,877 UDP
sockets at once.

Rules:
- Per nameserver (address, port) at most ``sockets`` connected UDP sockets, opened when a
  query finds every open one busy, closed after ``idle_seconds`` with no query pending.
  A lone lookup reuses one socket; concurrent ones spread over the pool.
- Each query gets a random 16-bit ID that is not pending on its socket. A datagram is an
  answer only if it parses and is the response to a pending query (dnspython's
  ``Message.is_response``: ID, QR flag, opcode and question); anything else is dropped,
  as dnspython's own UDP query does (``ignore_errors``, ``ignore_unexpected``). The socket
  is connected, so the kernel delivers only datagrams from the nameserver's address.
- A truncated answer (TC) raises ``dns.message.Truncated``; dnspython's resolution then asks
  that one question again over TCP (``Do53Nameserver``'s TCP path, one connection).
- A send that finds the socket buffer full counts as a lost datagram (the query's timeout
  decides), so nothing is queued in memory. An ICMP error on the socket (ECONNREFUSED: no
  server on that port) fails every query pending on it with that OSError, which dnspython
  takes as "this server is down" and fails over; the socket is closed and replaced.
- A timeout is ``dns.exception.Timeout`` (never TimeoutError, an OSError that dnspython
  would take for a dead server): the server stays in the rotation for the next attempt.
- Bounded: sockets per server, ``MAX_PENDING`` queries per socket, datagrams read per
  wake-up, one idle timer per socket; nothing waits longer than its query's timeout.

The pool has fewer source ports than a socket per query, so an off-path forger has fewer
ports to guess; it still must match a random ID and the question, and an idle pool is
closed and reopened on new random ports. The resolver's in-flight cap
(``resolver.max_in_flight``) bounds the queries pending on a pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.message
import dns.nameserver

__all__ = [
    "IDLE_SECONDS",
    "MAX_PENDING",
    "SOCKETS_PER_SERVER",
    "DnsClient",
    "PooledNameserver",
]

# Four sockets per nameserver: at the default resolver.max_in_flight (256) that is at most
# 64 answers pending per socket, which fit the default socket receive buffer (208 KiB
# holds about 90 datagrams at their kernel size) even if all arrive at once.
SOCKETS_PER_SERVER = 4
# A socket with nothing pending this long is closed: a busy proxy keeps its pool open, an
# idle one holds no descriptor, and a reopened socket gets a new random source port.
IDLE_SECONDS = 5.0
# Queries pending on one socket (a quarter of the 16-bit ID space, so a free ID is found
# in a couple of draws); with resolver.max_in_flight at most 10000, never reached.
MAX_PENDING = 16384
# Datagrams read per wake-up, so a flood of answers cannot hold the event loop.
_READS_PER_WAKE = 64
# EDNS payloads are at most 65535 bytes; the proxy asks without EDNS (512-byte answers).
_MAX_DATAGRAM = 65535
_ID_DRAWS = 64


@dataclass(frozen=True, slots=True, eq=False)
class _Query:
    request: dns.message.Message
    future: asyncio.Future[dns.message.Message]


@dataclass(slots=True, eq=False)
class _Socket:
    """One connected UDP socket and the queries pending on it."""

    sock: socket.socket
    server: _Server
    loop: asyncio.AbstractEventLoop
    pending: dict[int, _Query] = field(default_factory=dict)
    idle: asyncio.TimerHandle | None = None
    closed: bool = False


@dataclass(slots=True, eq=False)
class _Server:
    address: str
    port: int
    sockets: list[_Socket] = field(default_factory=list)


class DnsClient:
    """UDP queries over a pool of connected sockets per nameserver. One per Resolver."""

    def __init__(
        self, *, sockets: int = SOCKETS_PER_SERVER, idle_seconds: float = IDLE_SECONDS
    ) -> None:
        self._size = max(1, sockets)
        self._idle_seconds = idle_seconds
        self._servers: dict[tuple[str, int], _Server] = {}

    def open_sockets(self) -> int:
        """How many UDP sockets the pool holds now (for tests and metrics)."""
        return sum(len(server.sockets) for server in self._servers.values())

    def pending(self) -> int:
        """How many queries wait for an answer now."""
        return sum(len(s.pending) for server in self._servers.values() for s in server.sockets)

    async def query(
        self, request: dns.message.Message, address: str, port: int
    ) -> dns.message.Message:
        """Send ``request`` (its ID is replaced) to address:port and return the answer; the
        caller bounds the wait (``asyncio.timeout``), and the query is forgotten when it
        ends either way.

        Raises dns.message.Truncated (ask again over TCP) or OSError (the server cannot be
        reached: it is down for this lookup).
        """
        loop = asyncio.get_running_loop()
        conn = self._socket(loop, address, port)
        query_id = _free_id(conn)
        request.id = query_id
        wire = request.to_wire()
        future: asyncio.Future[dns.message.Message] = loop.create_future()
        conn.pending[query_id] = _Query(request, future)
        if conn.idle is not None:
            conn.idle.cancel()
            conn.idle = None
        try:
            # A full send buffer: as if the datagram was lost on the way (the timeout decides).
            with contextlib.suppress(BlockingIOError):
                conn.sock.send(wire)
            return await future
        finally:
            entry = conn.pending.get(query_id)
            if entry is not None and entry.future is future:
                del conn.pending[query_id]
            if not conn.pending and not conn.closed:
                self._idle_later(loop, conn)

    def close(self) -> None:
        """Close every socket; queries still pending fail with ConnectionAbortedError."""
        for server in list(self._servers.values()):
            for conn in list(server.sockets):
                self._close(conn, ConnectionAbortedError("DNS client closed"))

    # the pool

    def _socket(self, loop: asyncio.AbstractEventLoop, address: str, port: int) -> _Socket:
        """The least busy open socket to address:port, or a new one when all are busy."""
        key = (address, port)
        server = self._servers.get(key)
        if server is None:
            server = self._servers[key] = _Server(address, port)
        usable = [s for s in server.sockets if len(s.pending) < MAX_PENDING]
        best = min(usable, key=lambda s: len(s.pending), default=None)
        if best is not None and (not best.pending or len(server.sockets) >= self._size):
            return best
        if len(server.sockets) >= self._size:
            raise OSError(f"{MAX_PENDING * self._size} DNS queries pending on {address}:{port}")
        return self._open(loop, server)

    def _open(self, loop: asyncio.AbstractEventLoop, server: _Server) -> _Socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((server.address, server.port))  # UDP: no packet, only a filter
        except BaseException:
            sock.close()
            raise
        conn = _Socket(sock, server, loop)
        server.sockets.append(conn)
        loop.add_reader(sock.fileno(), self._readable, conn)
        return conn

    def _idle_later(self, loop: asyncio.AbstractEventLoop, conn: _Socket) -> None:
        if conn.idle is None:
            conn.idle = loop.call_later(self._idle_seconds, self._idle_close, conn)

    def _idle_close(self, conn: _Socket) -> None:
        conn.idle = None
        if not conn.pending:
            self._close(conn, None)

    def _close(self, conn: _Socket, error: BaseException | None) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.idle is not None:
            conn.idle.cancel()
            conn.idle = None
        conn.loop.remove_reader(conn.sock.fileno())
        conn.sock.close()
        server = conn.server
        server.sockets.remove(conn)
        if not server.sockets:
            self._servers.pop((server.address, server.port), None)
        pending, conn.pending = conn.pending, {}
        for query in pending.values():
            if not query.future.done():
                query.future.set_exception(error or ConnectionAbortedError("socket closed"))

    # answers

    def _readable(self, conn: _Socket) -> None:
        for _ in range(_READS_PER_WAKE):
            if conn.closed:
                return
            try:
                data = conn.sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # An ICMP error (ECONNREFUSED: nothing listens there): every query pending
                # here is for that server, and fails over. A fresh socket replaces this one.
                self._close(conn, exc)
                return
            _answer(conn, data)


def _free_id(conn: _Socket) -> int:
    """A random 16-bit ID not pending on ``conn`` (pending is at most a quarter of them)."""
    for _ in range(_ID_DRAWS):
        query_id = secrets.randbits(16)
        if query_id not in conn.pending:
            return query_id
    raise OSError("no free DNS query ID")  # pragma: no cover - 64 draws at <= 1/4 taken


def _answer(conn: _Socket, data: bytes) -> None:
    """Hand ``data`` to the query it answers; drop it if it answers none."""
    if len(data) < 12:
        return
    query = conn.pending.get(int.from_bytes(data[:2], "big"))
    if query is None or query.future.done():
        return
    request = query.request
    outcome: dns.message.Message | BaseException
    try:
        response = dns.message.from_wire(
            data,
            keyring=request.keyring,
            request_mac=request.mac,
            raise_on_truncation=True,
        )
        outcome = response
        answered = request.is_response(response)
    except dns.message.Truncated as exc:
        outcome = exc
        partial: dns.message.Message = exc.kwargs["message"]  # header and question
        answered = request.is_response(partial)
    except Exception:  # any unparseable datagram is dropped, as dnspython's own query does
        return
    if not answered:
        return
    del conn.pending[request.id]
    if isinstance(outcome, BaseException):
        query.future.set_exception(outcome)
    else:
        query.future.set_result(outcome)


class PooledNameserver(dns.nameserver.Do53Nameserver):
    """A Do53 nameserver whose UDP queries share `DnsClient`'s pool; TCP is dnspython's."""

    def __init__(self, address: str, port: int, client: DnsClient) -> None:
        super().__init__(address, port)
        self.client = client

    # The signature is dnspython's (dns.nameserver.Nameserver.async_query); ``backend`` is
    # its dns.asyncbackend.Backend, which that module does not re-export for type checkers.
    async def async_query(  # noqa: PLR0917
        self,
        request: dns.message.QueryMessage,
        timeout: float,  # noqa: ASYNC109
        source: str | None,
        source_port: int,
        max_size: bool,
        backend: Any,
        one_rr_per_rrset: bool = False,
        ignore_trailing: bool = False,
    ) -> dns.message.Message:
        """Raises dns.exception.Timeout (never TimeoutError, an OSError that dnspython would
        take for a dead server), dns.message.Truncated or OSError."""
        if max_size:  # the TCP retry after a truncated answer
            return await super().async_query(
                request,
                timeout,
                source,
                source_port,
                max_size,
                backend,
                one_rr_per_rrset,
                ignore_trailing,
            )
        try:
            async with asyncio.timeout(timeout):
                return await self.client.query(request, self.address, self.port)
        except TimeoutError:
            raise dns.exception.Timeout from None
