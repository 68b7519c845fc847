"""The compose files: the gateway shares the proxy's network namespace and waits for its
health check; the proxy container is locked down the way the Kubernetes pods are, mounts
the config its command names, and stops within the drain plus a margin.

The DNS-mode variant (deploy/compose/dns/): the gateway has no proxy setting, its
resolv.conf (the proxy container's) points at the DNS listener, whose upstreams are
explicit, and it starts once DNS answers.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
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


# --- DNS mode: deploy/compose/dns/ ------------------------------------------------------------

DNS_DIR = COMPOSE / "dns"
DNS_FILE: dict[str, Any] = yaml.safe_load((DNS_DIR / "compose.yaml").read_text())
DNS_CONFIG: dict[str, Any] = yaml.safe_load((DNS_DIR / "config.yaml").read_text())
DNS_PROXY: dict[str, Any] = DNS_FILE["services"]["ipv4proxy"]
DNS_GATEWAY: dict[str, Any] = DNS_FILE["services"]["gateway"]
DNS_READY = DEPLOY / "systemd" / "dns-ready.py"


def _mounts(service: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Container path -> host file, for the service's bind mounts."""
    found: dict[str, Path] = {}
    for entry in service["volumes"]:
        source, target, *_ = entry.split(":")
        if source.startswith("."):
            found[target] = (directory / source).resolve()
    return found


def test_dns_variant_builds_the_containerfile_and_mounts_its_files() -> None:
    build = DNS_PROXY["build"]
    assert (DNS_DIR / build["context"]).resolve() == REPO_ROOT
    assert (REPO_ROOT / build["dockerfile"]).is_file()
    command = DNS_PROXY["command"]
    mounts = _mounts(DNS_PROXY, DNS_DIR)
    assert mounts[command[command.index("--config") + 1]] == (DNS_DIR / "config.yaml").resolve()
    assert mounts["/etc/ipv4proxy/dns-ready.py"] == DNS_READY.resolve()


def test_dns_variant_gateway_has_no_proxy_setting_and_resolves_through_the_proxy() -> None:
    """The gateway shares the proxy's network namespace, and so its resolv.conf, which
    names the DNS listener (a `dns:` on the gateway itself would be refused by Docker)."""
    assert DNS_GATEWAY["network_mode"] == "service:ipv4proxy"
    assert DNS_GATEWAY["depends_on"] == {"ipv4proxy": {"condition": "service_healthy"}}
    assert "environment" not in DNS_GATEWAY
    assert "dns" not in DNS_GATEWAY
    assert DNS_GATEWAY["command"] == ["node", "app.js"]
    (listen,) = DNS_CONFIG["dns"]["listen"]
    host, port = listen.rpartition(":")[0], port_of(listen)
    assert port == 53  # resolv.conf names an address, never a port
    assert DNS_PROXY["dns"] == [host] == ["127.0.0.1"]
    assert int(DNS_PROXY["sysctls"]["net.ipv4.ip_unprivileged_port_start"]) <= port


def test_dns_variant_upstreams_are_explicit_and_not_docker_dns() -> None:
    """127.0.0.11 (Docker's embedded DNS) forwards to the listener: asking it would loop."""
    upstreams = DNS_CONFIG["dns"]["upstreams"]
    assert upstreams
    for upstream in upstreams:
        address = ipaddress.IPv4Address(upstream.rpartition(":")[0] or upstream)
        assert not address.is_loopback, upstream
    assert DNS_CONFIG["resolver"]["nameservers"] == upstreams


def test_dns_variant_healthcheck_asks_the_dns_listener() -> None:
    test = DNS_PROXY["healthcheck"]["test"]
    assert test == ["CMD", "python3", "/etc/ipv4proxy/dns-ready.py", DNS_CONFIG["dns"]["listen"][0]]
    # dns-ready.py waits up to 2 s for one answer.
    assert _seconds(DNS_PROXY["healthcheck"]["timeout"]) > 2


def test_dns_variant_proxy_is_locked_down_like_the_other() -> None:
    for key in ("read_only", "cap_drop", "security_opt", "user", "tmpfs", "stop_grace_period"):
        assert DNS_PROXY[key] == PROXY[key], key
    assert "cap_add" not in DNS_PROXY  # port 53 comes from the sysctl, not a capability
    assert DNS_CONFIG["drain"]["grace_period"] + 5 <= _seconds(DNS_PROXY["stop_grace_period"])
    assert [listener["host"] for listener in DNS_CONFIG["listeners"]] == ["127.0.0.1"]
    admin_port = port_of(DNS_CONFIG["admin"]["listen"])
    assert DNS_PROXY["ports"] == [f"127.0.0.1:{admin_port}:{admin_port}"]
