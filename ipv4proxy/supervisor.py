"""The supervisor of ``workers: N`` (N > 1): one process that starts N proxy processes on
one port and speaks for them (docs/operations.md, "Workers").

    start      bind checks first, so a busy port is reported once, naming the setting:
               the proxy listeners are bound here with SO_REUSEPORT and held (a port of 0
               is picked here, once, for every worker), the DNS addresses are tried, the
               admin listener is bound; then the workers are started, each
               ``python -m ipv4proxy`` with the same arguments and environment plus its
               role (`workers.WorkerRole`) and binding the listeners itself
    admin      /healthz: this process answers; /readyz: every worker answers ready;
               /metrics: every worker's page summed (`podmetrics`)
    SIGTERM    (or SIGINT) passed on to every worker, which drains as one process does;
               exit 0 once all exited; a second one is passed on as `CUT_SIGNAL` (they
               cut their tunnels) and the exit is 1, as is one after a worker had to
               be killed
    SIGHUP     the configuration is checked here (a bad one is refused with one line),
               then each worker re-reads it as one process does
    exit       a worker that exits unexpectedly is started again after a backoff (0.5 s,
               doubling to 30 s while it keeps dying young), with a line naming it, its
               PID and its exit status or signal

Workers run in a session of their own, so a terminal's Ctrl-C reaches the supervisor once
(not every worker twice); each worker's stdin is a pipe from here, and a worker whose pipe
ends (the supervisor was killed) drains and exits on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence

from ipv4proxy import podmetrics
from ipv4proxy.admin import Admin
from ipv4proxy.config import Config, changed_keys
from ipv4proxy.errors import ConfigError
from ipv4proxy.log import lifecycle, reload_refused, setup_logging
from ipv4proxy.workers import CUT_SIGNAL, ROLE_ENV, WorkerRole, shared

__all__ = ["Supervisor", "backoff", "exit_status"]

log = logging.getLogger("ipv4proxy")

# Restart backoff: the first restart after half a second (a crash that happens once costs
# a blink), doubling while the worker keeps dying young, up to 30 s (a worker that cannot
# start costs a few lines a minute, not a loop). A worker that lived YOUNG seconds or more
# starts the count again.
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
YOUNG = 60.0
# A worker's admin answers in milliseconds; one that has not answered in this long is
# counted not ready (and its last metrics page is used).
ASK_SECONDS = 2.0
# Past the drain's grace period, how long the workers get to close and exit before they
# are killed (each cuts its tunnels at the grace period and gives them 2 s to close).
EXIT_SLACK = 8.0
# Largest worker page read (a page is tens of KiB).
_MAX_PAGE = 16 * 1024 * 1024


def backoff(young_exits: int) -> float:
    """Seconds before a restart after ``young_exits`` exits in a row of a young worker."""
    return float(min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, young_exits - 1)))


def exit_status(returncode: int) -> str:
    """``exited with status 1`` or ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _hold_listener(host: str, port: int) -> socket.socket:
    """Bind (not listen) ``host:port`` with SO_REUSEPORT, as the workers will. Raises
    OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _try_dns(host: str, port: int) -> None:
    """Bind ``host:port`` for UDP and TCP and let go (worker 0 binds it). Raises OSError."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))


def _private_directory() -> str | None:
    """A new directory of mode 0700 for the workers' admin sockets (under TMPDIR), or
    None after logging why not."""
    try:
        return tempfile.mkdtemp(prefix="ipv4proxy-workers-")
    except OSError as exc:
        log.error("cannot make the workers' socket directory (TMPDIR): %s", exc)  # noqa: TRY400
        return None


