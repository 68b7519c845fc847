"""Stalled forwarded connections are bounded like tunnels, and give every byte back.

In-process proxy (both event loops), a 1 MiB relay budget: forwarded downloads whose
client never reads, and uploads whose origin never reads. What the relay holds stays
within the budget plus a page per stalled pump; once they are reset, it holds nothing
and no tunnel is left (the accounting of the forward pumps balances). A drain closes a
kept-alive forwarding connection after its next response.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
import uvloop

from helpers.servers import start_recording_origin
from helpers.stall import LOOPS, Sink, settled, stalled_client
from ipv4proxy.config import Config, LimitsConfig, Listener, PolicyConfig, ResolverConfig
from ipv4proxy.net.relay import MIN_READ
from ipv4proxy.net.resolver import Resolver
from ipv4proxy.server import Proxy

BUDGET = 1024 * 1024
DOWNLOADS = 16
UPLOADS = 8
CHUNK = 64 * 1024
HUGE = 1 << 40  # a Content-Length no test sends to the end
# Our re-framing may add a little to what a pump holds (none for Content-Length bodies).
SLACK = 64


async def _firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer the request head with an endless Content-Length body (bounded: 2 GiB)."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE)
        chunk = b"x" * CHUNK
        for _ in range(2 * 1024 * 1024 * 1024 // CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    writer.close()


def _config() -> Config:
    return Config(
        listeners=(Listener("127.0.0.1", 0),),
        resolver=ResolverConfig(hosts_file="/dev/null", resolv_conf="/dev/null"),
        limits=LimitsConfig(handshake_timeout=5.0, relay_memory=BUDGET),
        policy=PolicyConfig(ports=("1-65535",), allow_cidrs=("127.0.0.0/8",)),
    )


async def _stalled(proxy_port: int, origin_port: int, *, upload: bool) -> socket.socket:
    target = f"http://127.0.0.1:{origin_port}/"
    if upload:
        head = f"PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {HUGE}\r\n\r\n"
    else:
        head = f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"
    return await stalled_client(proxy_port, head.encode(), upload=upload)


async def _scenario() -> None:
    hose = await asyncio.start_server(_firehose, "127.0.0.1", 0)
    never_reads = Sink()
    sink = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    hose_port, sink_port = (s.sockets[0].getsockname()[1] for s in (hose, sink))
    config = _config()
    proxy = Proxy(config, Resolver(config.resolver, hosts={}))
    (_, proxy_port), *_ = await proxy.start()
    clients: list[socket.socket] = []
    try:
        async with asyncio.timeout(60):
            for index in range(DOWNLOADS + UPLOADS):
                upload = index >= DOWNLOADS
                port = sink_port if upload else hose_port
                clients.append(await _stalled(proxy_port, port, upload=upload))
            held = await settled(proxy)
            assert held > BUDGET // 2, held  # the stalled connections did fill it
            assert held <= BUDGET + len(clients) * (MIN_READ + SLACK), held
            assert len(proxy.tunnels) == len(clients)
            for sock in clients:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            never_reads.reset()
            for _ in range(100):  # bounded: 10 s
                if not proxy.tunnels and not proxy.buffers.held:
                    break
                await asyncio.sleep(0.1)
            assert (len(proxy.tunnels), proxy.buffers.held) == (0, 0)
            assert (proxy.connections, proxy.handshake_bytes) == (0, 0)
    finally:
        for sock in clients:
            sock.close()
        await proxy.close()
        for server in (hose, sink):
            server.close()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_stalled_forwards_hold_at_most_the_budget(loop: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(_scenario())


async def _drain_scenario() -> None:
    origin = await start_recording_origin()
    config = _config()
    proxy = Proxy(config, Resolver(config.resolver, hosts={}))
    (_, proxy_port), *_ = await proxy.start()
    host = f"127.0.0.1:{origin.port}"
    request = f"GET http://{host}/%d HTTP/1.1\r\nHost: {host}\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    try:
        async with asyncio.timeout(30):
            writer.write((request % 1).encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            # Kept alive and idle; the drain starts. The next request is still answered,
            # and then the connection closes: the drain ends with nothing to cut.
            drain = asyncio.ensure_future(proxy.drain(20.0, asyncio.Event()))
            await asyncio.sleep(0.1)
            assert not drain.done()
            writer.write((request % 2).encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            assert await reader.read() == b""
            assert await drain == 0
            assert [r.target for r in origin.requests] == ["/1", "/2"]
    finally:
        writer.transport.abort()
        await proxy.close()
        await origin.close()


def test_drain_closes_a_kept_alive_forward_after_its_response() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_drain_scenario())
