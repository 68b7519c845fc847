"""A third-party SOCKS5 server (microsocks, from Debian) and a relay that records its input.

microsocks logs nothing about its requests, so a `RecordingRelay` sits in front of it: a
127.0.0.1 listener that forwards each connection to microsocks and keeps every byte the
client (the proxy under test) sent, so a test can read the SOCKS5 request and see whether
the destination was an IPv4 literal (ATYP 1) or a name (ATYP 3).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

from helpers.process import stop_process

__all__ = ["Microsocks", "MicrosocksUnavailable", "RecordingRelay", "start_relay"]

# Bounds: waiting for microsocks to listen, and a relayed connection's reads.
_START_SECONDS = 10.0
_PROBE_PAUSE = 0.02
_RELAY_READ = 64 * 1024
_RELAY_MAX_BYTES = 16 * 1024 * 1024
_RELAY_MAX_READS = 100_000


class MicrosocksUnavailable(RuntimeError):
    """microsocks is not installed; the message says how to get it."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Microsocks:
    """microsocks on 127.0.0.1:`port`, with user/password when both are given."""

    def __init__(self, user: str = "", password: str = "") -> None:
        self.user = user
        self.password = password
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("microsocks")
        if binary is None:
            raise MicrosocksUnavailable("microsocks is not installed (Debian package microsocks)")
        self.port = _free_port()
        command = [binary, "-i", "127.0.0.1", "-p", str(self.port)]
        if self.user:
            command += ["-u", self.user, "-P", self.password]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_SECONDS
        for _ in range(int(_START_SECONDS / _PROBE_PAUSE) + 1):
            if self._process.poll() is not None or time.monotonic() > deadline:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(_PROBE_PAUSE)
        self.stop()
        raise MicrosocksUnavailable(f"microsocks did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        """Stop the process this object started, by PID."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)


@dataclass
class RecordingRelay:
    """127.0.0.1:`port` forwards to `target_port`; `received` holds each connection's input."""

    port: int
    target_port: int
    server: asyncio.Server
    received: list[bytearray] = field(default_factory=list)

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None
) -> None:
    try:
        for _ in range(_RELAY_MAX_READS):
            data = await reader.read(_RELAY_READ)
            if not data:
                break
            if record is not None and len(record) < _RELAY_MAX_BYTES:
                record.extend(data)
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def start_relay(target_port: int) -> RecordingRelay:
    """Start a recording relay to 127.0.0.1:`target_port` on the running loop."""
    received: list[bytearray] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = bytearray()
        received.append(record)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer, record), _pump(up_reader, writer, None))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return RecordingRelay(port, target_port, server, received)
