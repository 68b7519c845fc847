"""The hostile clients and the destinations of the abuse run (``benchmarks/abuse.py``).

    python3 -m benchmarks.abuse_client source|sink
    python3 -m benchmarks.abuse_client download|upload|heads|names|idle --proxy IP:PORT ...

``source`` and ``sink`` are destinations: they print ``port N`` once listening on
127.0.0.1, then accept every connection; ``source`` keeps sending on each, ``sink`` never
reads. The other modes are clients of the proxy: they open ``--count`` connections, print
one JSON line saying what they opened, and hold every connection until their stdin closes.

They run as processes of their own, apart from the proxy and from ``abuse.py``, because a
process may hold at most 20,000 descriptors here and 4,000 tunnels already take 8,000 in
the proxy plus 4,000 on each side. Socket buffers are kept small (``SO_RCVBUF`` /
``SO_SNDBUF``) so that a stalled connection stalls after a few KiB and the run does not
push the kernel's TCP memory of a shared machine into pressure.

Rules: loopback only (the proxy and destinations are given as 127.x addresses); every loop
is bounded in count, and the whole process in time (``--max-seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import Awaitable, Callable

__all__ = ["main"]

# Bytes of a request head the `heads` mode sends: just under the default limits.max_head
# (32 KiB), so the proxy holds each one whole and waits for the rest.
HEAD_SIZE = 32_700
# Handshakes in flight at once while opening (the proxy's accept backlog is 1,024).
OPENING = 256
CHUNK = 16 * 1024
# Each connection sends or waits at most this many chunks (16 GiB: never reached).
MAX_CHUNKS = 1_000_000
# Small kernel buffers: a stalled connection stalls after a few KiB (see the docstring).
SMALL_BUFFER = 4096
SOURCE_SNDBUF = 32 * 1024
OPEN_SECONDS = 20.0


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host.startswith("127."):
        raise SystemExit(f"{text}: only 127.0.0.0/8 addresses are allowed")
    return host, int(port)


async def _stdin_closed(loop: asyncio.AbstractEventLoop) -> None:
    """Return when our stdin (a pipe from the parent) reaches EOF: it closed it, or exited."""
    reader = asyncio.StreamReader()
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
        )
    except (OSError, ValueError):  # not a pipe (run by hand): --max-seconds alone ends it
        await asyncio.Event().wait()
        return
    try:
        for _ in range(MAX_CHUNKS):  # the parent writes nothing; bounded all the same
            if not await reader.read(4096):
                return
    finally:
        transport.close()


async def _keep_sending(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    chunk = bytes(CHUNK)
    with contextlib.suppress(OSError):
        for _ in range(MAX_CHUNKS):
            await loop.sock_sendall(sock, chunk)


async def serve(kind: str, max_seconds: float, max_conns: int) -> None:
    """A destination on 127.0.0.1: ``source`` sends on every connection, ``sink`` never reads."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    # Accepted sockets inherit the listener's buffer sizes (and a receive buffer set before
    # listen() bounds the window the sink ever offers).
    if kind == "sink":
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    else:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOURCE_SNDBUF)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    listener.setblocking(False)
    print(f"port {listener.getsockname()[1]}", flush=True)
    held: list[socket.socket] = []
    tasks: set[asyncio.Task[None]] = set()

    async def accept() -> None:
        for _ in range(max_conns):
            sock, _ = await loop.sock_accept(listener)
            held.append(sock)
            if kind == "source":
                task = loop.create_task(_keep_sending(loop, sock), name="source-send")
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    await _hold(loop, accept(), max_seconds)
    for task in list(tasks):
        task.cancel()
    for sock in held:
        sock.close()
    listener.close()


async def _hold(loop: asyncio.AbstractEventLoop, work: Awaitable[None], max_seconds: float) -> None:
    """Run ``work`` until stdin closes or ``max_seconds`` pass, whichever is first."""
    worker = asyncio.ensure_future(work)
    closed = asyncio.ensure_future(_stdin_closed(loop))
    await asyncio.wait({worker, closed}, timeout=max_seconds, return_when="FIRST_COMPLETED")
    failure = worker.exception() if worker.done() and not worker.cancelled() else None
    if failure is not None:
        raise failure
    for future in (worker, closed):
        future.cancel()
    await asyncio.gather(worker, return_exceptions=True)


