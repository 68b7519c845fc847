"""The ``ipv4proxy`` command: flags, environment and file into one Config; then run.

    ipv4proxy [FLAGS]                        run the proxy (uvloop)
    ipv4proxy check-config [FLAGS]           validate, print the effective configuration
                                             as YAML (secrets masked), exit
    ipv4proxy doctor [FLAGS] HOST[:PORT]     diagnose one destination (``--json``)
    ipv4proxy healthcheck [FLAGS]            GET /healthz of the running proxy's admin
                                             listener (the image's HEALTHCHECK)

Every configuration key has a flag derived from its path (``--dialer-connect-timeout``);
the common ones also have short spellings (``--listen``, ``--nameserver`` ...).

With ``workers`` above 1 the process is a supervisor (ipv4proxy/supervisor.py) that runs
that many of these processes on one port; the signals below reach every one of them.

Signals while running: SIGTERM/SIGINT drain (not ready at once, listeners closed, open
tunnels get ``drain.grace_period`` seconds, the rest are cut, exit 0); a second one cuts
every tunnel at once and exits 1. SIGHUP re-reads the file (flags and environment are those
of the start): new connections get the new settings, open ones keep theirs; an invalid file,
or one that changes the listeners, is refused with a log line and the old settings stay.

Exit codes: 0 after a clean stop, 2 for an invalid configuration, 1 when a listener cannot
be bound or a stop was forced; check-config: 1 when the resolver cannot be set up;
doctor: 0 when an IPv4 connection succeeded, 1 when none did; healthcheck: 0 when /healthz
answered 200, 1 otherwise (ipv4proxy/healthcheck.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import uvloop

from ipv4proxy import __version__
from ipv4proxy.admin import Admin
from ipv4proxy.config import (
    Config,
    changed_keys,
    flag_name,
    iter_keys,
    load,
    parse_hostport,
    to_yaml,
    unknown_environment,
)
from ipv4proxy.doctor import diagnose, render_text
from ipv4proxy.errors import ConfigError, ProtocolError
from ipv4proxy.healthcheck import loopback_for, probe, running_proxy
from ipv4proxy.log import lean_records, lifecycle, reload_refused, setup_logging
from ipv4proxy.net.dnslisten import (
    DnsListener,
    effective_upstreams,
    loop_problem,
)
from ipv4proxy.net.resolver import Resolver
from ipv4proxy.policy import Policy
from ipv4proxy.protocols import HostKind
from ipv4proxy.protocols.host import parse_authority
from ipv4proxy.rules import parse_users
from ipv4proxy.server import Proxy, local_addresses_now
from ipv4proxy.supervisor import Supervisor
from ipv4proxy.workers import CUT_SIGNAL, WorkerRole, shared, worker_count

__all__ = ["build_policy", "main", "parse"]

log = logging.getLogger("ipv4proxy")

# Short spellings kept for the flags people type most.
ALIASES: Mapping[tuple[str, ...], tuple[str, ...]] = {
    ("listeners",): ("--listen",),
    ("log", "level"): ("--log-level",),
    ("resolver", "nameservers"): ("--nameserver",),
    ("resolver", "resolv_conf"): ("--resolv-conf",),
    ("resolver", "hosts_file"): ("--hosts-file",),
    ("dialer", "connect_timeout"): ("--connect-timeout",),
    ("dialer", "attempt_delay"): ("--attempt-delay",),
    ("parents",): ("--parent",),
}


# What `doctor` reads of the configuration: the resolver and dialer it diagnoses with, and
# the DNS listener it asks (dns.listen).
_DOCTOR_SECTIONS = ("resolver", "dialer", "log", "dns")

_COMMANDS_HELP = """commands:
  ipv4proxy [FLAGS]                      run the proxy
  ipv4proxy check-config [FLAGS]         validate, print the effective configuration, exit
  ipv4proxy doctor [FLAGS] HOST[:PORT]   diagnose one destination from this machine
  ipv4proxy healthcheck [FLAGS]          ask the running proxy's /healthz (exit 0 when 200)

