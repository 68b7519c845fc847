"""Hand-written client sides of HTTP CONNECT, SOCKS5 and SOCKS4/4a, for exact assertions.

Real clients (curl, aiohttp, python-socks, Node) show that the proxy interoperates; these
show exactly what it answers: the status line, the body, the reply code. Each exchange is
bounded by `WIRE_SECONDS` and reads exactly the bytes the protocol defines, never assuming
that one read is one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
import time
from dataclasses import dataclass, field

__all__ = [
    "WIRE_SECONDS",
    "HttpReply",
    "Socks4Reply",
    "Socks5Reply",
    "Tunnel",
    "http_connect",
    "http_raw",
    "open_tunnel_socket",
    "read_http_reply",
    "socks4_connect",
    "socks5_request",
]

WIRE_SECONDS = 15.0
# An error body is one line; anything past this is not what the contract describes.
_MAX_BODY = 64 * 1024
_MAX_HEAD = 64 * 1024

SOCKS5_CONNECT = 0x01
SOCKS5_BIND = 0x02
SOCKS5_UDP_ASSOCIATE = 0x03


@dataclass
class Tunnel:
    """A client connection to the proxy; `local_port` names it in the access log."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    # When the client began to connect (epoch seconds): its access line is logged after
    # this, which tells it from an older line of an earlier connection that had the same
    # port. Taken before the connect, not after: the proxy can refuse and log a connection
    # before the client's connect call returns.
    opened: float = field(default_factory=time.time)

    @property
    def local_port(self) -> int:
        port: int = self.writer.get_extra_info("sockname")[1]
        return port

    @property
    def client(self) -> str:
        """The ``client=`` field the proxy logs for this connection."""
        host, port = self.writer.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def read_to_eof(self, limit: int = 16 * 1024 * 1024) -> bytes:
        """Read until the peer closes (bounded by `limit` bytes and WIRE_SECONDS)."""
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(WIRE_SECONDS):
            for _ in range(limit):  # each pass reads at least one byte or ends
                data = await self.reader.read(65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
                if size >= limit:
                    break
        return b"".join(chunks)

    async def read_exactly(self, size: int) -> bytes:
        async with asyncio.timeout(WIRE_SECONDS):
            return await self.reader.readexactly(size)


async def open_tunnel_socket(proxy_port: int) -> Tunnel:
    opened = time.time()
    async with asyncio.timeout(WIRE_SECONDS):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    return Tunnel(reader, writer, opened)


@dataclass
class HttpReply:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def body_text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


async def _read_body(tunnel: Tunnel, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > _MAX_BODY:
            raise ValueError(f"error body of {length} bytes")
        return await tunnel.read_exactly(length)
    return await tunnel.read_to_eof(_MAX_BODY)


async def read_http_reply(tunnel: Tunnel, *, read_body: bool) -> HttpReply:
    """Read a status line and headers; with `read_body`, the body (Content-Length or to EOF)."""
    async with asyncio.timeout(WIRE_SECONDS):
        head = await tunnel.reader.readuntil(b"\r\n\r\n")
    if len(head) > _MAX_HEAD:
        raise ValueError(f"reply head longer than {_MAX_HEAD} bytes")
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1 status line: {status_line!r}")
    code, _, reason = rest.partition(" ")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    reply = HttpReply(status=int(code), reason=reason, headers=headers)
    if read_body:
        reply.body = await _read_body(tunnel, headers)
    return reply


async def http_connect(
    proxy_port: int, authority: str, *, early: bytes = b"", extra_head: str = ""
) -> tuple[Tunnel, HttpReply]:
    """Send ``CONNECT authority`` (and `early` bytes in the same write); read the reply.

    A 2xx reply's body is not read (the tunnel starts right after the head); any other
    reply's body is read in full.
    """
    tunnel = await open_tunnel_socket(proxy_port)
    try:
        head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{extra_head}\r\n"
        tunnel.writer.write(head.encode("latin-1") + early)
        async with asyncio.timeout(WIRE_SECONDS):
            await tunnel.writer.drain()
        reply = await read_http_reply(tunnel, read_body=False)
        if not 200 <= reply.status < 300:
            reply.body = await _read_body(tunnel, reply.headers)
        return tunnel, reply
    except BaseException:  # a half-made exchange must not leak its socket
        await tunnel.close()
        raise


async def http_raw(proxy_port: int, data: bytes) -> tuple[Tunnel, HttpReply]:
    """Send `data` as is (a malformed request, say); read the HTTP reply with its body."""
    tunnel = await open_tunnel_socket(proxy_port)
    try:
        tunnel.writer.write(data)
        async with asyncio.timeout(WIRE_SECONDS):
            await tunnel.writer.drain()
        return tunnel, await read_http_reply(tunnel, read_body=True)
    except BaseException:  # a half-made exchange must not leak its socket
        await tunnel.close()
        raise


@dataclass
class Socks5Reply:
    code: int
    bound_address: str
    bound_port: int


def socks5_address(host: str) -> bytes:
    """DST.ADDR with its ATYP: an IPv4 or IPv6 literal as such, anything else as a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        encoded = host.encode("idna")
        return b"\x03" + bytes([len(encoded)]) + encoded
    if address.version == 4:
        return b"\x01" + address.packed
    return b"\x04" + address.packed


async def socks5_request(
    proxy_port: int,
    host: str,
    port: int,
    *,
    command: int = SOCKS5_CONNECT,
    early: bytes = b"",
) -> tuple[Tunnel, Socks5Reply]:
    """Greet (no auth), send one request (and `early` in the same write), read the reply."""
    tunnel = await open_tunnel_socket(proxy_port)
    try:
        tunnel.writer.write(b"\x05\x01\x00")
        method = await tunnel.read_exactly(2)
        if method != b"\x05\x00":
            raise ValueError(f"SOCKS5 method selection {method!r}, expected no-auth")
        request = b"\x05" + bytes([command, 0]) + socks5_address(host) + struct.pack("!H", port)
        tunnel.writer.write(request + early)
        version, code, _reserved, atyp = await tunnel.read_exactly(4)
        if version != 5:
            raise ValueError(f"SOCKS5 reply version {version}")
        if atyp == 1:
            bound = str(ipaddress.IPv4Address(await tunnel.read_exactly(4)))
        elif atyp == 4:
            bound = str(ipaddress.IPv6Address(await tunnel.read_exactly(16)))
        elif atyp == 3:
            (length,) = await tunnel.read_exactly(1)
            bound = (await tunnel.read_exactly(length)).decode("idna")
        else:
            raise ValueError(f"SOCKS5 reply address type {atyp}")
        (bound_port,) = struct.unpack("!H", await tunnel.read_exactly(2))
        return tunnel, Socks5Reply(code=code, bound_address=bound, bound_port=bound_port)
    except BaseException:  # a half-made exchange must not leak its socket
        await tunnel.close()
        raise


@dataclass
class Socks4Reply:
    code: int


async def socks4_connect(
    proxy_port: int, host: str, port: int, *, early: bytes = b"", user: bytes = b"test"
) -> tuple[Tunnel, Socks4Reply]:
    """SOCKS4 CONNECT to an IPv4 literal, or SOCKS4a (0.0.0.1 plus the name) to a name."""
    tunnel = await open_tunnel_socket(proxy_port)
    try:
        try:
            address = ipaddress.IPv4Address(host)
            request = b"\x04\x01" + struct.pack("!H", port) + address.packed + user + b"\x00"
        except ValueError:
            request = (
                b"\x04\x01"
                + struct.pack("!H", port)
                + b"\x00\x00\x00\x01"
                + user
                + b"\x00"
                + host.encode("idna")
                + b"\x00"
            )
        tunnel.writer.write(request + early)
        version, code = (await tunnel.read_exactly(8))[:2]
        if version != 0:
            raise ValueError(f"SOCKS4 reply version {version}, expected 0")
        return tunnel, Socks4Reply(code=code)
    except BaseException:  # a half-made exchange must not leak its socket
        await tunnel.close()
        raise
