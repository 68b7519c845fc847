"""Real SOCKS clients through the proxy: curl (SOCKS5 with remote names, SOCKS4a) and python-socks.

The clients send the name, never an address (``--socks5-hostname``, ``--socks4a``,
``rdns=True``): the proxy resolves it, to A records only.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from python_socks.async_.asyncio import Proxy

from helpers.programs import run_curl
from helpers.proxy import ProxyProcess
from helpers.servers import TestServers, payload_json

_CLIENT_SECONDS = 30.0


def _assert_ok_access(fields: dict[str, str]) -> None:
    assert fields["outcome"] == "ok", fields
    assert fields["address"] == "127.0.0.1", fields


def _curl_hello(
    proxy: ProxyProcess, servers: TestServers, ca_file: Path, option: str, protocol: str
) -> None:
    """curl ``option 127.0.0.1:PORT`` fetches /hello over TLS; one good `protocol` tunnel."""
    target = f"dual.test:{servers.https_port}"
    mark = proxy.mark()
    result = run_curl(
        [
            option,
            f"127.0.0.1:{proxy.port}",
            "--cacert",
            str(ca_file),
            f"https://{target}/hello",
        ]
    )
    assert result.returncode == 0, result.stderr.decode()
    assert payload_json(result.stdout) == {"path": "/hello", "host": target, "tls": True}
    _assert_ok_access(proxy.wait_for_access(since=mark, protocol=protocol, target=target))


def test_curl_socks5_hostname(proxy: ProxyProcess, servers: TestServers, ca_file: Path) -> None:
    _curl_hello(proxy, servers, ca_file, "--socks5-hostname", "socks5")


def test_curl_socks4a(proxy: ProxyProcess, servers: TestServers, ca_file: Path) -> None:
    _curl_hello(proxy, servers, ca_file, "--socks4a", "socks4a")


def test_curl_socks5_plain_http(proxy: ProxyProcess, servers: TestServers) -> None:
    target = f"v4.test:{servers.http_port}"
    mark = proxy.mark()
    result = run_curl(
        ["--proxy", f"socks5h://127.0.0.1:{proxy.port}", f"http://{target}/echo?from=socks5h"]
    )
    assert result.returncode == 0, result.stderr.decode()
    answer = payload_json(result.stdout)
    assert answer["path"] == "/echo?from=socks5h"
    assert answer["host"] == target
    _assert_ok_access(proxy.wait_for_access(since=mark, protocol="socks5", target=target))


async def test_python_socks_rdns_then_tls(
    proxy: ProxyProcess, servers: TestServers, client_ssl: ssl.SSLContext
) -> None:
    target = f"dual.test:{servers.https_port}"
    mark = proxy.mark()
    socks = Proxy.from_url(f"socks5://127.0.0.1:{proxy.port}", rdns=True)
    async with asyncio.timeout(_CLIENT_SECONDS):
        sock = await socks.connect(dest_host="dual.test", dest_port=servers.https_port)
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=client_ssl, server_hostname="dual.test"
        )
        try:
            writer.write(
                f"GET /hello HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            answer = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert payload_json(body) == {"path": "/hello", "host": target, "tls": True}
    _assert_ok_access(await proxy.access(since=mark, protocol="socks5", target=target))
