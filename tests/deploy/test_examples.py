"""The client recipes in deploy/examples/, run for real against a local proxy.

Every recipe names its destination ``dual.test``, a name only the proxy's DNS server
(the test dnsmasq) knows, so a recipe that went around the proxy could not connect at
all; the proxy's access log must show each tunnel. The Node recipes use the packages
installed from deploy/examples/node/package-lock.json (the test command runs ``npm ci``
there), so the Baileys recipe runs with the real ``baileys`` package from npm.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from helpers.deploy import DEPLOY, REPO_ROOT
from helpers.programs import curl_binary, node_binary, run_program
from helpers.proxy import ProxyProcess, parse_access_line
from helpers.servers import LoopThread, TestServers

EXAMPLES = DEPLOY / "examples"
NODE_RECIPES = EXAMPLES / "node"
HARNESS = Path(__file__).parent / "node" / "baileys-recipe.mjs"
# What the fake media server answers for a download.
MEDIA_SIZE = 100_000
# An encrypted download (/media/encrypted): this text sealed the way WhatsApp seals an
# image, with this media key (the harness's MEDIA_KEY), for downloadContentFromMessage.
MEDIA_KEY = bytes([0x2A] * 32)
MEDIA_TEXT = "an image, sealed, fetched through the proxy and opened by Baileys. " * 100
# Bound on the fake WhatsApp server's wait for Baileys' first frame.
_FIRST_FRAME_SECONDS = 15.0


def _json_lines(result: subprocess.CompletedProcess[bytes]) -> list[Any]:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr.decode()}"
    return [json.loads(line) for line in result.stdout.decode().splitlines() if line.strip()]


def _tunnels(proxy: ProxyProcess, since: int, target: str, protocol: str, count: int) -> None:
    """Wait (bounded) until ``count`` successful tunnels to ``target`` are logged."""
    seen: list[dict[str, str]] = []

    def matches(line: str) -> bool:
        fields = parse_access_line(line)
        if fields.get("target") == target and fields.get("protocol") == protocol:
            seen.append(fields)
        return len(seen) >= count

    proxy.wait_for_line(matches, since=since)
    assert len(seen) >= count, f"{len(seen)} of {count} tunnels logged: {proxy.logs()[since:]}"
    for fields in seen:
        assert fields.get("outcome") == "ok", fields


# --- curl and Python -------------------------------------------------------------------------


def test_curl_recipe(proxy: ProxyProcess, servers: TestServers, ca_file: Path) -> None:
    curl_binary()  # skips (fails in CI) with the install hint
    target = f"dual.test:{servers.https_port}"
    mark = proxy.mark()
    result = run_program(
        ["sh", str(EXAMPLES / "curl.sh"), f"https://{target}/hello"],
        {"PROXY": f"127.0.0.1:{proxy.port}", "CURL_CA_BUNDLE": str(ca_file)},
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == ["http-connect 200", "socks5h 200"]
    _tunnels(proxy, mark, target, "http-connect", 1)
    _tunnels(proxy, mark, target, "socks5", 1)


def test_aiohttp_recipe(proxy: ProxyProcess, servers: TestServers, ca_file: Path) -> None:
    target = f"dual.test:{servers.https_port}"
    mark = proxy.mark()
    result = run_program(
        [
            sys.executable,
            str(EXAMPLES / "python" / "aiohttp_client.py"),
            f"https://{target}/hello",
            f"wss://{target}/ws",
        ],
        {"HTTPS_PROXY": proxy.url, "WSS_PROXY": proxy.url, "SSL_CERT_FILE": str(ca_file)},
        cwd=REPO_ROOT,
    )
    assert _json_lines(result) == [{"status": 200, "echo": "hello through aiohttp"}]
    # aiohttp may carry the WebSocket on the pooled tunnel of the GET: at least one.
    _tunnels(proxy, mark, target, "http-connect", 1)


def test_requests_recipe(proxy: ProxyProcess, servers: TestServers, ca_file: Path) -> None:
    target = f"dual.test:{servers.https_port}"
    mark = proxy.mark()
    result = run_program(
        [
            sys.executable,
            str(EXAMPLES / "python" / "requests_client.py"),
            proxy.url,
            f"https://{target}/hello",
        ],
        {"REQUESTS_CA_BUNDLE": str(ca_file)},
        cwd=REPO_ROOT,
    )
    assert _json_lines(result) == [{"status": 200}]
    _tunnels(proxy, mark, target, "http-connect", 1)


# --- Node --------------------------------------------------------------------------------------


def test_global_agent_recipe(proxy: ProxyProcess, servers: TestServers, ca_file: Path) -> None:
    node = node_binary(NODE_RECIPES, "baileys")
    target = f"dual.test:{servers.https_port}"
    mark = proxy.mark()
    result = run_program(
        [
            node,
            "-r",
            "global-agent/bootstrap",
            "global-agent-app.mjs",
            f"https://{target}/hello",
            f"wss://{target}/ws",
        ],
        {"GLOBAL_AGENT_HTTP_PROXY": proxy.url, "NODE_EXTRA_CA_CERTS": str(ca_file)},
        cwd=NODE_RECIPES,
    )
    assert _json_lines(result) == [{"status": 200, "echo": "hello through global-agent"}]
    _tunnels(proxy, mark, target, "http-connect", 2)


def _sealed(plain: bytes) -> bytes:
    """`plain` encrypted as WhatsApp media: AES-256-CBC with keys from MEDIA_KEY, then a MAC."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=112, salt=None, info=b"WhatsApp Image Keys")
    keys = hkdf.derive(MEDIA_KEY)
    iv, cipher_key, mac_key = keys[:16], keys[16:48], keys[48:80]
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cipher_key), modes.CBC(iv)).encryptor()
    body = encryptor.update(padded) + encryptor.finalize()
    return body + hmac.new(mac_key, iv + body, hashlib.sha256).digest()[:10]


