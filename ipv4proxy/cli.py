"""The ``ipv4proxy`` command: flags, environment and file into one Config; then run.

    ipv4proxy [FLAGS]                 run the proxy (uvloop)
    ipv4proxy check-config [FLAGS]    validate, print the effective configuration, exit

Every configuration key has a flag derived from its path (``--dialer-connect-timeout``);
the common ones also have short spellings (``--listen``, ``--nameserver`` ...).
Exit codes: 0 after a clean stop, 2 for an invalid configuration, 1 when a listener cannot
be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import typing
from collections.abc import Mapping, Sequence

import uvloop

from ipv4proxy.config import Config, flag_name, iter_keys, load
from ipv4proxy.errors import ConfigError
from ipv4proxy.log import setup_logging
from ipv4proxy.net.resolver import Resolver
from ipv4proxy.policy import Policy
from ipv4proxy.rules import parse_users
from ipv4proxy.server import Proxy

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
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipv4proxy",
        description="Egress proxy (HTTP CONNECT, HTTP, SOCKS4a/5 on one port) "
        "that reaches every destination over IPv4 only.",
        epilog="Every flag is also an environment variable: --dialer-connect-timeout is "
        "IPV4PROXY_DIALER_CONNECT_TIMEOUT. Precedence: flag > environment > file > default.",
    )
    parser.add_argument(
        "--config", metavar="PATH", help="YAML configuration file (env IPV4PROXY_CONFIG)"
    )
    for path, kind, f in iter_keys():
        names = ALIASES.get(path, ())
        canonical = flag_name(path)
        options = (*names, canonical) if canonical not in names else names
        repeatable = typing.get_origin(kind) is tuple
        parser.add_argument(
            *options,
            dest="/".join(path),
            action="append" if repeatable else "store",
            metavar="VALUE",
            help=f.metadata.get("help", "") + (" (repeatable)" if repeatable else ""),
        )
    return parser


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Flags, environment and the config file into one Config. Raises ConfigError."""
    args = vars(_parser().parse_args(argv))
    path = args.pop("config") or environ.get("IPV4PROXY_CONFIG")
    text = None
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
    flags = {tuple(dest.split("/")): value for dest, value in args.items() if value is not None}
    return load(text, environ, flags)


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


async def run(config: Config, policy: Policy | None = None) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    proxy = Proxy(config, Resolver(config.resolver), policy)
    try:
        await proxy.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)  # noqa: TRY400 - the reason is the message
        return 1
    await stop.wait()
    log.info("stopping")
    await proxy.close()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args and args[0] == "check-config" else "run"
    try:
        config = parse(args, os.environ)
        policy = build_policy(config)
    except ConfigError as exc:
        print(f"ipv4proxy: {exc}", file=sys.stderr)
        sys.exit(2)
    if command == "check-config":
        print(config)
        sys.exit(0)
    setup_logging(config.log.level)
    sys.exit(uvloop.run(run(config, policy)))
