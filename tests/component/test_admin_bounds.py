"""The admin listener in this process: a client that opens every slot and trickles bytes
holds at most `MAX_CONNECTIONS` connections, for at most about `LIFETIME`; the next probe
gets through after that. Both event loops (set_protocol hands each connection over)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from helpers.stall import LOOPS
from ipv4proxy import admin
from ipv4proxy.admin import Admin
from ipv4proxy.config import load
from ipv4proxy.server import Proxy

SLOTS = 4
LIFETIME = 0.3
# Bound on every wait: under aiohttp's own 10 s keep-alive cut, so LIFETIME is what cuts.
WAIT_S = 5.0


async def _get(port: int, path: str, extra: str = "") -> bytes:
    """One request; the whole answer (to EOF, or the head and body that came in time)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())
    try:
        async with asyncio.timeout(WAIT_S):
            return await reader.read()
    finally:
        writer.close()


async def _scenario() -> None:
    proxy = Proxy(load("listeners: ['127.0.0.1:0']\nresolver: {hosts_file: /dev/null}"))
    endpoint = Admin(proxy, "127.0.0.1:0")
    _, port = await endpoint.start()
    held = []
    try:
        for _ in range(SLOTS):  # trickle: a request line, never the end of the head
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            held.append((reader, writer))
        await asyncio.sleep(0.05)  # let the admin loop take them in (their order is kept)
        # Every slot is held: the next connection is closed at once, before any answer.
        assert await _get(port, "/healthz") == b""
        # The held connections are cut within about LIFETIME, answered or not ...
        for reader, _ in held:
            async with asyncio.timeout(WAIT_S):
                assert await reader.read() == b""
        # ... and the next probe gets through.
        assert (await _get(port, "/healthz")).startswith(b"HTTP/1.1 200 ")
        # A head over the limits is refused, not buffered.
        many = "".join(f"X-{i}: y\r\n" for i in range(40))
        assert (await _get(port, "/healthz", many)).startswith(b"HTTP/1.0 400 ")
        long = "X-Long: " + "y" * 5000 + "\r\n"
        assert (await _get(port, "/healthz", long)).startswith(b"HTTP/1.0 400 ")
    finally:
        for _, writer in held:
            writer.close()
        await endpoint.close()


@pytest.mark.parametrize("loop", list(LOOPS))
def test_admin_slots_are_bounded_and_come_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, loop: str
) -> None:
    monkeypatch.setattr(admin, "MAX_CONNECTIONS", SLOTS)
    monkeypatch.setattr(admin, "LIFETIME", LIFETIME)
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(_scenario())
    # The refused heads are the client's fault: answered, not logged.
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