@dataclass
class FakeWhatsApp:
    """What the fake WhatsApp server saw: upgrades, first WebSocket frames, uploads."""

    port: int = 0
    upgrades: list[dict[str, str]] = field(default_factory=list)
    first_frames: list[tuple[str, bytes]] = field(default_factory=list)
    uploads: list[tuple[str, int]] = field(default_factory=list)


async def _start_fake_whatsapp(
    server_ssl: Any, seen: FakeWhatsApp
) -> tuple[web.AppRunner, FakeWhatsApp]:
    async def chat(request: web.Request) -> web.WebSocketResponse:
        seen.upgrades.append(
            {
                "upgrade": request.headers.get("Upgrade", ""),
                "origin": request.headers.get("Origin", ""),
            }
        )
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        message = await ws.receive(timeout=_FIRST_FRAME_SECONDS)
        data = message.data if message.type == WSMsgType.BINARY else b""
        seen.first_frames.append((message.type.name, data))
        await ws.close()
        return ws

    async def download(request: web.Request) -> web.Response:
        return web.Response(body=bytes(i % 256 for i in range(MEDIA_SIZE)))

    async def encrypted(request: web.Request) -> web.Response:
        return web.Response(body=_sealed(MEDIA_TEXT.encode()))

    async def upload(request: web.Request) -> web.Response:
        body = await request.read()
        seen.uploads.append((request.path, len(body)))
        return web.json_response({"url": "https://media.test/x", "direct_path": "/v/t62/x"})

    app = web.Application()
    app.router.add_get("/ws/chat", chat)
    app.router.add_get("/media/download", download)
    app.router.add_get("/media/encrypted", encrypted)
    app.router.add_post("/mms/image/{token}", upload)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    seen.port = runner.addresses[0][1]
    return runner, seen


@pytest.fixture
def fake_whatsapp(server_loop: LoopThread, server_ssl: Any) -> Iterator[FakeWhatsApp]:
    runner, seen = server_loop.call(lambda: _start_fake_whatsapp(server_ssl, FakeWhatsApp()))
    try:
        yield seen
    finally:
        server_loop.call(runner.cleanup)


# Baileys' package name in deploy/examples/node (7 under an npm alias), and the tunnels
# its run opens through SOCKS5 and through HTTP CONNECT at least.
BAILEYS_TUNNELS = {
    # The WebSocket, the axios upload and the two axios downloads go through SOCKS5
    # (socks5h); fetch() goes through undici's ProxyAgent, which speaks HTTP CONNECT.
    "baileys": (4, 1),
    # The WebSocket and the upload (https.request with fetchAgent) go through SOCKS5;
    # fetch() and both downloads (fetch with the dispatcher) through HTTP CONNECT, which
    # undici may carry on one kept-alive tunnel.
    "baileys7": (2, 1),
}


@pytest.mark.parametrize("package", BAILEYS_TUNNELS)
def test_baileys_recipe(
    proxy: ProxyProcess,
    fake_whatsapp: FakeWhatsApp,
    ca_file: Path,
    tmp_path: Path,
    package: str,
) -> None:
    node = node_binary(NODE_RECIPES, package)
    target = f"dual.test:{fake_whatsapp.port}"
    mark = proxy.mark()
    result = run_program(
        [node, str(HARNESS), proxy.url, f"https://{target}", str(tmp_path / "auth"), package],
        {"NODE_EXTRA_CA_CERTS": str(ca_file)},
        cwd=NODE_RECIPES,
    )
    (output,) = _json_lines(result)
    # fetch() through the undici dispatcher, and Baileys' own download with the recipe's
    # downloadOptions (axios and its agent in 6.17, fetch and the dispatcher in 7).
    assert output["fetchBytes"] == MEDIA_SIZE
    assert output["downloadBytes"] == MEDIA_SIZE
    assert output["decryptedText"] == MEDIA_TEXT
    # The upload went out with fetchAgent and reached the server whole.
    assert output["upload"] == {"mediaUrl": "https://media.test/x", "directPath": "/v/t62/x"}
    assert len(fake_whatsapp.uploads) == 1
    assert fake_whatsapp.uploads[0][1] == 4096
    # makeWASocket opened its WebSocket through the proxy: the upgrade, then the first
    # binary frame of the Noise handshake, which starts with WhatsApp's "WA" header.
    assert fake_whatsapp.upgrades == [
        {"upgrade": "websocket", "origin": "https://web.whatsapp.com"}
    ]
    ((kind, frame),) = fake_whatsapp.first_frames
    assert kind == "BINARY"
    assert frame.startswith(b"WA")
    assert output["updates"][-1] == "close"
    socks, http_connect = BAILEYS_TUNNELS[package]
    _tunnels(proxy, mark, target, "socks5", socks)
    _tunnels(proxy, mark, target, "http-connect", http_connect)
