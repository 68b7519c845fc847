"""Python clients the lab runs on its gateway host; each prints one JSON object.

    python3 -m helpers.lab_client aiohttp WS_URL MEDIA_URL TEXT CA_FILE
    python3 -m helpers.lab_client http-connect PROXY_PORT AUTHORITY
    python3 -m helpers.lab_client socks5 PROXY_PORT HOST PORT
    python3 -m helpers.lab_client tcp-connect HOST PORT SECONDS

- ``aiohttp``: a ``ClientSession(trust_env=True)`` with only the environment to point it
  at the proxy (``HTTPS_PROXY`` for the download, ``WSS_PROXY`` for the WebSocket): one
  echo round trip (text, then a binary message) and the whole media download, hashed.
- ``http-connect`` / ``socks5``: the exact answer of the proxy to one request (the
  hand-written clients of `helpers.wire`), and how long it took.
- ``tcp-connect``: one plain connect() with a timeout; names the outcome (``connected``,
  ``timeout`` or the errno name). It shows what a path does, without any proxy.

Each is bounded in time; the test that runs it bounds the process too.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import socket
import ssl
import sys
import time
from typing import Any

import aiohttp

from helpers.servers import binary_ws_message
from helpers.wire import http_connect, socks5_request

__all__ = ["main"]

_SECONDS = 30.0
_READ_SIZE = 65536
# Bound on the download loop: more reads than this means a runaway stream.
_MAX_READS = 1_000_000


async def _aiohttp(ws_url: str, media_url: str, text: str, ca_file: str) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=ca_file)
    result: dict[str, Any] = {}
    async with (
        asyncio.timeout(_SECONDS),
        aiohttp.ClientSession(trust_env=True) as session,
    ):
        async with session.ws_connect(ws_url, ssl=context) as ws:
            await ws.send_str(text)
            result["text"] = await ws.receive_str()
            await ws.send_bytes(binary_ws_message())
            echoed = await ws.receive_bytes()
            result["binarySize"] = len(echoed)
            result["binarySha256"] = hashlib.sha256(echoed).hexdigest()
        async with session.get(media_url, ssl=context) as response:
            digest = hashlib.sha256()
            size = 0
            for _ in range(_MAX_READS):
                chunk = await response.content.read(_READ_SIZE)
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
            result["status"] = response.status
            result["size"] = size
            result["sha256"] = digest.hexdigest()
    return result


async def _http_connect(port: int, authority: str) -> dict[str, Any]:
    started = time.monotonic()
    tunnel, reply = await http_connect(port, authority)
    await tunnel.close()
    return {
        "status": reply.status,
        "body": reply.body_text,
        "seconds": time.monotonic() - started,
    }


async def _socks5(port: int, host: str, target_port: int) -> dict[str, Any]:
    started = time.monotonic()
    tunnel, reply = await socks5_request(port, host, target_port)
    await tunnel.close()
    return {"code": reply.code, "seconds": time.monotonic() - started}


def _tcp_connect(host: str, port: int, seconds: float) -> dict[str, Any]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    started = time.monotonic()
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(seconds)
        try:
            sock.connect((host, port))
            outcome = "connected"
        except TimeoutError:
            outcome = "timeout"
        except OSError as exc:
            outcome = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return {"outcome": outcome, "seconds": time.monotonic() - started}


def main(argv: list[str]) -> int:
    match argv:
        case ["aiohttp", ws_url, media_url, text, ca_file]:
            result = asyncio.run(_aiohttp(ws_url, media_url, text, ca_file))
        case ["http-connect", port, authority]:
            result = asyncio.run(_http_connect(int(port), authority))
        case ["socks5", port, host, target_port]:
            result = asyncio.run(_socks5(int(port), host, int(target_port)))
        case ["tcp-connect", host, port, seconds]:
            result = _tcp_connect(host, int(port), float(seconds))
        case _:
            print(__doc__, file=sys.stderr)
            return 64
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
