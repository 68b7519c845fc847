"""Node.js WebSocket clients (``ws``, as Baileys uses it) through the proxy, over TLS.

Three ways a Node program is pointed at a proxy: an https-proxy-agent (HTTP CONNECT), a
socks-proxy-agent with ``socks5h://`` (the proxy resolves the name), and global-agent
preloaded with ``-r global-agent/bootstrap`` and only an environment variable set, around
a script that opens ``new WebSocket(url)`` with no proxy code at all. And Baileys 7's
media download (Node's built-in fetch), which only an undici dispatcher routes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from helpers.programs import NODE_DIR, run_node
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


@pytest.mark.parametrize(
    ("how", "through_proxy"),
    [("none", False), ("agent", False), ("dispatcher", True), ("global-env", True)],
)
def test_baileys7_media_fetch_needs_an_undici_dispatcher(
    proxy: ProxyProcess,
    servers: TestServers,
    ca_file: Path,
    *,
    how: str,
    through_proxy: bool,
) -> None:
    """Baileys 7 downloads media with Node's built-in fetch: on Node 20 it ignores both
    HTTPS_PROXY (set here in every case) and an agent, and goes through the proxy only with
    an undici dispatcher, per call or global. Without one it resolves the name itself, and
    ``dual.test`` is known only to the proxy's DNS server."""
    target = f"dual.test:{servers.https_port}"
    mark = proxy.mark()
    result = run_node(
        "baileys7-fetch.mjs",
        [how, proxy.url, f"https://{target}/hello"],
        env={"NODE_EXTRA_CA_CERTS": str(ca_file), "HTTPS_PROXY": proxy.url},
    )
    output = _echo_result(result)
    if through_proxy:
        assert output["outcome"] == "ok", output
        fields = proxy.wait_for_access(since=mark, protocol="http-connect", target=target)
        assert fields["outcome"] == "ok", fields
    else:
        assert output["outcome"] == "error", output
        assert "ENOTFOUND" in output["detail"] or "EAI_AGAIN" in output["detail"], output


# The Node packages of the tests and of the recipes: each pins undici.
_LOCKS = [NODE_DIR, NODE_DIR.parents[1] / "deploy" / "examples" / "node"]


@pytest.mark.parametrize("package_dir", _LOCKS, ids=["tests-node", "deploy-examples-node"])
def test_undici_stays_7(package_dir: Path) -> None:
    """undici 8 wants Node >= 22.19: on Node 20 it installs with an engine warning and
    throws when loaded (``createZstdDecompress`` is missing). The dispatchers Baileys 7's
    media need come from undici 7.x until the gateways leave Node 20."""
    lock = json.loads((package_dir / "package-lock.json").read_text(encoding="utf-8"))
    versions = {
        path: package["version"]
        for path, package in lock["packages"].items()
        if path.endswith("node_modules/undici")
    }
    assert versions, lock["packages"].keys()
    assert all(version.startswith("7.") for version in versions.values()), versions
