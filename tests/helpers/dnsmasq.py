"""A real DNS server for the tests: dnsmasq on 127.0.0.1, answering only the test names.

The proxy under test is pointed at it with ``--nameserver``; dnsmasq logs every query it
receives, with its type, to a file, so a test can prove that no AAAA question was ever
asked. Nothing else in the tests may query this server for AAAA (tests query it only for
readiness, with an A question).

Names (all under ``.test``; any other ``.test`` name is NXDOMAIN, ``--local=/test/``):

- ``dual.test``: A 127.0.0.1 and AAAA ::1
- ``v4.test``: A 127.0.0.1
- ``v6only.test``: AAAA ::1 only (an A question gets NODATA)
- ``multi.test``: A 127.0.0.2, 127.0.0.3, 127.0.0.1 (dnsmasq may rotate them)
- ``trap.test`` and every ``*.trap.test``: A 127.0.0.1 and AAAA ::1, for the IPv6 trap
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from helpers.ci import unavailable
from helpers.process import stop_process

__all__ = [
    "HOST_RECORDS",
    "ISOLATED",
    "TRAP_DOMAIN",
    "DnsQuery",
    "Dnsmasq",
    "DnsmasqUnavailable",
    "running_dnsmasq",
]

TRAP_DOMAIN = "trap.test"

# name -> addresses, in the order dnsmasq is given them.
HOST_RECORDS: dict[str, tuple[str, ...]] = {
    "dual.test": ("127.0.0.1", "::1"),
    "v4.test": ("127.0.0.1",),
    "v6only.test": ("::1",),
    "multi.test": ("127.0.0.2", "127.0.0.3", "127.0.0.1"),
}

# Bounds: starting tries (a free port can be taken between probe and bind) and the readiness
# wait per try.
_START_TRIES = 5
_READY_SECONDS = 10.0
_READY_PROBE_TIMEOUT = 0.2

# With --log-queries=extra:
# "... dnsmasq[12]: 7 127.0.0.1/40134 query[AAAA] dual.test from 127.0.0.1"
_QUERY_LINE = re.compile(
    r"dnsmasq\[\d+\]: \d+ (?P<addr>[0-9a-fA-F.:]+)/(?P<port>\d+) "
    r"query\[(?P<qtype>[A-Z0-9]+)\] (?P<name>\S+) from (?P<source>\S+)"
)


class DnsmasqUnavailable(RuntimeError):
    """dnsmasq is not installed or cannot run here; the message says why."""


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """One question dnsmasq received."""

    qtype: str
    name: str
    source: str
    source_port: int


# dnsmasq binds the port for UDP and TCP. A port from the kernel's ephemeral range may be
# free for UDP yet held by some TCP connection's local end (busy machines churn through
# that range), so ports are drawn below it (Linux's default range starts at 32768) and
# checked for both transports.
_PORT_RANGE = (20000, 32000)


def _free_udp_port() -> int:
    """A loopback port free for UDP and TCP now, outside the ephemeral range; bounded tries."""
    for _ in range(50):
        port = random.randint(*_PORT_RANGE)
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
            ):
                udp.bind(("127.0.0.1", port))
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise DnsmasqUnavailable(f"no free port for dnsmasq in {_PORT_RANGE}")


# A dnsmasq that reads no file of the machine's and keeps to the address it is given:
# no config file, no pid file, no resolv.conf, no /etc/hosts, bound to its one address.
ISOLATED = (
    "--keep-in-foreground",
    "--conf-file=/dev/null",
    "--pid-file=",
    "--no-resolv",
    "--no-hosts",
    "--no-poll",
    "--bind-interfaces",
)


class Dnsmasq:
    """A dnsmasq process on 127.0.0.1:`port`; use `start()` / `stop()` or a with-block."""

    def __init__(self, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        """``extra_args``: more dnsmasq options (``--host-record=...``, ``--local=/zone/``)."""
        self._workdir = workdir
        self._extra_args = tuple(extra_args)
        self.log_path = workdir / "dnsmasq.log"
        self._stderr_path = workdir / "dnsmasq.stderr"
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def _command(self, binary: str, port: int) -> list[str]:
        command = [
            binary,
            *ISOLATED,
            "--listen-address=127.0.0.1",
            f"--port={port}",
            "--log-queries=extra",
            f"--log-facility={self.log_path}",
            "--local=/test/",
            f"--address=/{TRAP_DOMAIN}/127.0.0.1",
            f"--address=/{TRAP_DOMAIN}/::1",
        ]
        command += [
            f"--host-record={name},{address}"
            for name, addresses in HOST_RECORDS.items()
            for address in addresses
        ]
        command += self._extra_args
        if os.geteuid() == 0:
            # As root dnsmasq drops to user "nobody" by default; stay root so it can keep
            # writing its log file in a root-owned temporary directory.
            command.append("--user=root")
        return command

    def start(self) -> None:
        """Start dnsmasq and wait until it answers; raises DnsmasqUnavailable otherwise."""
        binary = shutil.which("dnsmasq") or next(
            (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None
        )
        if binary is None:
            raise DnsmasqUnavailable("dnsmasq is not installed (Debian package dnsmasq-base)")
        problems: list[str] = []
        for _ in range(_START_TRIES):
            port = _free_udp_port()
            with self._stderr_path.open("wb") as stderr:
                self._process = subprocess.Popen(
                    self._command(binary, port),
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                )
            if self._wait_ready(port):
                self.port = port
                return
            self.stop()
            problems.append(self._stderr_path.read_text(errors="replace").strip())
        raise DnsmasqUnavailable(f"dnsmasq did not start: {problems}")

    def _wait_ready(self, port: int) -> bool:
        """Ask an A question (never AAAA) until dnsmasq answers, bounded in time and count."""
        process = self._process
        if process is None:
            return False
        deadline = time.monotonic() + _READY_SECONDS
        for _ in range(int(_READY_SECONDS / _READY_PROBE_TIMEOUT) + 1):
            if process.poll() is not None or time.monotonic() > deadline:
                return False
            query = dns.message.make_query("ready.test", "A")
            try:
                reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=_READY_PROBE_TIMEOUT)
            except (dns.exception.Timeout, ConnectionRefusedError):
                time.sleep(0.05)
                continue
            return reply.rcode() == dns.rcode.NXDOMAIN
        return False

    def stop(self) -> None:
        """Stop the process this object started, by PID: SIGTERM, then SIGKILL after a bound."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)

    def queries(self) -> list[DnsQuery]:
        """Every question received so far, in order, parsed from the query log."""
        if not self.log_path.exists():
            return []
        found: list[DnsQuery] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = _QUERY_LINE.search(line)
            if match:
                found.append(
                    DnsQuery(
                        qtype=match["qtype"],
                        name=match["name"].rstrip(".").lower(),
                        source=match["source"],
                        source_port=int(match["port"]),
                    )
                )
        return found

    def __enter__(self) -> Dnsmasq:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def running_dnsmasq(directory: Path, extra_args: Sequence[str] = ()) -> Iterator[Dnsmasq]:
    """A started dnsmasq working in `directory`, for a fixture to ``yield from``.

    Skips (fails in CI) if dnsmasq cannot start; stops it when the fixture ends.
    """
    server = Dnsmasq(directory, extra_args)
    try:
        server.start()
    except DnsmasqUnavailable as exc:
        unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()
