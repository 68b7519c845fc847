"""Node.js WebSocket clients (``ws``, as Baileys uses it) through the proxy, over TLS.

Three ways a Node program is pointed at a proxy: an https-proxy-agent (HTTP CONNECT), a
socks-proxy-agent with ``socks5h://`` (the proxy resolves the name), and global-agent
preloaded with ``-r global-agent/bootstrap`` and only an environment variable set, around
a script that opens ``new WebSocket(url)`` with no proxy code at all.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from helpers.programs import run_node
from helpers.proxy import ProxyProcess
from helpers.servers import TestServers, binary_ws_message


def _echo_result(result: CompletedProcess[bytes]) -> dict[str, Any]:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr.decode()}"
    decoded = json.loads(result.stdout)
    assert isinstance(decoded, dict), decoded
    return decoded


def _assert_echoed(result: CompletedProcess[bytes], text: str) -> None:
    message = binary_ws_message()
    assert _echo_result(result) == {
        "text": text,
        "binarySize": len(message),
        "binarySha256": hashlib.sha256(message).hexdigest(),
    }


@pytest.mark.parametrize(
    ("agent", "scheme", "protocol"),
    [
        ("https-proxy-agent", "http", "http-connect"),
        ("socks-proxy-agent", "socks5h", "socks5"),
    ],
)
def test_ws_through_agent(
    proxy: ProxyProcess,
    servers: TestServers,
    ca_file: Path,
    *,
    agent: str,
    scheme: str,
    protocol: str,
) -> None:
    target = f"dual.test:{servers.https_port}"
    text = f"hello via {agent}"
    mark = proxy.mark()
    result = run_node(
        "ws-agent.mjs",
        [agent, f"{scheme}://127.0.0.1:{proxy.port}", f"wss://{target}/ws", text],
        env={"NODE_EXTRA_CA_CERTS": str(ca_file)},
    )
    _assert_echoed(result, text)
    fields = proxy.wait_for_access(since=mark, protocol=protocol, target=target)
    assert fields["outcome"] == "ok", fields
    assert fields["address"] == "127.0.0.1", fields


def test_ws_through_global_agent_env_only(
    proxy: ProxyProcess, servers: TestServers, ca_file: Path
) -> None:
    target = f"dual.test:{servers.https_port}"
    text = "hello via global-agent"
    mark = proxy.mark()
    result = run_node(
        "ws-plain.mjs",
        [f"wss://{target}/ws", text],
        env={"NODE_EXTRA_CA_CERTS": str(ca_file), "GLOBAL_AGENT_HTTP_PROXY": proxy.url},
        preload=["global-agent/bootstrap"],
    )
    _assert_echoed(result, text)
    fields = proxy.wait_for_access(since=mark, protocol="http-connect", target=target)
    assert fields["outcome"] == "ok", fields
    assert fields["address"] == "127.0.0.1", fields
