"""IPv4 dialing: race a destination's A records, RFC 8305 style, under one timeout.

Why not aiohappyeyeballs: it folds the attempts' errors into one message string, and this
proxy must name every address and the errno each failed with (for the client's answer, the
log line and the per-cause metrics). The race itself is short, so it lives here.

Rules (RFC 8305 section 5):
- Sockets are AF_INET only; an address that is not an IPv4 literal never reaches connect().
- Attempts start ``attempt_delay`` apart (250 ms by default), or at once when the previous
  attempt has failed; earlier attempts stay alive; the first to connect wins and every
  other socket is closed.
- One ``connect_timeout`` covers the whole race. On failure the error names every address
  tried and why it failed; the failure is that of the most telling error (a refusal says
  more than a timeout).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from collections.abc import Sequence

from ipv4proxy.config import DialerConfig
from ipv4proxy.errors import DialError, Failure, UpstreamTimeout, failure_for_errno

__all__ = ["dial"]

# When attempts fail differently, the answer reports the first of these that occurred:
# what the destination said beats what the path did, which beats silence.
_PRECEDENCE = (
    Failure.REFUSED,
    Failure.HOST_UNREACHABLE,
    Failure.NET_UNREACHABLE,
    Failure.CONNECT_FAILED,
    Failure.TIMEOUT,
)


def _errno_name(error: OSError) -> str:
    return errno.errorcode.get(error.errno or 0, type(error).__name__)


async def _attempt(loop: asyncio.AbstractEventLoop, address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _error_of(task: asyncio.Task[socket.socket]) -> OSError:
    exc = task.exception()
    if isinstance(exc, OSError):
        return exc
    # uvloop may raise RuntimeError where asyncio raises OSError.
    return OSError(errno.ECONNABORTED, str(exc))


async def dial(
    addresses: Sequence[str], port: int, config: DialerConfig, *, name: str = ""
) -> tuple[socket.socket, str]:
    """Connect to the first of ``addresses`` (IPv4 literals) that answers on ``port``.

    ``name`` (the destination as the client gave it) is only for messages. Returns the
    connected socket and the address used. Raises DialError (every attempt
    failed; ``attempts`` lists them) or UpstreamTimeout (connect_timeout ran out).
    """
    for address in addresses:
        ipaddress.IPv4Address(address)  # a programming error, not wire input: fail loudly
    loop = asyncio.get_running_loop()
    target = f"{name}:{port}" if name else f"port {port}"
    queue = list(addresses)
    running: dict[asyncio.Task[socket.socket], str] = {}
    failed: list[tuple[str, OSError]] = []
    try:
        async with asyncio.timeout(config.connect_timeout):
            while queue or running:
                if queue:
                    address = queue.pop(0)
                    task = loop.create_task(_attempt(loop, address, port), name=f"dial {address}")
                    running[task] = address
                done, _ = await asyncio.wait(
                    running,
                    timeout=config.attempt_delay if queue else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                winner = None
                for task in done:
                    address = running.pop(task)
                    if task.exception() is None and winner is None:
                        winner = (task.result(), address)
                    elif task.exception() is None:
                        task.result().close()
                    else:
                        failed.append((address, _error_of(task)))
                if winner is not None:
                    return winner
    except TimeoutError:
        pending = tuple(
            (a, OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))) for a in running.values()
        )
        attempts = (*failed, *pending)
        raise UpstreamTimeout(
            f"connect to {target} timed out after {config.connect_timeout:g} s"
            f" ({_describe(attempts)})",
            attempts=attempts,
        ) from None
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
            for task in running:  # a connect that completed as it was being cancelled
                if not task.cancelled() and task.exception() is None:
                    task.result().close()
    attempts = tuple(failed)
    failures = {failure_for_errno(error.errno) for _, error in attempts}
    failure = next((f for f in _PRECEDENCE if f in failures), Failure.CONNECT_FAILED)
    raise DialError(
        f"connect to {target} failed ({_describe(attempts)})", failure=failure, attempts=attempts
    )


def _describe(attempts: Sequence[tuple[str, OSError]]) -> str:
    return (
        ", ".join(f"{address}: {_errno_name(error)}" for address, error in attempts) or "no address"
    )
