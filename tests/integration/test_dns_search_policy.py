"""The domain policy judges the name the resolv.conf search list turns a request into.

A dnsmasq of its own serves ``db.corp.example`` and, as a cluster DNS would,
``kubernetes.default.svc.cluster.local``; the proxy reads a real resolv.conf with the
search list. ``db`` is looked up as ``db.corp.example``, so ``*.corp.example`` in
``policy.deny_domains`` must refuse ``CONNECT db:PORT`` and ``GET http://db:PORT/`` alike
(403 naming the name and the rule), and ``*.cluster.local`` must refuse
``kubernetes.default`` in the Kubernetes shape (search ``svc.cluster.local
cluster.local``, ndots 5), while a name that answers as itself still goes through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers.dnsmasq import Dnsmasq, running_dnsmasq
from helpers.proxy import ProxyProcess
from helpers.servers import TestServers
from helpers.wire import http_connect, http_raw, socks5_request

RECORDS = (
    "--local=/corp.example/",
    "--host-record=db.corp.example,127.0.0.1",
    "--local=/cluster.local/",
    "--host-record=kubernetes.default.svc.cluster.local,127.0.0.1",
)
CORP = "search corp.example\noptions ndots:1\n"
K8S = "search svc.cluster.local cluster.local\noptions ndots:5\n"

# Starts a proxy reading this resolv.conf text, with these extra flags.
Start = Callable[..., ProxyProcess]


@pytest.fixture(scope="module")
def corp_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    yield from running_dnsmasq(tmp_path_factory.mktemp("corp-dns"), RECORDS)


@pytest.fixture
def start(corp_dns: Dnsmasq, tmp_path: Path) -> Iterator[Start]:
    started: list[ProxyProcess] = []

    def run(resolv_conf: str, *args: str) -> ProxyProcess:
        path = tmp_path / f"resolv-{len(started)}.conf"
        path.write_text(resolv_conf)
        process = ProxyProcess(
            corp_dns.port,
            ["--resolv-conf", str(path), *args],
            tmp_path / f"proxy-{len(started)}.log",
        )
        started.append(process)
        process.start()
        return process

    yield run
    for process in started:
        process.stop()
        assert process.crash_lines() == []


async def test_without_a_rule_the_short_name_takes_the_search_domain(
    start: Start, servers: TestServers
) -> None:
    proxy: ProxyProcess = start(CORP)
    tunnel, reply = await http_connect(proxy.port, f"db:{servers.echo_port}")
    await tunnel.close()
    assert reply.status == 200, reply


async def test_deny_rule_meets_the_searched_name(start: Start, servers: TestServers) -> None:
    proxy: ProxyProcess = start(CORP, "--policy-deny-domains", "*.corp.example")
    rule = "policy.deny_domains[0] *.corp.example"

    tunnel, reply = await http_connect(proxy.port, f"db:{servers.echo_port}")
    await tunnel.close()
    assert reply.status == 403, reply
    assert b"db.corp.example" in reply.body
    assert rule.encode() in reply.body

    request = f"GET http://db:{servers.http_port}/ HTTP/1.1\r\nHost: db\r\n\r\n".encode()
    tunnel, reply = await http_raw(proxy.port, request)
    await tunnel.close()
    assert reply.status == 403, reply
    assert rule.encode() in reply.body

    tunnel, socks = await socks5_request(proxy.port, "db", servers.echo_port)
    await tunnel.close()
    assert socks.code == 0x02
    line = await proxy.access(target=f"db:{servers.echo_port}", protocol="socks5")
    assert line["outcome"] == "DENIED"
    assert "db.corp.example" in line["reason"]


async def test_kubernetes_search_list_and_ndots(start: Start, servers: TestServers) -> None:
    proxy: ProxyProcess = start(K8S, "--policy-deny-domains", "*.cluster.local")
    tunnel, reply = await http_connect(proxy.port, f"kubernetes.default:{servers.echo_port}")
    await tunnel.close()
    assert reply.status == 403, reply
    assert b"kubernetes.default.svc.cluster.local" in reply.body
    assert b"policy.deny_domains[0] *.cluster.local" in reply.body
    # v4.test has fewer than 5 dots: both cluster candidates are NXDOMAIN, then v4.test
    # answers as itself, which no rule refuses.
    tunnel, reply = await http_connect(proxy.port, f"v4.test:{servers.echo_port}")
    await tunnel.close()
    assert reply.status == 200, reply