Every flag is also an environment variable: --dialer-connect-timeout is
IPV4PROXY_DIALER_CONNECT_TIMEOUT. Precedence: flag > environment > file > default.
Every key with its default and meaning: deploy/config.example.yaml."""


def _metavar(path: tuple[str, ...], kind: Any, f: dataclasses.Field[Any]) -> str:
    """A placeholder that says what a flag takes (not argparse's VALUE for all)."""
    name = path[-1]
    choices = getattr(f.metadata.get("check"), "choices", None)
    if choices:
        return "|".join(choices)
    if typing.get_origin(kind) is tuple:
        return "HOST:PORT" if name in ("listeners", "listen") else "ITEM[,ITEM...]"
    if kind is bool:
        return "true|false"
    if kind is int:
        return "BYTES" if name.endswith("memory") else "N"
    if kind is float:
        seconds = ("timeout", "period", "delay", "cooldown", "ttl", "window")
        return "SECONDS" if any(word in name for word in seconds) else "NUMBER"
    if name == "listen":
        return "HOST:PORT"
    if name.endswith("_file") or name.endswith("_conf"):
        return "PATH"
    return "TEXT"


def _default(f: dataclasses.Field[Any]) -> str:
    value = f.default
    if f.metadata.get("secret") or value is dataclasses.MISSING:
        return ""
    if isinstance(value, tuple):
        return f" (default: {','.join(map(str, value))})" if value else ""
    if value in ("", None):
        return ""
    if isinstance(value, bool):  # as YAML and check-config write it
        value = "true" if value else "false"
    return f" (default: {value})"


def _parser(command: str = "run") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipv4proxy" if command == "run" else f"ipv4proxy {command}",
        description="Egress proxy (HTTP CONNECT, HTTP, SOCKS4a/5 on one port) that reaches\n"
        "every destination over IPv4 only.",
        epilog=_COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ipv4proxy {__version__}")
    parser.add_argument(
        "--config", metavar="PATH", help="YAML configuration file (env IPV4PROXY_CONFIG)"
    )
    for path, kind, f in iter_keys():
        if command == "doctor" and path[0] not in _DOCTOR_SECTIONS:
            continue
        names = ALIASES.get(path, ())
        canonical = flag_name(path)
        options = (*names, canonical) if canonical not in names else names
        repeatable = typing.get_origin(kind) is tuple
        parser.add_argument(
            *options,
            dest="/".join(path),
            action="append" if repeatable else "store",
            metavar=_metavar(path, kind, f),
            help=f.metadata.get("help", "") + (" (repeatable)" if repeatable else "") + _default(f),
        )
    if command == "doctor":
        parser.add_argument("target", metavar="HOST[:PORT]", help="destination (port 443)")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Flags, environment and the config file into one Config. Raises ConfigError."""
    return _parse(argv, environ, "run")[0]


def _parse(
    argv: Sequence[str], environ: Mapping[str, str], command: str
) -> tuple[Config, dict[str, Any]]:
    """Config plus the command's own arguments (doctor's target). Raises ConfigError."""
    args = vars(_parser(command).parse_args(argv))
    own: dict[str, Any] = {key: args.pop(key) for key in ("target", "json") if key in args}
    path = args.pop("config") or environ.get("IPV4PROXY_CONFIG")
    text = None
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
    flags = {tuple(dest.split("/")): value for dest, value in args.items() if value is not None}
    return load(text, environ, flags), own


def build_policy(config: Config) -> Policy:
    """The policy, with the users of ``auth.users_file`` read in. Raises ConfigError."""
    users: list[tuple[str, str]] = []
    path = config.auth.users_file
    if path:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as file:
                users = parse_users(file.read())
        except OSError as exc:
            raise ConfigError(f"auth.users_file: cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:  # names the line number, never its text
            raise ConfigError(f"auth.users_file: {path} {exc}") from None
        if not users:
            raise ConfigError(f"auth.users_file: {path} holds no USER:PASSWORD line")
    return Policy(config, users)


def dns_safe(config: Config) -> None:
    """Refuse a DNS listener whose upstreams lead back to itself. Raises ConfigError."""
    if not config.dns.listen:
        return
    problem = loop_problem(config.dns, effective_upstreams(config), local_addresses_now())
    if problem:
        raise ConfigError(problem)


def checked(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """`parse`, plus the checks of the start: the DNS loop guard, the users file and the
    workers' shares. Raises ConfigError."""
    config = parse(argv, environ)
    dns_safe(config)
    build_policy(config)
    shared(config, worker_count(config.workers), 0)
    return config


def reload(
    proxy: Proxy,
    argv: Sequence[str],
    environ: Mapping[str, str],
    dns_listener: DnsListener | None = None,
    role: WorkerRole | None = None,
) -> bool:
    """SIGHUP: re-read the file (and the users file); apply them for new connections, or
    keep the old settings. A worker (``role``) takes its share (`WorkerRole.shape`)."""
    old = proxy.config
    try:
        new = parse(argv, environ)
        if role is not None:
            new = role.shape(new)
        dns_safe(new)
        proxy.reload(new, build_policy(new))
        if dns_listener is not None:
            dns_listener.reload(new)
    except ConfigError as exc:
        proxy.metrics.reloads.labels("refused").inc()
        reload_refused(log, exc)
        return False
    setup_logging(new.log.level, new.log.format, access=new.log.access)
    proxy.metrics.reloads.labels("applied").inc()
    changed = changed_keys(old, new)  # key names only: values may be secrets
    lifecycle(
        log,
        "reloaded",
        f"reloaded configuration; changed: {', '.join(changed) or 'nothing'}",
        changed=changed,
    )
    return True