class Load:
    """The client connections of one run and their counts."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.proxy = _address(args.proxy)
        self.loop = asyncio.get_running_loop()
        self.held: list[socket.socket] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.counts = {"requested": args.count, "connected": 0, "opened": 0, "failed": 0}
        self.sent = 0

    def spawn(self, work: Awaitable[None]) -> None:
        """Run ``work`` in the background; its task is kept until it ends."""
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def connect(self, source: str = "", *, rcvbuf: int = 0, sndbuf: int = 0) -> socket.socket:
        sock = socket.socket()
        try:
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            if source:
                sock.bind((source, 0))
            sock.setblocking(False)
            await self.loop.sock_connect(sock, self.proxy)
        except BaseException:
            sock.close()
            raise
        self.held.append(sock)
        self.counts["connected"] += 1
        return sock

    async def tunnel(self, index: int) -> None:
        """CONNECT to the destination; then stop reading, or keep sending."""
        download = self.args.mode == "download"
        sock = await self.connect(
            rcvbuf=SMALL_BUFFER if download else 0, sndbuf=0 if download else SMALL_BUFFER
        )
        target = self.args.target.encode()
        await self.loop.sock_sendall(
            sock, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)
        )
        reply = await self.loop.sock_recv(sock, 1024 if download else 4096)
        if not reply.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"CONNECT refused: {reply[:40]!r}")
        self.counts["opened"] += 1
        if not download:
            self.spawn(_keep_sending(self.loop, sock))

    async def head(self, index: int) -> None:
        """Most of a request head, never finished."""
        sock = await self.connect(sndbuf=SMALL_BUFFER)
        start = b"GET http://abuse.test/ HTTP/1.1\r\nHost: abuse.test\r\nX-Pad: "
        head = start + b"a" * (HEAD_SIZE - len(start))
        self.counts["opened"] += 1

        async def send() -> None:
            with contextlib.suppress(OSError):
                await self.loop.sock_sendall(sock, head)
                self.sent += len(head)

        self.spawn(send())

    async def name(self, index: int) -> None:
        """CONNECT to a name of its own, never resolved (the nameserver never answers)."""
        sock = await self.connect()
        name = f"n{index}.{self.args.tag}.abuse.test:443".encode()
        await self.loop.sock_sendall(
            sock, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (name, name)
        )
        self.counts["opened"] += 1

    async def idle(self, index: int) -> None:
        """A connection from a refused address (127.0.0.2 on), that never sends a byte."""
        per_address = self.args.per_address
        source = f"127.0.{(index // per_address) // 254}.{2 + (index // per_address) % 254}"
        await self.connect(source)
        self.counts["opened"] += 1

    async def open_all(self) -> None:
        action: Callable[[int], Awaitable[None]] = {
            "download": self.tunnel,
            "upload": self.tunnel,
            "heads": self.head,
            "names": self.name,
            "idle": self.idle,
        }[self.args.mode]
        gate = asyncio.Semaphore(OPENING)

        async def one(index: int) -> None:
            async with gate:
                try:
                    async with asyncio.timeout(OPEN_SECONDS):
                        await action(index)
                except (OSError, TimeoutError):
                    self.counts["failed"] += 1

        await asyncio.gather(*(one(index) for index in range(self.args.count)))

    def report(self) -> dict[str, object]:
        return {**self.counts, "sent_bytes": self.sent, "mode": self.args.mode}

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for sock in self.held:
            sock.close()


async def run_load(args: argparse.Namespace) -> None:
    load = Load(args)
    try:
        async with asyncio.timeout(args.max_seconds):
            await load.open_all()
        print(json.dumps(load.report()), flush=True)
        await _hold(load.loop, asyncio.sleep(args.max_seconds), args.max_seconds)
    finally:
        load.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.abuse_client")
    parser.add_argument(
        "mode", choices=("source", "sink", "download", "upload", "heads", "names", "idle")
    )
    parser.add_argument("--proxy", default="127.0.0.1:3128")
    parser.add_argument("--target", default="127.0.0.1:9")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--per-address", type=int, default=1000)
    parser.add_argument("--tag", default="run", help="distinguishes the names of one run")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    if args.mode in ("source", "sink"):
        asyncio.run(serve(args.mode, args.max_seconds, 20_000))
    else:
        _address(args.proxy)
        _address(args.target)
        asyncio.run(run_load(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
