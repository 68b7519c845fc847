"""The systemd unit: `systemd-analyze verify` accepts it without a single warning, its
hardening is all there (and `systemd-analyze security` rates it), and it runs the config
this repository ships with a stop timeout that leaves room for the drain.

DNS mode (ipv4proxy.service.d/dns.conf, dns-config.yaml, resolv.conf and the
systemd-resolved drop-in): the unit with its drop-in passes the same checks, adds exactly
the one capability port 53 needs, and waits for DNS answers before it counts as started;
the resolver files point at the listener the config opens, and the config's upstream is
never the listener itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.ci import unavailable
from helpers.deploy import DEPLOY

SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "ipv4proxy.service"
CONFIG = SYSTEMD / "config.yaml"
DNS_DROP_IN = SYSTEMD / "ipv4proxy.service.d" / "dns.conf"
DNS_CONFIG = SYSTEMD / "dns-config.yaml"
RESOLV_CONF = SYSTEMD / "resolv.conf"
RESOLVED_DROP_IN = SYSTEMD / "resolved.conf.d" / "ipv4proxy-dns.conf"
# Where docs/deployment.md installs them.
INSTALLED_BINARY = "/opt/ipv4proxy/bin/ipv4proxy"
INSTALLED_PYTHON = "/opt/ipv4proxy/bin/python3"
INSTALLED_CONFIG = "/etc/ipv4proxy/config.yaml"
INSTALLED_DNS_READY = "/etc/ipv4proxy/dns-ready.py"
# systemd-analyze security rates exposure from 0 (locked down) to 10; "OK" is below 2.
MAX_EXPOSURE = 2.0
_ANALYZE_SECONDS = 60.0


def _directives(path: Path = UNIT) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        unavailable("systemd-analyze is not installed (Debian package systemd)")
    return path


def _unit_with_binary(tmp_path: Path, dns_mode: bool = False) -> Path:
    """The unit, with its ExecStart binary (not installed here) replaced by a stand-in:
    verify refuses a unit whose command does not exist. With `dns_mode`, the DNS drop-in
    beside it (``ipv4proxy.service.d/``, where systemd-analyze reads drop-ins too)."""
    stand_ins = {INSTALLED_BINARY: tmp_path / "ipv4proxy", INSTALLED_PYTHON: tmp_path / "python3"}
    for stand_in in stand_ins.values():
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(stand_ins[INSTALLED_BINARY])))
    if dns_mode:
        drop_in = tmp_path / DNS_DROP_IN.relative_to(SYSTEMD)
        drop_in.parent.mkdir()
        text = DNS_DROP_IN.read_text()
        drop_in.write_text(text.replace(INSTALLED_PYTHON, str(stand_ins[INSTALLED_PYTHON])))
    return unit


@pytest.mark.parametrize("dns_mode", [False, True], ids=["proxy-mode", "dns-mode"])
def test_systemd_analyze_verify_is_silent(tmp_path: Path, dns_mode: bool) -> None:
    result = subprocess.run(
        [_analyze(), "verify", str(_unit_with_binary(tmp_path, dns_mode))],
        capture_output=True,
        text=True,
        timeout=_ANALYZE_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # verify exits 0 even for an unknown or misspelt directive; it only warns.
    assert result.stderr.strip() == "", result.stderr


def test_verify_would_catch_a_misspelt_directive(tmp_path: Path) -> None:
    unit = _unit_with_binary(tmp_path, dns_mode=True)
    unit.write_text(unit.read_text().replace("ProtectSystem=", "ProtectSytem="))
    drop_in = tmp_path / DNS_DROP_IN.relative_to(SYSTEMD)
    drop_in.write_text(drop_in.read_text().replace("PrivateUsers=", "PrivateUsrs="))
    result = subprocess.run(
        [_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=_ANALYZE_SECONDS,
        check=False,
    )
    assert "ProtectSytem" in result.stderr
    assert "PrivateUsrs" in result.stderr  # the drop-in is read, so its checks are real


@pytest.mark.parametrize("dns_mode", [False, True], ids=["proxy-mode", "dns-mode"])
def test_security_exposure_is_low(tmp_path: Path, dns_mode: bool) -> None:
    result = subprocess.run(
        [_analyze(), "security", "--offline=yes", str(_unit_with_binary(tmp_path, dns_mode))],
        capture_output=True,
        text=True,
        timeout=_ANALYZE_SECONDS,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match is not None, result.stdout[-2000:] + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


def test_hardening_directives() -> None:
    unit = _directives()
    expected = {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    # IPv4 only, enforced by the kernel: no AF_INET6 socket can be opened at all.
    (families,) = unit["RestrictAddressFamilies"]
    assert set(families.split()) == {"AF_INET", "AF_UNIX"}


def test_runs_the_shipped_config_and_leaves_room_to_drain() -> None:
    unit = _directives()
    assert unit["ExecStart"] == [f"{INSTALLED_BINARY} --config {INSTALLED_CONFIG}"]
    assert unit["ExecStartPre"] == [f"{INSTALLED_BINARY} check-config --config {INSTALLED_CONFIG}"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    config = yaml.safe_load(CONFIG.read_text())
    (timeout,) = unit["TimeoutStopSec"]
    assert config["drain"]["grace_period"] + 5 <= int(timeout)
    # Gateways on the same host: loopback, so no client CIDRs or credentials are needed.
    assert [listener["host"] for listener in config["listeners"]] == ["127.0.0.1"]
    assert config["admin"]["listen"].startswith("127.0.0.1:")


# --- DNS mode -------------------------------------------------------------------------------


def test_dns_drop_in_adds_only_what_port_53_needs() -> None:
    drop_in = _directives(DNS_DROP_IN)
    # Ambient, so the capability is effective for the dynamic (non-root) user.
    assert drop_in["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert drop_in["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    # A capability inside a private user namespace does not cover the host's network.
    assert drop_in["PrivateUsers"] == ["no"]
    allowed = {
        "CapabilityBoundingSet",
        "AmbientCapabilities",
        "PrivateUsers",
        "ExecStartPost",
        "TimeoutStartSec",
        "Wants",
        "Before",
    }
    assert set(drop_in) == allowed, set(drop_in) - allowed
    # Everything else of the unit's hardening stays as it is ([Unit] Wants= only adds).
    overridden = set(drop_in) & set(_directives()) - {"Wants"}
    assert overridden == {"CapabilityBoundingSet", "AmbientCapabilities", "PrivateUsers"}


def test_dns_drop_in_starts_once_dns_answers() -> None:
    drop_in = _directives(DNS_DROP_IN)
    config = yaml.safe_load(DNS_CONFIG.read_text())
    (listen,) = config["dns"]["listen"]
    (post,) = drop_in["ExecStartPost"]
    python, script, address, flag, wait = post.split()
    assert (python, script, address, flag) == (
        INSTALLED_PYTHON,
        INSTALLED_DNS_READY,
        listen,
        "--wait",
    )
    (start_timeout,) = drop_in["TimeoutStartSec"]
    assert float(wait) < int(start_timeout)
    assert drop_in["Before"] == ["nss-lookup.target"]
    assert drop_in["Wants"] == ["nss-lookup.target"]


def test_dns_config_and_resolver_files_agree() -> None:
    config = yaml.safe_load(DNS_CONFIG.read_text())
    (listen,) = config["dns"]["listen"]
    host, _, port = listen.rpartition(":")
    # resolv.conf and resolved name an address only: the listener must be on port 53.
    assert (host, port) == ("127.0.0.1", "53")
    lines = [line.split() for line in RESOLV_CONF.read_text().splitlines()]
    assert [words[1] for words in lines if words and words[0] == "nameserver"] == [host]
    resolved = _directives(RESOLVED_DROP_IN)
    assert resolved["DNS"] == [host]
    assert resolved["Domains"] == ["~."]  # every name, ahead of the links' own servers
    assert resolved["DNSSEC"] == ["no"]  # rewritten answers no longer validate
    # Explicit upstreams that are not the listener; the proxy's own lookups use them too.
    upstreams = config["dns"]["upstreams"]
    assert upstreams
    assert listen not in upstreams
    assert host not in upstreams
    assert config["resolver"]["nameservers"] == upstreams
    # The same loopback-only listeners as the proxy-mode config.
    assert [listener["host"] for listener in config["listeners"]] == ["127.0.0.1"]
    assert config["admin"]["listen"].startswith("127.0.0.1:")
    (timeout,) = _directives()["TimeoutStopSec"]
    assert config["drain"]["grace_period"] + 5 <= int(timeout)
