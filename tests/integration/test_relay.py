"""The relay through a real proxy on loopback: bytes arrive intact under backpressure.

The pumps lend one shared read buffer to every tunnel and hand it to a tunnel whose peer
cannot take a read whole; these tests make that happen (a slow reader, several tunnels at
once) and check every byte, on both event loops.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from collections.abc import Callable

import pytest
import uvloop

from ipv4proxy.config import Config, LimitsConfig, Listener, PolicyConfig, ResolverConfig
from ipv4proxy.net.resolver import Resolver
from ipv4proxy.server import Proxy

SIZE = 8 * 1024 * 1024  # more than the kernel buffers between proxy and client hold

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


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


async def _scenario() -> None:
    target = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target_port = target.sockets[0].getsockname()[1]
    config = Config(
        listeners=(Listener("127.0.0.1", 0),),
        resolver=ResolverConfig(hosts_file="/dev/null", resolv_conf="/dev/null"),
        limits=LimitsConfig(handshake_timeout=5.0),
        # Loopback on any port: refused by the default policy, opened for this test.
        policy=PolicyConfig(ports=("1-65535",), allow_cidrs=("127.0.0.0/8",)),
    )
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
