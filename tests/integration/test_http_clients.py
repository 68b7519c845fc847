"""Real HTTP-proxy clients through the proxy: curl and aiohttp, CONNECT and forwarding.

Every client names its destination (``dual.test``, which has both A and AAAA records) and
leaves resolving to the proxy; the servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import ssl
import subprocess
from pathlib import Path

import aiohttp

from helpers.net import client_env
from helpers.programs import PROGRAM_SECONDS, curl_command, run_curl
from helpers.proxy import ProxyProcess
from helpers.servers import Payload, TestServers, binary_ws_message, payload_json

# Bound on each aiohttp exchange.
_CLIENT_SECONDS = 30.0


def _assert_ok_access(fields: dict[str, str]) -> None:
    assert fields["outcome"] == "ok", fields
    assert fields["address"] == "127.0.0.1", fields


def test_curl_https_proxy_env(proxy: ProxyProcess, servers: TestServers, ca_file: Path) -> None:
    target = f"dual.test:{servers.https_port}"
    mark = proxy.mark()
    result = run_curl(
        ["--cacert", str(ca_file), f"https://{target}/hello"], env={"HTTPS_PROXY": proxy.url}
    )
    assert result.returncode == 0, result.stderr.decode()
    assert payload_json(result.stdout) == {"path": "/hello", "host": target, "tls": True}
    _assert_ok_access(proxy.wait_for_access(since=mark, protocol="http-connect", target=target))


def test_curl_plain_http_forwarding(proxy: ProxyProcess, servers: TestServers) -> None:
    target = f"dual.test:{servers.http_port}"
    mark = proxy.mark()
    result = run_curl(["--proxy", proxy.url, f"http://{target}/echo?from=curl"])
    assert result.returncode == 0, result.stderr.decode()
    answer = payload_json(result.stdout)
    # The origin server sees origin-form, the Host it was asked for, and no Proxy-* header.
    assert answer["method"] == "GET"
    assert answer["path"] == "/echo?from=curl"
    assert answer["host"] == target
    assert answer["via_proxy_headers"] == []
    _assert_ok_access(proxy.wait_for_access(since=mark, protocol="http-forward", target=target))


def test_curl_50_mib_download_through_connect(
    proxy: ProxyProcess, servers: TestServers, ca_file: Path, payload: Payload
) -> None:
    target = f"dual.test:{servers.https_port}"
    mark = proxy.mark()
    digest = hashlib.sha256()
    size = 0
    with subprocess.Popen(
        curl_command(["--cacert", str(ca_file), f"https://{target}/payload"], max_seconds=60),
        env=client_env({"HTTPS_PROXY": proxy.url}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        # Bounded: curl's own --max-time ends the stream; each read returns data or EOF.
        for chunk in iter(lambda: process.stdout.read(1 << 20) if process.stdout else b"", b""):
            digest.update(chunk)
            size += len(chunk)
        stderr = process.stderr.read() if process.stderr else b""
        returncode = process.wait(timeout=PROGRAM_SECONDS)
    assert returncode == 0, stderr.decode()
    assert size == payload.size
    assert digest.hexdigest() == payload.sha256
    fields = proxy.wait_for_access(since=mark, protocol="http-connect", target=target)
    _assert_ok_access(fields)
    # received: bytes from the destination to the client (the payload plus TLS framing).
    assert int(fields["received"]) > payload.size, fields


async def test_aiohttp_get_through_connect(
    proxy: ProxyProcess, servers: TestServers, client_ssl: ssl.SSLContext
) -> None:
    target = f"dual.test:{servers.https_port}"
    mark = proxy.mark()
    timeout = aiohttp.ClientTimeout(total=_CLIENT_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"https://{target}/hello", proxy=proxy.url, ssl=client_ssl) as response,
    ):
        assert response.status == 200
        assert await response.json() == {"path": "/hello", "host": target, "tls": True}
    _assert_ok_access(await proxy.access(since=mark, protocol="http-connect", target=target))


async def test_aiohttp_post_through_forwarding(proxy: ProxyProcess, servers: TestServers) -> None:
    target = f"dual.test:{servers.http_port}"
    body = bytes(range(256)) * 1000
    mark = proxy.mark()
    timeout = aiohttp.ClientTimeout(total=_CLIENT_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"http://{target}/echo?from=aiohttp", data=body, proxy=proxy.url) as response,
    ):
        assert response.status == 200
        answer = await response.json()
    assert answer["method"] == "POST"
    assert answer["path"] == "/echo?from=aiohttp"
    assert answer["host"] == target
    assert answer["body_size"] == len(body)
    assert answer["body_sha256"] == hashlib.sha256(body).hexdigest()
    _assert_ok_access(await proxy.access(since=mark, protocol="http-forward", target=target))


async def test_aiohttp_websocket_through_connect(
    proxy: ProxyProcess, servers: TestServers, client_ssl: ssl.SSLContext
) -> None:
    target = f"dual.test:{servers.https_port}"
    message = binary_ws_message()
    mark = proxy.mark()
    timeout = aiohttp.ClientTimeout(total=_CLIENT_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.ws_connect(f"wss://{target}/ws", proxy=proxy.url, ssl=client_ssl) as ws,
    ):
        await ws.send_str("hello through the proxy")
        assert await ws.receive_str(timeout=_CLIENT_SECONDS) == "hello through the proxy"
        await ws.send_bytes(message)
        assert await ws.receive_bytes(timeout=_CLIENT_SECONDS) == message
    _assert_ok_access(await proxy.access(since=mark, protocol="http-connect", target=target))
