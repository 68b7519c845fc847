"""The proxy under test, run for real: ``python3 -m ipv4proxy`` as a subprocess.

`DEFAULT_PROXY_FLAGS` is the one place that lists the flags every test proxy gets; a
policy change (for example, loopback destinations needing an opt-in flag) is made there.
Each proxy listens on 127.0.0.1:0, is pointed at the test dnsmasq, and keeps /etc/hosts
out (``--hosts-file /dev/null``). Its stderr is read line by line in a thread, so a test
can wait (bounded) for an access line, and a failing test can show the whole log.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from helpers.net import client_env
from helpers.process import STOP_SECONDS, stop_process
from ipv4proxy.log import parse_fields

__all__ = [
    "DEFAULT_PROXY_FLAGS",
    "ProxyFactory",
    "ProxyProcess",
    "ProxyStartError",
    "parse_access_line",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

# Flags every test proxy gets, besides --listen and --nameserver (which depend on the run):
# neither the host's /etc/hosts nor its resolv.conf (search domains, ndots) may change what
# a test name resolves to. Every test server listens on 127.0.0.0/8 on a port the kernel
# picks, which the default policy refuses (loopback is a special range, and only ports 80,
# 443 and 5222 are allowed), so the test proxies open exactly that: loopback, any port.
# The admin listener takes a free port (`ProxyProcess.admin_port`), so proxies started side
# by side never collide on the default 9128.
DEFAULT_PROXY_FLAGS: tuple[str, ...] = (
    "--hosts-file",
    "/dev/null",
    "--resolv-conf",
    "/dev/null",
    "--policy-allow-cidrs",
    "127.0.0.0/8",
    "--policy-ports",
    "1-65535",
    "--log-level",
    "info",
    "--admin-listen",
    "127.0.0.1:0",
    # Tests assert the exact status and reason of failed CONNECTs; the silent modes are
    # tested where they are set explicitly (tests/integration/test_client_matrix.py).
    "--http-connect-failure",
    "status",
)

# Bounds: waiting for the "listening on" line, and for a log line a test expects (stopping
# is bounded by helpers.process.STOP_SECONDS).
START_SECONDS = 15.0
LOG_WAIT_SECONDS = 5.0
# A log larger than this many lines means a runaway loop; stop collecting.
_MAX_LOG_LINES = 200_000

# The proxy listener's line, not the DNS listener's ("dns listening on ...", logged first).
_LISTENING = re.compile(r"(?<!dns )listening on 127\.0\.0\.1:(\d+)")
_ADMIN = re.compile(r"admin endpoints on http://127\.0\.0\.1:(\d+)")
_ACCESS = re.compile(r"\btunnel client=")
# Lines that mean the proxy met an error it did not handle.
_CRASH_MARKERS = ("Traceback (most recent call last)", "exception was never retrieved")


class ProxyStartError(RuntimeError):
    """The proxy exited or did not say "listening on" in time; the message has its stderr."""


def _logged_at(line: str) -> float:
    """Epoch seconds of a text log line's stamp (UTC, ``2026-12-03T07:03:43.709Z``)."""
    try:
        stamp = datetime.datetime.strptime(line[:24], "%Y-%m-%dT%H:%M:%S.%fZ")
        return stamp.replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return float("inf")  # not a stamped line: never passed over


def parse_access_line(line: str) -> dict[str, str]:
    """An access line's ``key=value`` fields, read back as the proxy wrote them."""
    return parse_fields(line)


