"""The compose file: the gateway shares the proxy's network namespace and waits for its
health check; the proxy container is locked down the way the Kubernetes pods are, mounts
the config its command names, and stops within the drain plus a margin.
"""

from __future__ import annotations

from typing import Any

import yaml

from helpers.deploy import DEPLOY, REPO_ROOT, port_of

COMPOSE = DEPLOY / "compose"
FILE: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
CONFIG: dict[str, Any] = yaml.safe_load((COMPOSE / "config.yaml").read_text())
PROXY: dict[str, Any] = FILE["services"]["ipv4proxy"]
GATEWAY: dict[str, Any] = FILE["services"]["gateway"]


def _seconds(duration: str) -> int:
    assert duration.endswith("s"), duration
    return int(duration[:-1])


def test_builds_the_containerfile() -> None:
    build = PROXY["build"]
    assert (COMPOSE / build["context"]).resolve() == REPO_ROOT
    assert (REPO_ROOT / build["dockerfile"]).is_file()


def test_mounts_the_config_its_command_names() -> None:
    command = PROXY["command"]
    path = command[command.index("--config") + 1]
    assert f"./config.yaml:{path}:ro" in PROXY["volumes"]


def test_proxy_is_locked_down() -> None:
    assert PROXY["read_only"] is True
    assert PROXY["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in PROXY["security_opt"]
    uid, _, gid = PROXY["user"].partition(":")
    assert int(uid) != 0
    assert int(gid) != 0
    assert any(entry.startswith("/tmp") for entry in PROXY["tmpfs"])


def test_gateway_waits_for_the_proxy_and_shares_its_loopback() -> None:
    assert GATEWAY["network_mode"] == "service:ipv4proxy"
    assert GATEWAY["depends_on"] == {"ipv4proxy": {"condition": "service_healthy"}}
    (listener,) = CONFIG["listeners"]
    assert listener["host"] == "127.0.0.1"
    url = f"http://127.0.0.1:{listener['port']}"
    env = GATEWAY["environment"]
    assert env["HTTPS_PROXY"] == url
    assert env["HTTP_PROXY"] == url
    assert env["GLOBAL_AGENT_HTTP_PROXY"] == url


def test_healthcheck_and_published_admin_port_match_the_config() -> None:
    admin_port = port_of(CONFIG["admin"]["listen"])
    test = PROXY["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python3", "-c"]
    assert f"HTTPConnection('127.0.0.1', {admin_port}" in test[3]
    assert "'/readyz'" in test[3]
    compile(test[3], "healthcheck", "exec")
    assert PROXY["ports"] == [f"127.0.0.1:{admin_port}:{admin_port}"]
    # Published ports reach the container's own address, not its loopback.
    assert CONFIG["admin"]["listen"].startswith("0.0.0.0:")


def test_stop_grace_covers_the_drain() -> None:
    grace = _seconds(PROXY["stop_grace_period"])
    assert CONFIG["drain"]["grace_period"] + 5 <= grace