def _connections(count: int) -> str:
    return f"{count} connection" if count == 1 else f"{count} connections"


async def run(
    config: Config,
    policy: Policy | None,
    argv: Sequence[str],
    environ: Mapping[str, str],
    role: WorkerRole | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then drain; returns the exit code. A worker
    (``role``) joins the others on the listeners' ports, serves its admin endpoints on its
    private socket, and stops as on SIGTERM when its stdin (a pipe from the supervisor)
    ends."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    force = asyncio.Event()
    drained = asyncio.Event()

    def on_stop(signum: signal.Signals) -> None:
        if drained.is_set():
            return  # taken from the loop after the drain: nothing left to stop
        # A worker takes every SIGTERM/SIGINT as one stop: one sent to the whole group
        # (systemd's default KillMode) and the supervisor's own must not cut its tunnels;
        # the supervisor asks for the cut with CUT_SIGNAL.
        if stop.is_set() and (role is None or signum == CUT_SIGNAL):
            what = "the supervisor's second stop" if role else f"second {signum.name}"
            lifecycle(log, "stopping_now", f"{what}: cutting every tunnel now")
            force.set()
        stop.set()

    def on_cut() -> None:
        stop.set()  # a cut is a stop too, whichever signal came first
        on_stop(CUT_SIGNAL)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop, signum)
    proxy = Proxy(config, policy=policy)
    if role is not None:
        loop.add_signal_handler(CUT_SIGNAL, on_cut)
        proxy.reuse_port = True
        loop.add_reader(0, _parent_gone, loop, stop)
    dns_listener = None
    if config.dns.listen:
        # Shaping reads the proxy's own dialer (memory, breakers) and policy, as they are
        # after each reload.
        dns_listener = DnsListener(
            config,
            proxy.metrics,
            dialer=lambda: proxy.upstream.dialer,
            policy=lambda: proxy.policy,
        )
    loop.add_signal_handler(signal.SIGHUP, reload, proxy, argv, environ, dns_listener, role)
    admin = Admin(proxy, config.admin.listen) if config.admin.listen else None
    if role is not None:
        admin = Admin(proxy, unix=role.admin)
    # Which setting a failed bind belongs to, so the error says what to change. The DNS
    # listener binds first: /readyz turns ready in proxy.start(), and a sidecar's app must
    # not start before its DNS answers.
    where = "dns.listen (--dns-listen)"
    try:
        if dns_listener is not None:
            await dns_listener.start()
        where = "listeners (--listen)"
        await proxy.start()
        if admin is not None:
            where = f"admin.listen {config.admin.listen} (--admin-listen; '' turns it off)"
            proxy.listening_also(await admin.start())
        if role is not None and role.pod_admin:
            proxy.listening_also(parse_hostport(role.pod_admin))
    except OSError as exc:
        log.error("cannot listen: %s: %s", where, exc)  # noqa: TRY400 - the reason is the message
        if dns_listener is not None:
            await dns_listener.close()
        await proxy.close()
        return 1
    # Everything made at start lives as long as the process: move it out of the collector's
    # sight, so the collections that per-tunnel garbage triggers do not walk it every time.
    gc.freeze()
    lifecycle(log, "ready", "ready")
    await stop.wait()
    grace = proxy.config.drain.grace_period
    open_now = len(proxy.tunnels) + len(proxy.sessions)
    lifecycle(
        log,
        "draining",
        f"draining: not ready, listeners closed, {_connections(open_now)} open; "
        f"what is still open after {grace:g} s is cut",
        open=open_now,
        grace_period=grace,
    )
    if dns_listener is not None:
        dns_listener.stop_listening()  # with the proxy listeners; queries in flight finish
    cut = await proxy.drain(grace, force)
    if dns_listener is not None:
        await dns_listener.close()
    if admin is not None:
        await admin.close()
    # Drained: a stop signal from here to the exit has nothing left to stop, and must not
    # kill the process by the default action once the closing loop has dropped its
    # handlers (systemd sends SIGTERM to every process of the unit; a worker gets the
    # supervisor's too). Ignored first, while the loop's handler takes what is pending
    # (changing a handler with a signal pending and no Python handler makes CPython
    # report "ignored due to race condition"), then taken from the loop, which would put
    # the default action back when it closes, then ignored again.
    drained.set()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)
    lifecycle(log, "stopped", f"stopped; {_connections(cut)} cut", cut=cut)
    return 1 if force.is_set() else 0


