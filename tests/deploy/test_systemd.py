"""The systemd unit: `systemd-analyze verify` accepts it without a single warning, its
hardening is all there (and `systemd-analyze security` rates it), and it runs the config
this repository ships with a stop timeout that leaves room for the drain.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from helpers.ci import unavailable
from helpers.deploy import DEPLOY

UNIT = DEPLOY / "systemd" / "ipv4proxy.service"
CONFIG = DEPLOY / "systemd" / "config.yaml"
# Where the README installs them.
INSTALLED_BINARY = "/opt/ipv4proxy/bin/ipv4proxy"
INSTALLED_CONFIG = "/etc/ipv4proxy/config.yaml"
# systemd-analyze security rates exposure from 0 (locked down) to 10; "OK" is below 2.
MAX_EXPOSURE = 2.0
_ANALYZE_SECONDS = 60.0


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        unavailable("systemd-analyze is not installed (Debian package systemd)")
    return path


def _unit_with_binary(tmp_path: Path) -> Path:
    """The unit, with its ExecStart binary (not installed here) replaced by a stand-in:
    verify refuses a unit whose command does not exist."""
    stand_in = tmp_path / "ipv4proxy"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(stand_in)))
    return unit


def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    result = subprocess.run(
        [_analyze(), "verify", str(_unit_with_binary(tmp_path))],
        capture_output=True,
        text=True,
        timeout=_ANALYZE_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # verify exits 0 even for an unknown or misspelt directive; it only warns.
    assert result.stderr.strip() == "", result.stderr


def test_verify_would_catch_a_misspelt_directive(tmp_path: Path) -> None:
    unit = _unit_with_binary(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectSystem=", "ProtectSytem="))
    result = subprocess.run(
        [_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=_ANALYZE_SECONDS,
        check=False,
    )
    assert "ProtectSytem" in result.stderr


def test_security_exposure_is_low(tmp_path: Path) -> None:
    result = subprocess.run(
        [_analyze(), "security", "--offline=yes", str(_unit_with_binary(tmp_path))],
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
