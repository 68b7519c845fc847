"""Loopback endpoints with a known behaviour, and a clean environment for client programs.

- `refused_port()`: a 127.0.0.1 port held bound but not listening, so a connect is answered
  with RST (ECONNREFUSED) and no other program can take the port meanwhile.
- `Blackhole`: a 127.0.0.1 listener whose accept queue is full, so Linux drops every
  further SYN and a connect attempt times out, without any traffic leaving the machine.
  With ``listen(0)`` the queue holds one connection (the kernel refuses a new one when the
  queue length is *greater* than the backlog); one filler connection fills it.
- `bind_dual_port()`: a 127.0.0.1 socket and a [::1] socket on the same port number, for
  the IPv6 trap beside an IPv4 target.
- `client_env()`: os.environ without any proxy variable, so a test decides alone which
  proxy a client uses.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator, Mapping
from types import TracebackType

__all__ = [
    "Blackhole",
    "bind_dual_port",
    "client_env",
    "ipv6_loopback_available",
    "loopback_listener",
    "refused_port",
]

# How many random ports to try before giving up on finding one free on both families.
_DUAL_PORT_TRIES = 50

_PROXY_VARIABLES = frozenset(
    {
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "ftp_proxy",
        "socks_proxy",
        "socks5_proxy",
        "global_agent_http_proxy",
        "global_agent_https_proxy",
        "global_agent_no_proxy",
        "node_use_env_proxy",
        "node_extra_ca_certs",
        "node_options",
        "curl_ca_bundle",
        "ssl_cert_file",
        "ssl_cert_dir",
        "requests_ca_bundle",
    }
)


def client_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return os.environ minus proxy, CA and IPV4PROXY_* variables (any case), plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in _PROXY_VARIABLES and not key.upper().startswith("IPV4PROXY_")
    }
    env.update(extra or {})
    return env


@contextlib.contextmanager
def loopback_listener(backlog: int = 16) -> Iterator[socket.socket]:
    """A socket listening on 127.0.0.1:<free port>, closed on exit."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(backlog)
        yield sock


def refused_port() -> socket.socket:
    """Return a socket bound to 127.0.0.1:<free port> that never listens.

    Connecting to its port is refused (RST). Close the socket to release the port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
    except BaseException:
        sock.close()
        raise
    return sock


class Blackhole:
    """A 127.0.0.1 port that swallows SYNs: every connect to it times out.

    Use as a context manager; `port` is the port to aim at.
    """

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.bind(("127.0.0.1", 0))
            self._listener.listen(0)
            self.port: int = self._listener.getsockname()[1]
            # The queue is empty, so this handshake completes at once (bounded anyway).
            self._filler.settimeout(5.0)
            self._filler.connect(("127.0.0.1", self.port))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._filler.close()
        self._listener.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def black_hole_beside_listener(host: str) -> tuple[Blackhole, socket.socket]:
    """A black hole on 127.0.0.1 and a listener on ``host`` at the same port. The port is
    free on 127.0.0.1 but may be taken on ``host`` (another test's connection): try again,
    a few times at most."""
    for _ in range(10):
        hole = Blackhole()
        alive = socket.socket()
        try:
            alive.bind((host, hole.port))
        except OSError:
            alive.close()
            hole.close()
            continue
        alive.listen(4)
        return hole, alive
    raise AssertionError(f"no port free on both 127.0.0.1 and {host} in 10 tries")


def ipv6_loopback_available() -> bool:
    """Tell whether a socket can be bound to [::1] here (some containers disable IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def bind_dual_port() -> tuple[socket.socket, socket.socket]:
    """Return (IPv4 socket on 127.0.0.1:P, IPv6-only socket on [::1]:P), both bound, not listening.

    Raises OSError when no port number is free on both within a bounded number of tries.
    """
    last_error: OSError | None = None
    for _ in range(_DUAL_PORT_TRIES):
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v4.bind(("127.0.0.1", 0))
            port = v4.getsockname()[1]
            v6.bind(("::1", port))
        except OSError as exc:
            v4.close()
            v6.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            last_error = exc
            continue
        return v4, v6
    raise OSError(errno.EADDRINUSE, f"no port free on both 127.0.0.1 and [::1]: {last_error}")
