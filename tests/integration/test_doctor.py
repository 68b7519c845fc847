"""``ipv4proxy doctor`` as an operator runs it: a subprocess, real DNS, real sockets.

Doctor asks for AAAA records, so it gets a dnsmasq of its own: the session's dnsmasq must
never see an AAAA question (test_ipv4_only checks that). The "no IPv6 route" case runs in a
network namespace of its own, with only a loopback interface, where a documentation
address (2001:db8::1) has no route; that needs root (CI runs as root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from helpers.ci import unavailable
from helpers.dnsfake import ScriptedNameserver
from helpers.dnsmasq import Dnsmasq, running_dnsmasq
from helpers.net import ipv6_loopback_available
from helpers.process import stop_process
from helpers.programs import run_ipv4proxy
from helpers.proxy import REPO_ROOT
from helpers.servers import TestServers

# Bound on each `ip` command here; a doctor run has programs.PROGRAM_SECONDS (its connect
# timeout is cut to 5 s below).
DOCTOR_SECONDS = 30.0
TINYDNS = REPO_ROOT / "tests" / "helpers" / "tinydns.py"


@pytest.fixture(scope="module")
def doctor_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    yield from running_dnsmasq(tmp_path_factory.mktemp("doctor-dnsmasq"))


def run_doctor(
    target: str, nameserver_port: int, *extra: str, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    args = [
        "doctor",
        "--nameserver",
        f"127.0.0.1:{nameserver_port}",
        "--hosts-file",
        "/dev/null",
        "--resolv-conf",
        "/dev/null",
        "--connect-timeout",
        "5",
        *extra,
        target,
    ]
    return run_ipv4proxy(args, prefix)


def report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.stdout, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_dual_stack_name(doctor_dns: Dnsmasq, servers: TestServers) -> None:
    done = run_doctor(f"dual.test:{servers.echo_port}", doctor_dns.port, "--json")
    assert done.returncode == 0, done.stderr
    data = report(done)
    assert data["a"] == ["127.0.0.1"]
    assert [route["address"] for route in data["aaaa"]] == ["::1"]
    assert data["ipv4_ok"] is True
    (connection,) = data["connections"]
    assert connection["address"] == "127.0.0.1"
    assert connection["seconds"] is not None
    assert connection["error"] is None
    if ipv6_loopback_available():
        assert data["aaaa"][0]["routed"] is True
        assert data["verdict"].startswith("IPv6 routed and IPv4 handshake")
    # Doctor asked this DNS server for both record types; the proxy's never sees AAAA.
    asked = {(q.qtype, q.name) for q in doctor_dns.queries()}
    assert {("A", "dual.test"), ("AAAA", "dual.test")} <= asked


def test_ipv4_only_name_in_text(doctor_dns: Dnsmasq, servers: TestServers) -> None:
    done = run_doctor(f"v4.test:{servers.echo_port}", doctor_dns.port)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"v4.test port {servers.echo_port}"
    assert "  A      127.0.0.1" in lines
    assert "  AAAA   none (NODATA)" in lines
    assert lines[-1].startswith("verdict: no AAAA record and IPv4 handshake")


def test_ipv6_only_name(doctor_dns: Dnsmasq) -> None:
    done = run_doctor("v6only.test", doctor_dns.port, "--json")
    assert done.returncode == 1
    data = report(done)
    assert data["a"] == []
    assert data["a_error"].startswith("NODATA")
    assert data["ipv4_ok"] is False
    assert "ipv4proxy cannot reach it" in data["verdict"]


def test_refused_port_and_unknown_name(doctor_dns: Dnsmasq, closed_port: int) -> None:
    done = run_doctor(f"v4.test:{closed_port}", doctor_dns.port, "--json")
    assert done.returncode == 1
    data = report(done)
    assert data["connections"] == [
        {"address": "127.0.0.1", "seconds": None, "error": "ECONNREFUSED"}
    ]
    assert data["verdict"].startswith("IPv4 connect failed to every address (ECONNREFUSED)")
    done = run_doctor("nowhere.test:443", doctor_dns.port)
    assert done.returncode == 1
    assert "verdict: no IPv4 address (NXDOMAIN" in done.stdout


def test_bad_target_and_bad_config(doctor_dns: Dnsmasq) -> None:
    done = run_doctor("[2001:db8::1]:443", doctor_dns.port)
    assert done.returncode == 2
    assert "IPv4 only" in done.stderr
    done = run_doctor("v4.test", doctor_dns.port, "--dialer-connect-timeout", "0")
    assert done.returncode == 2
    assert "dialer.connect_timeout: expected a number > 0" in done.stderr


# --- a machine without an IPv6 route ------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=DOCTOR_SECONDS, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with only loopback up; deleted afterwards, always."""
    if os.geteuid() != 0:
        unavailable("network namespaces need root (CI runs as root)")
    if shutil.which("ip") is None:
        unavailable("iproute2 (ip) is not installed")
    name = f"ipv4proxy-doctor-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=DOCTOR_SECONDS)