def _parent_gone(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """A worker's stdin is readable: the supervisor's end of the pipe closed (it never
    writes), so it is gone; drain as on SIGTERM rather than run on unsupervised."""
    loop.remove_reader(0)
    lifecycle(log, "supervisor_gone", "the supervisor is gone: draining")
    stop.set()


_SCHEME_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def _authority(target: str) -> tuple[str, int]:
    """``HOST[:PORT]``, or the authority of a pasted URL (``https://web.whatsapp.com/``, its
    scheme's port by default), with the default port (443) to use."""
    scheme, sep, rest = target.partition("://")
    if not sep:
        return target, 443
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    return authority, _SCHEME_PORTS.get(scheme.lower(), 443)


async def doctor(config: Config, target: str, as_json: bool) -> int:
    """Print the diagnosis of ``target``; 0 when an IPv4 connection succeeded."""
    try:
        authority, default_port = _authority(target)
        destination = parse_authority(authority, default_port=default_port)
    except ProtocolError as exc:
        print(f"ipv4proxy doctor: {exc}", file=sys.stderr)
        return 2
    report = await diagnose(
        config,
        destination.host,
        destination.port,
        ipv4_literal=destination.kind is HostKind.IPV4,
    )
    print(report.to_json() if as_json else render_text(report))
    return 0 if report.ipv4_ok else 1


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _resolver_warnings(config: Config) -> list[str]:
    """What the resolver would warn about at start (an unreadable resolv.conf or hosts
    file, no IPv4 nameserver), found by building it as `run` does."""
    collect = _Collect()
    resolver_log = logging.getLogger("ipv4proxy.resolver")
    resolver_log.addHandler(collect)
    try:
        Resolver(config.resolver)
    finally:
        resolver_log.removeHandler(collect)
    return collect.messages


COMMANDS = ("check-config", "doctor", "healthcheck")


def healthcheck(argv: Sequence[str]) -> int:
    """0 when the admin listener of the running proxy (or of ``argv``'s flags, if any)
    answers /healthz with 200; 1 otherwise, saying why on stderr."""
    found = None if argv else running_proxy()
    args, environ = found if found else (list(argv), dict(os.environ))
    try:
        listen = parse(args, environ).admin.listen
    except ConfigError as exc:
        print(f"ipv4proxy healthcheck: {exc}", file=sys.stderr)
        return 1
    if not listen:
        print("ipv4proxy healthcheck: admin.listen is off: nothing to ask", file=sys.stderr)
        return 0
    host, port = parse_hostport(listen, key="admin.listen")
    problem = probe(loopback_for(host), port)
    if problem:
        print(f"ipv4proxy healthcheck: {problem}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args and args[0] in COMMANDS else "run"
    if command == "healthcheck":
        sys.exit(healthcheck(args))
    role = WorkerRole.from_environ(os.environ)
    count = 1
    try:
        config, own = _parse(args, os.environ, command)
        policy = build_policy(config)
        if command != "doctor":
            dns_safe(config)
        if role is not None:  # a worker: its supervisor counted (`auto` is read once)
            config = role.shape(config)
        elif command != "doctor":
            count = worker_count(config.workers)
            shared(config, count, 0)  # each worker's share of the limits is at least 1
    except ConfigError as exc:
        print(f"ipv4proxy: {exc}", file=sys.stderr)
        sys.exit(2)
    unknown = unknown_environment(os.environ)
    if command == "check-config":
        # An unused variable is only named; a resolver that could not be set up (no
        # nameserver, an unreadable file) fails the check: the proxy would not resolve.
        unusable = _resolver_warnings(config)
        for warning in unknown + unusable:
            print(f"ipv4proxy: warning: {warning}", file=sys.stderr)
        print(to_yaml(config), end="")
        sys.exit(1 if unusable else 0)
    setup_logging(config.log.level, config.log.format, access=config.log.access)
    for warning in unknown if role is None else ():  # a worker's are its supervisor's
        log.warning("%s", warning)
    if command == "doctor":
        try:
            sys.exit(uvloop.run(doctor(config, own["target"], own["json"])))
        except BrokenPipeError:  # `doctor --json | head`: the reader left; not an error
            # Python's documented pattern: point stdout at devnull so the exit flush is quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
    lean_records()
    if role is None and count > 1:
        supervisor = Supervisor(config, count, args, os.environ, lambda: checked(args, os.environ))
        sys.exit(uvloop.run(supervisor.run()))
    sys.exit(uvloop.run(run(config, policy, args, os.environ, role)))
