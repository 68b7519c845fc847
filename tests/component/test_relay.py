"""The relay through a real proxy on loopback: bytes arrive intact under backpressure, and
stalled tunnels hold no more than the relay budget.

The pumps share one read buffer and copy out only what a peer's socket did not take, within
one budget (limits.relay_memory); these tests make that happen (a slow reader, several
tunnels at once, tunnels whose reader or writer never moves) and check every byte, and what
the proxy holds, on both event loops.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct

import pytest

from helpers.metrics import value
from helpers.stall import LOOPS, Sink, settled, stalled_client
from ipv4proxy.config import Config, LimitsConfig, Listener, PolicyConfig, ResolverConfig
from ipv4proxy.net.relay import MIN_READ, READ_SIZE
from ipv4proxy.net.resolver import Resolver
from ipv4proxy.server import Proxy

SIZE = 8 * 1024 * 1024  # more than the kernel buffers between proxy and client hold


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _tunnel_through(proxy_port: int, target_port: int, seed: int) -> None:
    sock = socket.socket()
    # A small receive buffer, so that the proxy's writes to this client do back up.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy_port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        writer.close()
        raise AssertionError(head)
    payload = random.Random(seed).randbytes(SIZE)

    async def send() -> None:
        for start in range(0, SIZE, 200_000):
            writer.write(payload[start : start + 200_000])
            await writer.drain()
        writer.write_eof()

    async def receive() -> bytes:
        chunks = []
        await asyncio.sleep(0.2)  # let the proxy's socket to us fill up first
        while data := await reader.read(50_000):
            chunks.append(data)
            await asyncio.sleep(0.0005)  # a slow reader: the proxy's writes back up
        return b"".join(chunks)

    _, echoed = await asyncio.gather(send(), receive())
    writer.close()
    assert len(echoed) == SIZE
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


def _config(**limits: float) -> Config:
    return Config(
        listeners=(Listener("127.0.0.1", 0),),
        resolver=ResolverConfig(hosts_file="/dev/null", resolv_conf="/dev/null"),
        limits=LimitsConfig(handshake_timeout=5.0, **limits),  # type: ignore[arg-type]
        # Loopback on any port: refused by the default policy, opened for this test.
        policy=PolicyConfig(ports=("1-65535",), allow_cidrs=("127.0.0.0/8",)),
    )


async def _scenario() -> None:
    target = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target_port = target.sockets[0].getsockname()[1]
    config = _config()
    proxy = Proxy(config, Resolver(config.resolver, hosts={}))
    (_, proxy_port), *_ = await proxy.start()
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(_tunnel_through(proxy_port, target_port, s) for s in range(4)))
    finally:
        await proxy.close()
        target.close()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_bytes_arrive_intact_under_backpressure(loop: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(_scenario())


BUDGET = 1024 * 1024
DOWNLOAD_STALLED = 24
UPLOAD_STALLED = 12
CHUNK = 64 * 1024


async def _firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send until the connection goes (bounded: 2 GiB at most)."""
    chunk = b"x" * CHUNK
    try:
        for _ in range(2 * 1024 * 1024 * 1024 // CHUNK):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()


async def _stalled(proxy_port: int, target_port: int, *, upload: bool) -> socket.socket:
    """A CONNECT tunnel whose client never reads (download) or never stops writing while
    the destination never reads (upload); returns the client socket."""
    request = f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\n\r\n".encode()
    reply = b"HTTP/1.1 200 Connection established\r\n\r\n"
    return await stalled_client(proxy_port, request, upload=upload, reply=reply)


async def _budget_scenario() -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    hose = await asyncio.start_server(_firehose, "127.0.0.1", 0)
    never_reads = Sink()
    sink = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    ports = [server.sockets[0].getsockname()[1] for server in (echo, hose, sink)]
    config = _config(relay_memory=BUDGET)
    proxy = Proxy(config, Resolver(config.resolver, hosts={}))
    (_, proxy_port), *_ = await proxy.start()
    clients: list[socket.socket] = []
    try:
        async with asyncio.timeout(60):
            for index in range(DOWNLOAD_STALLED + UPLOAD_STALLED):
                upload = index >= DOWNLOAD_STALLED
                port = ports[2] if upload else ports[1]
                clients.append(await _stalled(proxy_port, port, upload=upload))
            held = await settled(proxy)
            # Pushed past the budget, held no further than a page per stalled pump.
            assert held > BUDGET - READ_SIZE
            assert held <= BUDGET + len(clients) * MIN_READ
            assert value(proxy.metrics, "ipv4proxy_relay_held_bytes") == held
            # With the budget spent, a tunnel whose reader is slow but alive still moves
            # every byte (in smaller reads).
            await _tunnel_through(proxy_port, ports[0], seed=7)
            assert proxy.buffers.held <= BUDGET + len(clients) * MIN_READ
            # The proxy still has bytes for both kinds of peer: it would flush them until
            # idle_timeout. Resets end them at once.
            for sock in clients:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            never_reads.reset()
            for _ in range(100):
                if not proxy.tunnels:
                    break
                await asyncio.sleep(0.1)
            assert (len(proxy.tunnels), proxy.buffers.held) == (0, 0)
    finally:
        for sock in clients:
            sock.close()
        await proxy.close()
        for server in (echo, hose, sink):
            server.close()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_stalled_tunnels_hold_at_most_the_budget(loop: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(_budget_scenario())
