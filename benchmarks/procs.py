"""Processes of a benchmark run: build and start them pinned, watch their CPU and memory, stop them.

Rules:
- Only processes this module started are ever signalled, each by its own Popen (its PID).
- Every wait is bounded; a process that does not answer in time fails the run loudly.
- Servers and proxies print or accept on loopback addresses only.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "Cores",
    "Procs",
    "build_loadgen",
    "cpu_seconds",
    "fd_count",
    "free_port",
    "rss_kib",
    "rss_peak_kib",
    "stop_child",
    "udp_sockets",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TICKS = os.sysconf("SC_CLK_TCK")
_ABUSE_CLIENT = (sys.executable, "-m", "benchmarks.abuse_client")


def build_loadgen(directory: Path) -> Path:
    """Compile loadgen.c into ``directory``; returns the binary. Raises RuntimeError."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("the load generator needs a C compiler (gcc or cc)")
    binary = directory / "loadgen"
    command = [compiler, "-O2", "-Wall", "-o", str(binary), str(HERE / "loadgen.c")]
    done = subprocess.run(  # noqa: S603 - fixed argv
        command, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the load generator failed:\n{done.stderr}")
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the proxy is told it with --listen)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a live process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15)


def rss_kib(pid: int) -> int:
    """Resident set size of a live process, KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def rss_peak_kib(pid: int) -> int:
    """Peak resident set size of a live process since it started (VmHWM), KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