class ProxyProcess:
    """One running proxy. `port`, `url`, `logs()`, `wait_for_access()`, `stop()`."""

    def __init__(
        self,
        nameserver_port: int,
        extra_args: Sequence[str],
        log_path: Path,
        *,
        nameserver_host: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        """`command_prefix` runs the proxy through another command (the lab's ``ip netns
        exec NS setpriv ...``, which execs, so the PID stays the proxy's own)."""
        self.argv: list[str] = [
            *command_prefix,
            sys.executable,
            "-m",
            "ipv4proxy",
            "--listen",
            "127.0.0.1:0",
            "--nameserver",
            f"{nameserver_host}:{nameserver_port}",
            *DEFAULT_PROXY_FLAGS,
            *extra_args,
        ]
        self.log_path = log_path
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self.port = 0
        self.admin_port = 0  # 0 when the admin listener is off
        self.returncode: int | None = None
        self.killed = False

    @property
    def pid(self) -> int:
        """The process id (for /proc sampling and prlimit); 0 before start."""
        return self._process.pid if self._process is not None else 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process and wait, bounded, for its "listening on" line."""
        env = client_env({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        self._process = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read_stderr, name="proxy-stderr", daemon=True)
        self._reader.start()
        line = self.wait_for_line(lambda text: _LISTENING.search(text) is not None, START_SECONDS)
        match = _LISTENING.search(line) if line else None
        if match is None:
            self.stop()
            raise ProxyStartError(
                f"{' '.join(self.argv)} did not log 'listening on 127.0.0.1:PORT' within "
                f"{START_SECONDS} s (exit code {self.returncode}); stderr:\n"
                + "\n".join(self.logs())
            )
        self.port = int(match[1])
        if self._admin_on():
            line = self.wait_for_line(lambda text: _ADMIN.search(text) is not None, START_SECONDS)
            found = _ADMIN.search(line) if line else None
            if found is None:
                self.stop()
                raise ProxyStartError(
                    "no 'admin endpoints on' line; stderr:\n" + "\n".join(self.logs())
                )
            self.admin_port = int(found[1])

    def _admin_on(self) -> bool:
        """The last --admin-listen flag wins; an empty value turns the listener off."""
        values = [self.argv[i + 1] for i, a in enumerate(self.argv[:-1]) if a == "--admin-listen"]
        return bool(values and values[-1])

    def _read_stderr(self) -> None:
        process = self._process
        if process is None or process.stderr is None:
            return
        with self.log_path.open("w", encoding="utf-8") as copy:
            for raw in process.stderr:
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                copy.write(text + "\n")
                copy.flush()
                with self._changed:
                    if len(self._lines) < _MAX_LOG_LINES:
                        self._lines.append(text)
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def logs(self) -> list[str]:
        """Every stderr line so far."""
        with self._changed:
            return list(self._lines)

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def mark(self) -> int:
        """The number of stderr lines so far: pass it as `since` to look only at later lines."""
        with self._changed:
            return len(self._lines)

    def wait_for_line(
        self, matches: Callable[[str], bool], timeout: float = LOG_WAIT_SECONDS, since: int = 0
    ) -> str | None:
        """The first line from index `since` on, seen or arriving within `timeout`, that matches."""
        deadline = time.monotonic() + timeout
        seen = since
        # Bounded twice: by the deadline and by the log size cap (each pass reads new lines).
        for _ in range(_MAX_LOG_LINES + 1):
            with self._changed:
                for text in self._lines[seen:]:
                    if matches(text):
                        return text
                seen = len(self._lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not (self._reader and self._reader.is_alive()):
                    return None
                self._changed.wait(remaining)
        return None

    def wait_for_access(
        self,
        since: int = 0,
        timeout: float = LOG_WAIT_SECONDS,
        after: float | None = None,
        **expected: str,
    ) -> dict[str, str]:
        """Wait, bounded, for an access line (from line `since` on) whose fields include `expected`.

        With `after` (epoch seconds, e.g. a wire Tunnel's ``opened``), lines logged before it
        are passed over: a client port the kernel reused would otherwise find an earlier
        connection's line. Returns its fields; raises AssertionError with the whole log when
        none arrives in time.
        """

        def matches(text: str) -> bool:
            if _ACCESS.search(text) is None:
                return False
            if after is not None and _logged_at(text) < after - 0.001:
                return False
            fields = parse_access_line(text)
            return all(fields.get(key) == value for key, value in expected.items())

        line = self.wait_for_line(matches, timeout, since)
        if line is None:
            raise AssertionError(
                f"no access line with {expected} within {timeout} s; proxy stderr:\n"
                + "\n".join(self.logs())
            )
        return parse_access_line(line)

    async def access(
        self, since: int = 0, after: float | None = None, **expected: str
    ) -> dict[str, str]:
        """`wait_for_access` for async tests: waits in a thread so the event loop keeps running
        (a client's TLS shutdown, for one, needs the loop to finish closing its tunnel)."""
        return await asyncio.to_thread(
            self.wait_for_access, since, LOG_WAIT_SECONDS, after, **expected
        )

    def crash_lines(self) -> list[str]:
        """Lines that show an unhandled error in the proxy."""
        return [text for text in self.logs() if any(marker in text for marker in _CRASH_MARKERS)]

    def send_signal(self, signum: signal.Signals) -> None:
        """Send a signal to the process this object started (by PID)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """Wait, bounded, for the process to exit; its exit code, or None if it has not."""
        if self._process is None:
            return None
        try:
            self.returncode = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self) -> None:
        """Stop the process this object started, by PID: SIGTERM, SIGKILL after a bound."""
        process = self._process
        if process is None:
            return
        if stop_process(process):
            self.killed = True
        self.returncode = process.returncode
        if self._reader is not None:
            self._reader.join(STOP_SECONDS)
        if process.stderr is not None:
            process.stderr.close()


# What the proxy_factory fixture gives: start a proxy with extra args after the defaults.
ProxyFactory = Callable[[Sequence[str]], ProxyProcess]
