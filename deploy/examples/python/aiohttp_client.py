"""aiohttp through ipv4proxy: one HTTPS request and one WebSocket echo.

    HTTPS_PROXY=http://127.0.0.1:3128 WSS_PROXY=http://127.0.0.1:3128 \\
        python3 aiohttp_client.py https://example.com/ wss://example.com/ws

``trust_env=True`` takes the proxy from the environment: HTTPS_PROXY for ``https://``
URLs, WSS_PROXY for ``wss://`` (aiohttp looks a WebSocket URL up under its own scheme).
Write 127.0.0.1, never localhost. Prints one JSON line: the status and the echo.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

TIMEOUT = aiohttp.ClientTimeout(total=20)


async def main(https_url: str, ws_url: str) -> None:
    async with aiohttp.ClientSession(trust_env=True, timeout=TIMEOUT) as session:
        async with session.get(https_url) as response:
            status = response.status
            await response.read()
        async with session.ws_connect(ws_url) as ws:
            await ws.send_str("hello through aiohttp")
            echo = await ws.receive_str()
    print(json.dumps({"status": status, "echo": echo}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: aiohttp_client.py HTTPS_URL WSS_URL")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
