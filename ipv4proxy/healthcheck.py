"""``ipv4proxy healthcheck``: the container image's HEALTHCHECK, following the configuration.

    ipv4proxy healthcheck            ask the proxy running beside it (this container)
    ipv4proxy healthcheck [FLAGS]    ask where these flags put the admin listener

It sends ``GET /healthz`` to the admin listener and exits 0 on a 200, 1 otherwise (no proxy
process, an invalid configuration, refused, timed out, another status), with the reason on
stderr. Where the admin listener is comes from the configuration of the proxy that really
runs: without flags, the arguments and environment of the running ``ipv4proxy`` process are
read from /proc (the first one, by PID, that is not itself a subcommand), so an
``--admin-listen`` given to ``docker run``, an ``IPV4PROXY_ADMIN_LISTEN`` variable and a
config file mounted over the baked one are all followed. A wildcard address (0.0.0.0) is
asked on 127.0.0.1. With the admin listener off (``admin.listen: ""``) there is nothing to
ask: it says so and exits 0, since a running process is all a health check can see then.

http.client, not urllib: urllib would honour an HTTP_PROXY variable set in the container.
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["TIMEOUT", "loopback_for", "probe", "running_proxy"]

# Seconds for the whole request: a local aiohttp answers in milliseconds, and the image's
# HEALTHCHECK gives the command 3 s (--timeout=3s) including the interpreter's start.
TIMEOUT = 2.0

SUBCOMMANDS = ("check-config", "doctor", "healthcheck")

# /proc entries read at most: a container holds a handful of processes; a host many more.
_MAX_PROCESSES = 4096


def _own_args(argv: Sequence[str]) -> list[str] | None:
    """The arguments of ``ipv4proxy`` in a command line, or None if it is not one that runs
    the proxy: ``ipv4proxy ARGS`` (the venv's script, run directly or by its interpreter,
    as a shebang does) or ``python [OPTIONS] -m ipv4proxy ARGS``."""
    args: list[str] | None = None
    if argv and os.path.basename(argv[0]) == "ipv4proxy":
        args = list(argv[1:])
    elif argv and os.path.basename(argv[0]).startswith("python"):
        at = 1
        while at < len(argv) and argv[at].startswith("-") and argv[at] != "-m":
            at += 1  # interpreter options (-u, -X importtime is two words: rare, not handled)
        if argv[at : at + 2] == ["-m", "ipv4proxy"]:
            args = list(argv[at + 2 :])
        elif at < len(argv) and os.path.basename(argv[at]) == "ipv4proxy":
            args = list(argv[at + 1 :])
    if args is None or (args and args[0] in SUBCOMMANDS):
        return None
    return args


def _environ(raw: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in raw.decode("utf-8", "surrogateescape").split("\0"):
        key, sep, value = item.partition("=")
        if sep:
            found[key] = value
    return found


def running_proxy(proc: Path = Path("/proc")) -> tuple[list[str], dict[str, str]] | None:
    """The arguments and environment of the first running proxy under ``proc`` (by PID),
    or None. An environment that cannot be read is taken as this process's own."""
    pids = sorted(int(entry.name) for entry in proc.iterdir() if entry.name.isdigit())
    for pid in pids[:_MAX_PROCESSES]:
        if pid == os.getpid():
            continue
        try:
            cmdline = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:  # gone since the listing, or not ours to read
            continue
        argv = cmdline.decode("utf-8", "surrogateescape").split("\0")
        args = _own_args(argv[:-1] if argv and argv[-1] == "" else argv)
        if args is None:
            continue
        try:
            environ = _environ((proc / str(pid) / "environ").read_bytes())
        except OSError:
            environ = dict(os.environ)
        return args, environ
    return None


def loopback_for(host: str) -> str:
    """The address to ask a listener on ``host`` at: a wildcard is asked on loopback."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else host  # noqa: S104 - compared, not bound


def probe(host: str, port: int, timeout: float = TIMEOUT) -> str | None:
    """None when ``GET /healthz`` on ``host:port`` answers 200, else why not."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return f"http://{host}:{port}/healthz: {exc or type(exc).__name__}"
    finally:
        connection.close()
    if status != 200:
        return f"http://{host}:{port}/healthz answered {status}"
    return None