@pytest.mark.root
def test_no_ipv6_route_verdict(netns: str) -> None:
    records = ["nov6.test=127.0.0.1", "nov6.test=2001:db8::1"]
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, str(TINYDNS), *records],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        ports = dict(field.split("=") for field in server.stdout.readline().split())
        done = run_doctor(
            f"nov6.test:{ports['tcp']}",
            int(ports["dns"]),
            "--json",
            prefix=["ip", "netns", "exec", netns],
        )
    finally:
        stop_process(server)
        if server.stdout is not None:
            server.stdout.close()
    assert done.returncode == 0, done.stderr
    data = report(done)
    assert data["a"] == ["127.0.0.1"]
    assert data["aaaa"] == [{"address": "2001:db8::1", "routed": False, "detail": "ENETUNREACH"}]
    assert data["connections"][0]["seconds"] is not None
    assert data["verdict"].startswith("IPv6 unreachable (no route) and IPv4 handshake")
    assert "Happy Eyeballs" in data["verdict"]


def test_a_pasted_url_is_its_host_and_scheme_port(doctor_dns: Dnsmasq) -> None:
    done = run_doctor("https://v4.test/some/path?q=1", doctor_dns.port)
    assert done.returncode == 1, done.stderr  # nothing listens on 127.0.0.1:443 here
    assert done.stdout.splitlines()[0] == "v4.test port 443"
    done = run_doctor("http://user@v4.test/", doctor_dns.port)
    assert done.stdout.splitlines()[0] == "v4.test port 80"


def test_dns_down_is_said_so_once_in_one_line() -> None:
    """A silent DNS server: A and AAAA are asked at once (one timeout, not two), and the
    verdict says the lookup failed, not that nothing can connect."""
    silent = ScriptedNameserver("drop")
    silent.start()
    try:
        done = run_doctor("v4.test", silent.port, "--resolver-timeout", "1", "--json")
    finally:
        silent.stop()
    assert done.returncode == 1, done.stderr
    data = report(done)
    assert data["a_error"] == "DNS_FAILURE: DNS lookup of v4.test timed out"
    assert data["aaaa_error"] == "DNS_FAILURE: no answer from the DNS servers in 1 s"
    assert data["verdict"].startswith("DNS lookup failed (DNS_FAILURE")
    assert "nothing can connect" not in data["verdict"]
    assert silent.names["v4.test"] >= 2  # A and AAAA both asked


def test_json_into_a_closed_pipe_is_not_an_error(doctor_dns: Dnsmasq) -> None:
    """`doctor --json | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    argv = [sys.executable, "-m", "ipv4proxy", "doctor", "--nameserver"]
    argv += [f"127.0.0.1:{doctor_dns.port}", "--hosts-file", "/dev/null", "--resolv-conf"]
    argv += ["/dev/null", "--json", "v4.test:9"]
    with subprocess.Popen(
        argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as child:
        assert child.stdout is not None
        child.stdout.close()  # the reader is gone before doctor prints
        _, stderr = child.communicate(timeout=60)
    assert b"Traceback" not in stderr, stderr
    assert child.returncode == 0