def fd_count(pid: int) -> int:
    """Open file descriptors of a live process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def udp_sockets(pid: int) -> int:
    """UDP sockets (IPv4) a live process holds: its socket inodes found in its net/udp."""
    with open(f"/proc/{pid}/net/udp", encoding="ascii") as file:
        udp = {line.split()[9] for line in file.readlines()[1:]}
    held = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed since listdir()
            link = os.readlink(f"/proc/{pid}/fd/{name}")
            if link.startswith("socket:[") and link[8:-1] in udp:
                held += 1
    return held


@dataclass(frozen=True)
class Cores:
    """Which CPU runs the proxy and which runs the load generator and the servers."""

    proxy: int | None
    load: int | None

    @staticmethod
    def pick(pin: bool) -> Cores:
        cores = sorted(os.sched_getaffinity(0))
        if not pin or len(cores) < 2:
            return Cores(None, None)
        return Cores(cores[0], cores[1])

    def prefix(self, core: int | None) -> list[str]:
        return ["taskset", "-c", str(core)] if core is not None else []


@dataclass
class Procs:
    """The long-running processes of one run; ``close()`` stops each one by its PID."""

    workdir: Path
    cores: Cores
    loadgen: Path
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def _spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = None,
        stderr: IO[str] | int | None = None,
        tree: Path = ROOT,
        stdout: IO[str] | int = subprocess.PIPE,
    ) -> subprocess.Popen[str]:
        """Start ``argv`` in ``tree``, whose ``ipv4proxy`` package ``-m ipv4proxy`` runs."""
        env = None if tree == ROOT else {**os.environ, "PYTHONPATH": str(tree)}
        process = subprocess.Popen(  # noqa: S603 - argv built here from fixed parts
            list(argv),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            text=True,
            cwd=tree,
            env=env,
        )
        self.started.append(process)
        return process

    def server(self, kind: str, *, bind: str = "127.0.0.1", port: int = 0) -> tuple[int, int]:
        """Start ``loadgen stream-server`` or ``echo-server``; returns (pid, port)."""
        argv = [*self.cores.prefix(self.cores.load), str(self.loadgen), kind, str(port)]
        process = self._spawn([*argv, "--bind", bind])
        assert process.stdout is not None
        line = _readline(process, 10.0)
        if not line.startswith("port "):
            raise RuntimeError(f"{kind} did not start: {line!r}")
        return process.pid, int(line.split()[1])

    def proxy(
        self,
        hosts_file: Path,
        extra: Sequence[str] = (),
        *,
        nameserver: str = "127.0.0.1:9",
        clients: Sequence[str] = (),
        tree: Path = ROOT,
    ) -> tuple[int, int]:
        """Start ipv4proxy on a free loopback port, pinned; returns (pid, port).

        ``nameserver`` must be on loopback; ``clients`` (CIDRs) puts the listener in a config
        file with ``listeners[0].clients`` set, since --listen takes no clients; ``tree`` is
        the checkout whose code runs (another one for an A/B, `benchmarks.ab`)."""
        port = free_port()
        log = open(self.workdir / f"proxy-{port}.log", "w", encoding="utf-8")  # noqa: SIM115
        if clients:
            config = self.workdir / f"proxy-{port}.yaml"
            listener = {"host": "127.0.0.1", "port": port, "clients": list(clients)}
            config.write_text(json.dumps({"listeners": [listener]}), encoding="utf-8")
            listen = ["--config", str(config)]
        else:
            listen = ["--listen", f"127.0.0.1:{port}"]
        if not nameserver.startswith("127."):
            raise ValueError(f"nameserver {nameserver} is not on loopback")
        argv = [
            *self.cores.prefix(self.cores.proxy),
            sys.executable,
            "-m",
            "ipv4proxy",
            *listen,
            "--hosts-file",
            str(hosts_file),
            # Names come from the hosts file and targets are literals: no query is ever
            # sent, and if one were it would stay on loopback (the abuse run's never-
            # answering server is on loopback too).
            "--nameserver",
            nameserver,
            "--log-level",
            "warning",
            # The default policy refuses loopback destinations and every port but 80, 443
            # and 5222; every server here is on 127.0.0.0/8 on a port the kernel picks.
            "--policy-allow-cidrs",
            "127.0.0.0/8",
            "--policy-ports",
            "1-65535",
            # No admin listener: proxies started one after another (or another engineer's)
            # would collide on its default port, and it is not what is measured.
            "--admin-listen",
            "",
            *extra,
        ]
        process = self._spawn(argv, stderr=log, tree=tree)
        log.close()
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            if process.poll() is not None:
                text = (self.workdir / f"proxy-{port}.log").read_text(encoding="utf-8")
                raise RuntimeError(f"the proxy exited at start:\n{text}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return process.pid, port
            time.sleep(0.05)
        raise RuntimeError("the proxy did not start listening within 15 s")

    def peer(self, name: str) -> tuple[int, int]:
        """Start another proxy (``microsocks`` or ``tinyproxy``, installed) on a free loopback
        port, pinned to the proxy's core, with its logging off; returns (pid, port)."""
        port = free_port()
        if name == "microsocks":
            argv = [name, "-i", "127.0.0.1", "-p", str(port)]
        elif name == "tinyproxy":
            config = self.workdir / f"tinyproxy-{port}.conf"
            # Foreground (-d), loopback only, CONNECT to any port (no ConnectPort line), room
            # for the suite's 64 concurrent tunnels, nothing logged below errors.
            config.write_text(
                f"Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 1024\n"
                "Allow 127.0.0.1\nLogLevel Error\nDisableViaHeader Yes\n",
                encoding="utf-8",
            )
            argv = [name, "-d", "-c", str(config)]
        else:
            raise ValueError(f"unknown peer {name}")
        log = open(self.workdir / f"{name}-{port}.log", "w", encoding="utf-8")  # noqa: SIM115
        # Its output (microsocks logs each client on stdout) to the file, not a pipe nobody
        # reads, which would fill and stop it.
        process = self._spawn([*self.cores.prefix(self.cores.proxy), *argv], stderr=log, stdout=log)
        log.close()
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            if process.poll() is not None:
                text = (self.workdir / f"{name}-{port}.log").read_text(encoding="utf-8")
                raise RuntimeError(f"{name} exited at start:\n{text}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return process.pid, port
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start listening within 15 s")

    def client(self, mode: str, args: Sequence[str], timeout: float) -> dict[str, Any]:
        """Run one loadgen client to completion; its JSON report plus ``wall_seconds`` and
        ``process_cpu_seconds`` (all its CPU, from the kernel's accounting of children)."""
        argv = [*self.cores.prefix(self.cores.load), str(self.loadgen), mode, *args]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        done = subprocess.run(  # noqa: S603
            argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
        )
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"loadgen {mode} failed ({done.returncode}): {done.stderr.strip()}")
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        report["wall_seconds"] = wall
        report["process_cpu_seconds"] = (after.ru_utime - before.ru_utime) + (
            after.ru_stime - before.ru_stime
        )
        return report

    @contextlib.contextmanager
    def holder(self, args: Sequence[str], timeout: float) -> Iterator[Holder]:
        """A ``loadgen hold`` process that keeps its tunnels open until the block ends."""
        argv = [*self.cores.prefix(self.cores.load), str(self.loadgen), "hold", *args]
        with self._holding(argv, timeout) as holder:
            yield holder

    @contextlib.contextmanager
    def python_holder(self, args: Sequence[str], timeout: float) -> Iterator[Holder]:
        """A ``python3 -m benchmarks.abuse_client MODE ...`` load on the load core: it holds
        its connections until the block ends (``Holder.opened`` is its report)."""
        argv = [*self.cores.prefix(self.cores.load), *_ABUSE_CLIENT, *args]
        with self._holding(argv, timeout) as holder:
            yield holder

    def python_server(self, kind: str) -> tuple[int, int]:
        """Start ``abuse_client source`` (keeps sending) or ``sink`` (never reads) on
        127.0.0.1, on the load core; returns (pid, port)."""
        argv = [*self.cores.prefix(self.cores.load), *_ABUSE_CLIENT, kind]
        process = self._spawn(argv, stdin=subprocess.PIPE)  # it ends when stdin closes
        line = _readline(process, 15.0)
        if not line.startswith("port "):
            raise RuntimeError(f"abuse_client {kind} did not start: {line!r}")
        return process.pid, int(line.split()[1])

    @contextlib.contextmanager
    def _holding(self, argv: Sequence[str], timeout: float) -> Iterator[Holder]:
        process = self._spawn(argv, stdin=subprocess.PIPE)
        try:
            yield Holder(process, timeout)
        finally:
            stop_child(process)
            self.started.remove(process)

    def stop(self, pid: int) -> None:
        """Stop one process this object started, by its PID (others are left alone)."""
        for process in self.started:
            if process.pid == pid:
                stop_child(process)
                self.started.remove(process)
                return
        raise ValueError(f"process {pid} was not started here")

    def close(self) -> None:
        for process in reversed(self.started):
            stop_child(process)
        self.started.clear()


class Holder:
    """Talks to a running ``loadgen hold``: its opening report, then ``verify`` rounds."""

    def __init__(self, process: subprocess.Popen[str], timeout: float) -> None:
        self.process = process
        self.pid = process.pid
        line = _readline(process, timeout)
        if not line.startswith("{"):
            raise RuntimeError(f"loadgen hold failed: {line!r}")
        self.opened: dict[str, Any] = json.loads(line)

    def verify(self) -> int:
        """Echo one byte on every tunnel again; returns how many answered (all or 0)."""
        assert self.process.stdin is not None
        self.process.stdin.write("verify\n")
        self.process.stdin.flush()
        verified: int = json.loads(_readline(self.process, 60.0))["verified"]
        return verified


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    """One line of a child's stdout, waiting at most ``timeout`` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise RuntimeError(f"process {process.pid} said nothing within {timeout:g} s")
    return process.stdout.readline().strip()


def stop_child(process: subprocess.Popen[Any], seconds: float = 5.0) -> None:
    """Stop one child we started: close its stdin, SIGTERM, then SIGKILL after ``seconds``."""
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(seconds)
    if process.stdout is not None:
        process.stdout.close()
