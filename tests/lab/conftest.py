"""Fixtures of the lab (see helpers/lab.py): one lab and one proxy for the whole run.

The lab needs root. Without it the lab's tests are skipped at collection, with the reason
(test_lab.py); in CI, which runs as root, a lab that cannot be built fails instead.

Teardown runs on failure and on Ctrl-C (pytest tears fixtures down on KeyboardInterrupt);
while the lab exists SIGTERM is turned into KeyboardInterrupt so that it tears down too;
a run killed outright is cleaned up by the next one (`sweep_stale`).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest
import yaml

from helpers.ci import unavailable
from helpers.lab import (
    CLIENT_DNS,
    DNS_LISTEN,
    DNS_PROXY_GID,
    LAB_CONNECT_TIMEOUT,
    LAN_V4,
    PROXY_DNS,
    PROXY_GID,
    Lab,
    LabUnavailable,
    sweep_stale,
)
from helpers.proxy import REPO_ROOT, START_SECONDS, ProxyProcess

SIDECAR_DNS_CONFIGMAP = REPO_ROOT / "deploy" / "kubernetes" / "sidecar-dns" / "configmap.yaml"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    built = Lab(tmp_path_factory.mktemp("lab"))
    try:
        try:
            sweep_stale()
            built.build()
        except LabUnavailable as exc:
            unavailable(f"the lab cannot be built here: {exc}")
        yield built
    finally:
        try:
            built.teardown()
        finally:
            signal.signal(signal.SIGTERM, previous)
        crashes = built.service_crash_lines()
        if crashes:
            pytest.fail("unhandled errors in the lab service's stderr:\n" + "\n".join(crashes))


@pytest.fixture(scope="session")
def lab_proxy(lab: Lab) -> Iterator[ProxyProcess]:
    """ipv4proxy on the gateway: 127.0.0.1 there, its own group, the lab DNS server.

    At the end, for the whole run: no unhandled error in its stderr, no AAAA question from
    it, no IPv6 packet from it.
    """
    # After the default test flags: argparse appends, so the lab's own network joins the
    # destinations those flags allow (loopback), like an operator's allowlist would.
    lab_flags = (
        "--connect-timeout",
        str(LAB_CONNECT_TIMEOUT),
        "--policy-allow-cidrs",
        str(LAN_V4),
    )
    process = ProxyProcess(
        53,
        lab_flags,
        lab.workdir / "proxy.log",
        nameserver_host=PROXY_DNS,
        command_prefix=lab.on_gateway(PROXY_GID),
    )
    try:
        process.start()
        yield process
    finally:
        process.stop()
        problems = [f"stderr: {line}" for line in process.crash_lines()[:5]]
        asked = [q for q in lab.dns_queries() if q.server == PROXY_DNS and q.qtype != "A"]
        problems += [f"the proxy asked {q.qtype} {q.name}" for q in asked]
        sent_ipv6 = lab.counters(lab.gateway)["proxy_ipv6"]
        if sent_ipv6:
            problems.append(f"the proxy sent {sent_ipv6} IPv6 packets")
        if problems:
            pytest.fail("the lab proxy misbehaved during the run:\n" + "\n".join(problems))


@pytest.fixture(scope="session")
def lab_dns_proxy(lab: Lab) -> Iterator[ProxyProcess]:
    """ipv4proxy in DNS mode on the gateway, under its own group: the configuration the
    Kubernetes DNS-mode sidecar ships (its ConfigMap), with only what an operator changes
    changed: the upstream is the lab DNS server the clients used to ask (``CLIENT_DNS``)
    instead of the cluster DNS Service. Its DNS listener is the ConfigMap's 127.0.0.1:53.

    At the end, for the whole run: no unhandled error in its stderr, no IPv6 packet from it.
    """
    configmap = yaml.safe_load(SIDECAR_DNS_CONFIGMAP.read_text(encoding="utf-8"))
    config = lab.workdir / "sidecar-dns.yaml"
    config.write_text(configmap["data"]["config.yaml"], encoding="utf-8")
    assert yaml.safe_load(config.read_text())["dns"]["listen"] == [DNS_LISTEN]
    # After the default test flags, which replace the ConfigMap's listeners, admin address,
    # resolver and log settings with the test proxy's (lists given as flags replace).
    flags = (
        "--config",
        str(config),
        "--connect-timeout",
        str(LAB_CONNECT_TIMEOUT),
        "--policy-allow-cidrs",
        str(LAN_V4),
        "--dns-upstreams",
        CLIENT_DNS,
    )
    process = ProxyProcess(
        53,
        flags,
        lab.workdir / "dns-proxy.log",
        nameserver_host=PROXY_DNS,
        command_prefix=lab.on_gateway(DNS_PROXY_GID),
    )
    try:
        process.start()
        bound = process.wait_for_line(
            lambda line: f"dns listening on {DNS_LISTEN}" in line, START_SECONDS
        )
        if bound is None:
            pytest.fail("the DNS listener did not start:\n" + "\n".join(process.logs()))
        yield process
    finally:
        process.stop()
        problems = [f"stderr: {line}" for line in process.crash_lines()[:5]]
        sent_ipv6 = lab.counters(lab.gateway)["dns_proxy_ipv6"]
        if sent_ipv6:
            problems.append(f"the DNS-mode proxy sent {sent_ipv6} IPv6 packets")
        if problems:
            pytest.fail("the DNS-mode proxy misbehaved during the run:\n" + "\n".join(problems))


@pytest.fixture
def broken_ipv6(lab: Lab) -> Iterator[None]:
    """The second mode: the gateway routes IPv6 to the service, which drops the SYNs."""
    lab.set_broken_ipv6(True)
    try:
        yield
    finally:
        lab.set_broken_ipv6(False)