async def _ask(path: str, url: str) -> tuple[int, bytes]:
    """GET ``url`` from the admin socket at ``path``: (status, body). Raises OSError,
    TimeoutError or ValueError."""
    async with asyncio.timeout(ASK_SECONDS):
        reader, writer = await asyncio.open_unix_connection(path, limit=_MAX_PAGE)
        try:
            writer.write(f"GET {url} HTTP/1.0\r\nHost: worker\r\n\r\n".encode())
            answer = await reader.read(_MAX_PAGE)
            while chunk := await reader.read(_MAX_PAGE - len(answer)):
                answer += chunk
        finally:
            writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class _Worker:
    """One worker slot: its role, its current process and what was last read from it."""

    def __init__(self, role: WorkerRole) -> None:
        self.role = role
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.young_exits = 0
        self.ready_once = False  # has answered ready since the supervisor started
        self.ready = False  # the current process has answered ready
        # A SIGHUP that came while the current process was starting: sent once it is
        # ready (a process that has not set its handler yet would die of it).
        self.reload_pending = False
        self.page: podmetrics.Page = []

    @property
    def name(self) -> str:
        return f"worker {self.role.index}"

    def reload(self) -> None:
        if self.ready:
            self.signal(signal.SIGHUP)
        else:
            self.reload_pending = True

    def signal(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


class Supervisor:
    """``count`` workers of ``config``; ``reread`` gives the configuration a SIGHUP reads
    (checked as `cli` checks it at start; raises ConfigError)."""

    def __init__(
        self,
        config: Config,
        count: int,
        argv: Sequence[str],
        environ: Mapping[str, str],
        reread: Callable[[], Config],
    ) -> None:
        self.config = config
        self.count = count
        self.argv = list(argv)
        self.environ = dict(environ)
        self.reread = reread
        self.workers: list[_Worker] = []
        self.held: list[socket.socket] = []
        self.metrics = podmetrics.WorkerMetrics()
        self.kept: podmetrics.Page = []  # what workers that exited had counted
        self.reloads = {"applied": 0, "refused": 0}
        self.stopping = asyncio.Event()
        self.force = asyncio.Event()
        self.killed = False
        self.pod_admin = ""
        self.announced = False  # "ready" logged
        self._tasks: list[asyncio.Task[None]] = []

    # -- the admin endpoints (admin.Endpoints) -----------------------------------------

    async def not_ready(self) -> str | None:
        if self.stopping.is_set():
            return "draining"
        answers = await asyncio.gather(*(self._ask(w, "/readyz") for w in self.workers))
        for worker, (status, _) in zip(self.workers, answers, strict=True):
            if status != 200:
                return f"{worker.name} not ready"
        return None

    async def page(self) -> bytes:
        asked = [w.process for w in self.workers]
        answers = await asyncio.gather(*(self._ask(w, "/metrics") for w in self.workers))
        ready = not self.stopping.is_set()
        for worker, process, (status, body) in zip(self.workers, asked, answers, strict=True):
            # One that exited meanwhile: its last page is already kept (`retire`).
            alive = process is not None and process.returncode is None
            answered = alive and process is worker.process and status == 200
            if answered:
                with contextlib.suppress(ValueError):
                    worker.page = podmetrics.parse(body.decode("utf-8", "replace"))
            ready = ready and answered and _ready(worker.page)
        pod: dict[str, dict[tuple[str, ...], float]] = {
            "ipv4proxy_ready": {(): 1.0 if ready else 0.0},
            "ipv4proxy_config_reloads": {(k,): float(v) for k, v in self.reloads.items()},
        }
        pages = [w.page for w in self.workers]
        return podmetrics.render(self.kept, pages, pod, self.metrics.registry)

    async def _ask(self, worker: _Worker, url: str) -> tuple[int, bytes]:
        if worker.process is None or worker.process.returncode is not None:
            return 0, b""
        try:
            return await _ask(worker.role.admin, url)
        except (OSError, TimeoutError, ValueError, IndexError):
            return 0, b""

    # -- running -----------------------------------------------------------------------

    async def run(self) -> int:
        """Bind, start the workers, serve until SIGTERM or SIGINT, drain; the exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        admin = Admin(self, self.config.admin.listen) if self.config.admin.listen else None
        ports = await self._bind(admin)
        private = _private_directory() if ports is not None else None
        if ports is None or private is None:
            for sock in self.held:
                sock.close()
            return 1
        try:
            for index in range(self.count):
                admin_path = os.path.join(private, f"worker-{index}.sock")
                worker = _Worker(WorkerRole(index, self.count, ports, admin_path, self.pod_admin))
                self.workers.append(worker)
                self._tasks.append(loop.create_task(self._keep(worker), name=worker.name))
            await self.stopping.wait()
            return await self._drain(admin)
        finally:
            for sock in self.held:
                sock.close()
            shutil.rmtree(private, ignore_errors=True)

    async def _bind(self, admin: Admin | None) -> tuple[int, ...] | None:
        """The bind checks; the listener ports held, or None after logging why not. Sets
        `pod_admin`."""
        where = "dns.listen (--dns-listen)"
        try:
            for host, port in self.config.dns.listen_addresses():
                _try_dns(host, port)
            where = "listeners (--listen)"
            for listener in self.config.listeners:
                self.held.append(_hold_listener(listener.host, listener.port))
            if admin is not None:
                where = f"admin.listen {self.config.admin.listen} (--admin-listen; '' turns it off)"
                host, port = await admin.start()
                self.pod_admin = f"{host}:{port}"
        except OSError as exc:
            log.error("cannot listen: %s: %s", where, exc)  # noqa: TRY400 - the reason is the message
            return None
        ports = tuple(int(sock.getsockname()[1]) for sock in self.held)
        lifecycle(
            log,
            "workers_starting",
            f"starting {self.count} workers on port {', '.join(map(str, ports))} (SO_REUSEPORT)",
            workers=self.count,
        )
        return ports

    async def _keep(self, worker: _Worker) -> None:
        """Run ``worker``, and run it again each time it exits while not stopping."""
        loop = asyncio.get_running_loop()
        env = {**self.environ, ROLE_ENV: worker.role.to_env()}
        argv = [sys.executable, "-m", "ipv4proxy", *self.argv]
        while not self.stopping.is_set():
            worker.started = loop.time()
            worker.ready = worker.reload_pending = False  # a new process reads the file
            try:
                worker.process = await asyncio.create_subprocess_exec(
                    *argv, env=env, stdin=asyncio.subprocess.PIPE, start_new_session=True
                )
            except OSError as exc:  # no memory, no process slot: like an exit, retried
                status = f"could not be started ({exc})"
            else:
                pid = worker.process.pid
                if self.stopping.is_set():  # the stop came while it was being started
                    worker.signal(signal.SIGTERM)
                self.metrics.workers.inc()
                lifecycle(
                    log,
                    "worker_started",
                    f"{worker.name} started (pid {pid})",
                    worker=worker.role.index,
                    pid=pid,
                )
                ready = loop.create_task(self._announce_ready(worker, pid), name="ready")
                returncode = await worker.process.wait()
                ready.cancel()
                self.metrics.workers.dec()
                self.kept = podmetrics.retire(self.kept, worker.page)
                worker.page = []
                if self.stopping.is_set():
                    lifecycle(
                        log,
                        "worker_stopped",
                        f"{worker.name} (pid {pid}) {exit_status(returncode)}",
                        worker=worker.role.index,
                        pid=pid,
                        returncode=returncode,
                    )
                    return
                status = f"(pid {pid}) {exit_status(returncode)} unexpectedly"
            young = loop.time() - worker.started < YOUNG
            worker.young_exits = worker.young_exits + 1 if young else 1
            delay = backoff(worker.young_exits)
            lifecycle(
                log,
                "worker_exited",
                f"{worker.name} {status}; starting it again in {delay:g} s",
                logging.ERROR,
                worker=worker.role.index,
                status=status,
                restart_in=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if not self.stopping.is_set():
                self.metrics.restarts.inc()

    async def _announce_ready(self, worker: _Worker, pid: int) -> None:
        """Log once ``worker`` answers ready, and "ready" once every worker first is (as
        one process logs it once it listens). Cancelled when the worker exits."""
        while (await self._ask(worker, "/readyz"))[0] != 200:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.1)
        worker.ready_once = worker.ready = True
        if worker.reload_pending:
            worker.reload_pending = False
            worker.signal(signal.SIGHUP)
        lifecycle(log, "worker_ready", f"{worker.name} ready (pid {pid})", worker=worker.role.index)
        if not self.announced and all(w.ready_once for w in self.workers):
            self.announced = True
            lifecycle(log, "ready", f"ready: {self.count} workers", workers=self.count)

    def _on_stop(self, signum: signal.Signals) -> None:
        if self.stopping.is_set():
            lifecycle(log, "stopping_now", f"second {signum.name}: every worker cuts its tunnels")
            self.force.set()
        else:
            grace = self.config.drain.grace_period
            lifecycle(
                log,
                "draining",
                f"{signum.name}: draining {self.count} workers; what is still open after "
                f"{grace:g} s is cut",
                grace_period=grace,
            )
        # The second is passed on as CUT_SIGNAL: a worker takes repeated SIGTERMs as one
        # stop (and two sent before a busy worker ran would reach it as one anyway: the
        # kernel keeps one pending signal of each number).
        forward = CUT_SIGNAL if self.stopping.is_set() else signal.SIGTERM
        self.stopping.set()
        for worker in self.workers:
            worker.signal(forward)

    async def _drain(self, admin: Admin | None) -> int:
        """Wait for every worker to exit (killing what is left past the grace period and
        `EXIT_SLACK`); the exit code."""
        bound = self.config.drain.grace_period + EXIT_SLACK
        _, late = await asyncio.wait(self._tasks, timeout=bound)
        if late:
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    log.error("%s (pid %d) did not exit: killed", worker.name, worker.process.pid)
                    worker.signal(signal.SIGKILL)
                    self.killed = True
            await asyncio.wait(late, timeout=EXIT_SLACK)
        if admin is not None:
            await admin.close()
        lifecycle(log, "stopped", f"stopped; {self.count} workers exited", workers=self.count)
        return 1 if self.force.is_set() or self.killed else 0

    def reload(self) -> None:
        """SIGHUP: check the configuration once here, then pass the signal on."""
        old = self.config
        try:
            new = self.reread()
            _reloadable(old, new)
            shared(new, self.count, 0)
        except ConfigError as exc:
            self.reloads["refused"] += 1
            reload_refused(log, exc)
            return
        self.config = new
        self.reloads["applied"] += 1
        setup_logging(new.log.level, new.log.format, access=new.log.access)
        for worker in self.workers:
            worker.reload()
        changed = changed_keys(old, new)
        lifecycle(
            log,
            "reloaded",
            f"reloaded configuration; changed: {', '.join(changed) or 'nothing'}; "
            f"passed to {self.count} workers",
            changed=changed,
        )


def _reloadable(old: Config, new: Config) -> None:
    """Raise ConfigError when ``new`` changes what a running pod cannot change (each
    worker would refuse it too, as one process does)."""
    for key in ("listeners", "admin", "workers"):
        if getattr(new, key) != getattr(old, key):
            raise ConfigError(f"{key} cannot change on reload; restart")
    if new.dns.listen != old.dns.listen:
        raise ConfigError("dns.listen cannot change on reload; restart")


def _ready(page: podmetrics.Page) -> bool:
    """Whether a worker's page says it is ready (``ipv4proxy_ready 1``)."""
    return any(
        sample.value == 1
        for family in page
        if family.name == "ipv4proxy_ready"
        for sample in family.samples
    )
