"""``python3 -m benchmarks.instructions [TREE ...]``: user-space instructions per tunnel.

A figure that a busy neighbour does not move (the wall-clock CPU per tunnel of
`benchmarks.ab` moves by ±25% from run to run on a shared VM): each tree's proxy runs
under ``valgrind --tool=callgrind``; after 300 tunnels to warm up its counters are zeroed,
``--count`` tunnels are opened (concurrency 8, an asyncio client in this process: connect,
HTTP CONNECT or SOCKS5 to an IP literal, a 64-byte echo, close) and the counters dumped.
Instructions of the interpreter, uvloop and libc are counted; the kernel's are not (a
system call counts as the instructions around it). Runs of one tree agree within ~0.3%.
Slow: about 30-60 s per tree and protocol (valgrind runs the proxy ~50 times slower).

    apt-get install valgrind
    python3 -m benchmarks.instructions . /tmp/before --proto connect --proto socks5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.procs import ROOT, free_port, stop_child
from benchmarks.suite import HOSTS

WARM_UP = 300
CONCURRENCY = 8
# valgrind makes the interpreter's start (imports) take a minute or more on a busy machine.
START_SECONDS = 300.0
TUNNEL_SECONDS = 60.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _tunnel(proxy: int, target: int, proto: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    try:
        if proto == "connect":
            writer.write(f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the proxy answered {head!r}")
        else:
            writer.write(b"\x05\x01\x00")
            await reader.readexactly(2)
            address = socket.inet_aton("127.0.0.1") + struct.pack("!H", target)
            writer.write(b"\x05\x01\x00\x01" + address)
            if (await reader.readexactly(10))[1] != 0:
                raise RuntimeError("the proxy refused the SOCKS5 request")
        writer.write(b"x" * 64)
        await reader.readexactly(64)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _tunnels(proxy: int, target: int, proto: str, count: int) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with gate, asyncio.timeout(TUNNEL_SECONDS):
            await _tunnel(proxy, target, proto)

    await asyncio.gather(*(one() for _ in range(count)))


def _callgrind(pid: int, option: str) -> None:
    subprocess.run(  # noqa: S603 - fixed argv
        ["callgrind_control", option, str(pid)],  # noqa: S607
        check=True,
        capture_output=True,
        timeout=120,
    )


def _start(tree: Path, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """The proxy of ``tree`` under callgrind, listening on ``port`` (soon)."""
    hosts = workdir / "hosts"
    hosts.write_text(HOSTS, encoding="utf-8")
    argv = [
        *("valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/callgrind-{port}.%p"),
        *(sys.executable, "-m", "ipv4proxy", "--listen", f"127.0.0.1:{port}"),
        *("--hosts-file", str(hosts), "--nameserver", "127.0.0.1:9", "--log-level", "warning"),
        *("--policy-allow-cidrs", "127.0.0.0/8", "--policy-ports", "1-65535"),
        *("--admin-listen", ""),
    ]
    with open(workdir / f"proxy-{port}.log", "w", encoding="utf-8") as log:
        return subprocess.Popen(  # noqa: S603 - argv built here from fixed parts
            argv, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, stderr=log
        )


def _total(workdir: Path, port: int, pid: int) -> int:
    """Instructions in the last dump callgrind wrote for ``pid``."""
    dumps = sorted(workdir.glob(f"callgrind-{port}.{pid}*"), key=os.path.getmtime)
    for line in dumps[-1].read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dumps[-1]}")


async def measure(tree: Path, proto: str, count: int, workdir: Path) -> float:
    """Instructions per tunnel of the proxy in ``tree``."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    port = free_port()
    process = _start(tree, port, workdir)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_SECONDS
        while True:
            if process.poll() is not None or loop.time() > deadline:
                raise RuntimeError(f"the proxy of {tree} did not start; see {workdir}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.2)
        await _tunnels(port, target, proto, WARM_UP)
        _callgrind(process.pid, "-z")
        await _tunnels(port, target, proto, count)
        _callgrind(process.pid, "-d")
        return _total(workdir, port, process.pid) / count
    finally:
        stop_child(process, 30.0)  # callgrind writes its dump on the way out
        server.close()
        # The echo handlers end on the stopped proxy's resets: give them the loop turns,
        # rather than have asyncio.run() cancel them mid-read.
        await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.instructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("trees", nargs="*", type=Path, help="checkouts (default: this one)")
    parser.add_argument("--proto", action="append", choices=("connect", "socks5"))
    parser.add_argument("--count", type=int, default=1000, help="tunnels counted (1000)")
    args = parser.parse_args(argv)
    if not all(shutil.which(tool) for tool in ("valgrind", "callgrind_control")):
        parser.error("needs valgrind (apt-get install valgrind)")
    if not 100 <= args.count <= 100_000:
        parser.error("--count: 100 to 100,000")
    trees = [tree.resolve() for tree in args.trees] or [ROOT]
    print("| Tree | Protocol | Instructions per tunnel |\n|---|---|---:|")
    with tempfile.TemporaryDirectory(prefix="ipv4proxy-instructions-") as tmp:
        for tree in trees:
            for proto in args.proto or ["connect"]:
                per_tunnel = asyncio.run(measure(tree, proto, args.count, Path(tmp)))
                print(f"| {tree} | {proto} | {per_tunnel:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
