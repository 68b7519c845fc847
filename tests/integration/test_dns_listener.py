"""The DNS listener (DNS mode) against a real upstream (dnsmasq) and real clients.

Clients: ``dig`` (bind9-dnsutils), dnspython and Node's resolver (c-ares), over UDP and
TCP. What is checked: AAAA answered empty (NODATA, CNAMEs and SOA kept), A kept, AAAA out
of ANY, ipv6hint out of HTTPS/SVCB, NXDOMAIN and SERVFAIL passed on, negative caching and
TTL count-down, TC then TCP, EDNS options passed through, refused clients, the rate limit,
an upstream that is down, and the loop check at start.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.ci import unavailable
from helpers.dnsfake import ScriptedNameserver
from helpers.dnsmasq import Dnsmasq, running_dnsmasq
from helpers.dnsmode import DNS_MODE_ARGS, EchoUpstream, zone_args
from helpers.programs import NODE_DIR, node_command, run_ipv4proxy, run_node, run_program
from helpers.proxy import ProxyFactory, ProxyProcess

_DNS_LINE = re.compile(r"dns listening on 127\.[0-9.]+:(\d+) \(udp, tcp\)")
_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def zone() -> Iterator[EchoUpstream]:
    with EchoUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, zone: EchoUpstream) -> Iterator[Dnsmasq]:
    directory = tmp_path_factory.mktemp("dnsmode")
    yield from running_dnsmasq(directory, (*DNS_MODE_ARGS, *zone_args(zone.port)))


def _start(
    factory: ProxyFactory, args: Sequence[str], *, listen_flag: bool = True
) -> tuple[ProxyProcess, int]:
    listen = ["--dns-listen", "127.0.0.1:0"] if listen_flag else []
    proxy = factory([*listen, "--log-level", "debug", *args])
    line = proxy.wait_for_line(lambda text: _DNS_LINE.search(text) is not None, 20)
    assert line is not None, "\n".join(proxy.logs())
    match = _DNS_LINE.search(line)
    assert match is not None
    return proxy, int(match[1])


@pytest.fixture(scope="module")
def listener(proxy_factory: ProxyFactory, upstream: Dnsmasq) -> tuple[ProxyProcess, int]:
    return _start(proxy_factory, ["--dns-upstreams", f"127.0.0.1:{upstream.port}"])


def _udp(port: int, name: str, qtype: str, **kwargs: object) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, **kwargs)  # type: ignore[arg-type]
    answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=_TIMEOUT)
    assert answer.id == query.id
    return answer


def _tcp(port: int, name: str, qtype: str, **kwargs: object) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, **kwargs)  # type: ignore[arg-type]
    return dns.query.tcp(query, "127.0.0.1", port=port, timeout=_TIMEOUT)


def _types(section: list[dns.rrset.RRset]) -> list[str]:
    return sorted(dns.rdatatype.to_text(r.rdtype) for r in section)


def _dig(port: int, *args: str) -> str:
    dig = shutil.which("dig")
    if dig is None:
        unavailable("dig is not installed (Debian package bind9-dnsutils)")
    result = run_program([dig, "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3", *args])
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


# --- the rewrites, seen by each client ----------------------------------------------------


@pytest.mark.parametrize("ask", [_udp, _tcp])
def test_dnspython_sees_ipv4_only(
    listener: tuple[ProxyProcess, int], ask: Callable[..., dns.message.Message]
) -> None:
    _, port = listener
    query = ask
    aaaa = query(port, "dual.test", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR
    assert not aaaa.answer
    a = query(port, "dual.test", "A")
    assert [rd.address for rd in a.answer[0]] == ["127.0.0.1"]
    chain = query(port, "chain.test", "AAAA")
    assert chain.rcode() == dns.rcode.NOERROR
    assert _types(chain.answer) == ["CNAME", "CNAME"]
    nodata = query(port, "v4.zone.test", "AAAA")
    assert _types(nodata.authority) == ["SOA"]
    emptied = query(port, "a.zone.test", "AAAA")
    assert emptied.rcode() == dns.rcode.NOERROR
    assert _types(emptied.answer) == ["CNAME"]
    nx = query(port, "gone.zone.test", "AAAA")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert _types(nx.authority) == ["SOA"]
    anything = query(port, "dual.test", "ANY")
    assert "AAAA" not in _types(anything.answer)


def test_https_and_svcb_lose_ipv6hint_and_keep_the_rest(
    listener: tuple[ProxyProcess, int],
) -> None:
    _, port = listener
    https = _udp(port, "svc.test", "HTTPS")
    assert [rd.to_text() for rd in https.answer[0]] == ['1 . alpn="h2" ipv4hint="127.0.0.1"']
    svcb = _tcp(port, "svcb.test", "SVCB")
    assert [rd.to_text() for rd in svcb.answer[0]] == ['1 svc.test. port="8443"']


def test_dig_over_udp_and_tcp(listener: tuple[ProxyProcess, int]) -> None:
    _, port = listener
    for transport in ("+notcp", "+tcp"):
        aaaa = _dig(port, transport, "alias.test", "AAAA", "+noall", "+answer", "+comments")
        assert "status: NOERROR" in aaaa
        assert "CNAME\tdual.test." in aaaa
        assert "::1" not in aaaa
        https = _dig(port, transport, "svc.test", "HTTPS", "+short")
        assert "ipv4hint=127.0.0.1" in https
        assert "ipv6hint" not in https


def test_node_resolver_gets_no_ipv6_address(listener: tuple[ProxyProcess, int]) -> None:
    _, port = listener
    result = run_node(
        "dns-resolver.mjs",
        [f"127.0.0.1:{port}", "A:dual.test", "AAAA:dual.test", "AAAA:alias.test", "A:big.test"],
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert [entry["address"] for entry in answers["A:dual.test"]["ok"]] == ["127.0.0.1"]
    assert answers["AAAA:dual.test"] == {"error": "ENODATA"}
    # A CNAME chain without an AAAA at its end: c-ares gives an empty list, no error.
    assert answers["AAAA:alias.test"] in ({"ok": []}, {"error": "ENODATA"})
    assert len(answers["A:big.test"]["ok"]) == 59  # truncated over UDP, then TCP


def test_nxdomain_and_servfail_are_passed_on(
    proxy_factory: ProxyFactory,
) -> None:
    with EchoUpstream() as echo:
        _, port = _start(proxy_factory, ["--dns-upstreams", f"127.0.0.1:{echo.port}"])
        assert _udp(port, "servfail.test", "AAAA").rcode() == dns.rcode.SERVFAIL
        assert _udp(port, "fine.test", "A").answer


def test_nxdomain_passed_on(listener: tuple[ProxyProcess, int]) -> None:
    _, port = listener
    assert _udp(port, "nowhere.test", "A").rcode() == dns.rcode.NXDOMAIN
    assert _tcp(port, "nowhere.test", "AAAA").rcode() == dns.rcode.NXDOMAIN


# --- cache, truncation, EDNS ----------------------------------------------------------------


def test_negative_answers_are_cached_and_ttls_count_down(
    listener: tuple[ProxyProcess, int], upstream: Dnsmasq
) -> None:
    _, port = listener
    first = _udp(port, "gone.cache.zone.test", "A")
    assert first.rcode() == dns.rcode.NXDOMAIN
    ttl = first.authority[0].ttl
    later = first
    for _ in range(40):  # until a second has passed on the listener's clock; bounded
        time.sleep(0.1)
        later = _udp(port, "gone.cache.zone.test", "A")
        if later.authority[0].ttl < ttl:
            break
    assert later.rcode() == dns.rcode.NXDOMAIN
    assert later.authority[0].ttl < ttl
    asked = [q for q in upstream.queries() if q.name == "gone.cache.zone.test"]
    assert len(asked) == 1, asked


def test_truncated_over_udp_then_tcp(listener: tuple[ProxyProcess, int]) -> None:
    _, port = listener
    over_udp = _udp(port, "big.test", "A")  # no EDNS: 512 bytes at most
    assert over_udp.flags & dns.flags.TC
    over_tcp = _tcp(port, "big.test", "A")
    assert len(over_tcp.answer[0]) == 59
    dig = _dig(port, "+noedns", "big.test", "A", "+noall", "+comments", "+answer")
    assert "Truncated, retrying in TCP mode" in dig
    assert dig.count("\tA\t127.0.1.") == 59
    # A cached answer too big for a client's size is cut as well.
    again = _udp(port, "big.test", "A")
    assert again.flags & dns.flags.TC


def test_edns_options_pass_through(proxy_factory: ProxyFactory) -> None:
    with EchoUpstream() as echo:
        _, port = _start(proxy_factory, ["--dns-upstreams", f"127.0.0.1:{echo.port}"])
        nsid = dns.edns.GenericOption(dns.edns.OptionType.NSID, b"")
        cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"0123abcd")
        query = dns.message.make_query("opts.test", "A", use_edns=0, options=[nsid, cookie])
        query.flags |= dns.flags.CD
        answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=_TIMEOUT)
        sent = {(o.otype, o.to_wire()) for o in echo.options[-1]}
        assert sent == {(o.otype, o.to_wire()) for o in (nsid, cookie)}
        assert {(o.otype, o.to_wire()) for o in answer.options} == sent
        assert answer.flags & dns.flags.CD
        assert answer.options
        dig = _dig(port, "+nsid", "+cookie=0011223344556677", "other.test", "A")
        assert "COOKIE: 0011223344556677" in dig


# --- who may ask, how much, and when upstream is down -----------------------------------------


def test_clients_outside_dns_clients_are_refused(
    proxy_factory: ProxyFactory, upstream: Dnsmasq
) -> None:
    _, port = _start(
        proxy_factory,
        ["--dns-upstreams", f"127.0.0.1:{upstream.port}", "--dns-clients", "10.0.0.0/8"],
    )
    assert _udp(port, "dual.test", "A").rcode() == dns.rcode.REFUSED
    assert _tcp(port, "dual.test", "A").rcode() == dns.rcode.REFUSED


def test_a_client_over_its_rate_is_refused(proxy_factory: ProxyFactory, upstream: Dnsmasq) -> None:
    _, port = _start(
        proxy_factory,
        ["--dns-upstreams", f"127.0.0.1:{upstream.port}", "--dns-client-rate", "2"],
    )
    codes = [_udp(port, "dual.test", "A").rcode() for _ in range(20)]
    assert dns.rcode.NOERROR in codes
    assert dns.rcode.REFUSED in codes


def test_upstream_down_gives_servfail(proxy_factory: ProxyFactory, closed_port: int) -> None:
    proxy, port = _start(
        proxy_factory,
        ["--dns-upstreams", f"127.0.0.1:{closed_port}", "--resolver-timeout", "1"],
    )
    assert _udp(port, "dual.test", "A").rcode() == dns.rcode.SERVFAIL
    assert _tcp(port, "dual.test", "A").rcode() == dns.rcode.SERVFAIL
    assert proxy.wait_for_line(lambda t: "outcome=upstream_failure" in t, 5) is not None


def test_reload_keeps_serving_and_drain_stops(
    proxy_factory: ProxyFactory, upstream: Dnsmasq
) -> None:
    proxy, port = _start(proxy_factory, ["--dns-upstreams", f"127.0.0.1:{upstream.port}"])
    mark = proxy.mark()
    proxy.send_signal(signal.SIGHUP)
    assert proxy.wait_for_line(lambda t: "reloaded configuration" in t, 10, mark) is not None
    assert _udp(port, "dual.test", "A").answer
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(20) == 0


# --- loop safety ----------------------------------------------------------------------------


def test_an_upstream_that_is_the_listener_is_refused_at_start(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    looping = run_ipv4proxy(
        ["check-config", "--dns-listen", "127.0.0.1:53", "--resolv-conf", str(resolv)]
    )
    assert looping.returncode == 2
    assert "dns.upstreams" in looping.stderr
    explicit = run_ipv4proxy(
        [
            "check-config",
            "--dns-listen",
            "127.0.0.1:53",
            "--resolv-conf",
            str(resolv),
            "--dns-upstreams",
            "10.96.0.10",
        ]
    )
    assert explicit.returncode == 0, explicit.stderr
    assert "10.96.0.10" in explicit.stdout
    running = run_ipv4proxy(
        [
            "--listen",
            "127.0.0.1:0",
            "--dns-listen",
            "0.0.0.0:5399",
            "--dns-upstreams",
            "127.0.0.1:5399",
        ]
    )
    assert running.returncode == 2
    assert "dns.upstreams" in running.stderr


# --- doctor and check-config -----------------------------------------------------------------


def test_doctor_shows_what_a_dns_client_gets(
    listener: tuple[ProxyProcess, int], upstream: Dnsmasq, closed_port: int
) -> None:
    _, port = listener
    args = ["doctor", "--nameserver", f"127.0.0.1:{upstream.port}", "--hosts-file", "/dev/null"]
    done = run_ipv4proxy([*args, "--dns-listen", f"127.0.0.1:{port}", f"dual.test:{closed_port}"])
    assert done.returncode in (0, 1), done.stderr
    line = next(x for x in done.stdout.splitlines() if x.strip().startswith("DNS mode"))
    assert f"127.0.0.1:{port}: A 127.0.0.1; AAAA none (NOERROR, 0 records)" in line
    report = json.loads(
        run_ipv4proxy([*args, "--dns-listen", f"127.0.0.1:{port}", "--json", "dual.test:1"]).stdout
    )
    assert "AAAA none" in report["dns_listener"]
    without = run_ipv4proxy([*args, "--json", "dual.test:1"])
    assert json.loads(without.stdout)["dns_listener"] is None


def test_check_config_shows_the_dns_section() -> None:
    done = run_ipv4proxy(
        ["check-config", "--dns-listen", "127.0.0.1:5300", "--dns-upstreams", "10.96.0.10"]
    )
    assert done.returncode == 0, done.stderr
    assert "dns:\n  listen:\n  - 127.0.0.1:5300\n" in done.stdout
    assert "client_rate: 200" in done.stdout


# --- bounds and metrics ------------------------------------------------------------------------


def test_over_max_in_flight_is_servfail_at_once(proxy_factory: ProxyFactory) -> None:
    with ScriptedNameserver("drop") as silent:
        proxy, port = _start(
            proxy_factory,
            ["--dns-upstreams", f"127.0.0.1:{silent.port}", "--dns-max-in-flight", "1"],
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.sendto(dns.message.make_query("held.test", "A").to_wire(), ("127.0.0.1", port))
            for _ in range(100):  # until the upstream holds it; bounded
                if silent.distinct_names():
                    break
                time.sleep(0.05)
            assert silent.distinct_names() == 1
            assert _udp(port, "other.test", "A").rcode() == dns.rcode.SERVFAIL
        assert proxy.wait_for_line(lambda t: "outcome=busy" in t, 5) is not None


def test_metrics_count_queries_by_type_and_outcome(
    proxy_factory: ProxyFactory, upstream: Dnsmasq
) -> None:
    proxy, port = _start(
        proxy_factory,
        ["--dns-upstreams", f"127.0.0.1:{upstream.port}", "--admin-listen", "127.0.0.1:0"],
    )
    _udp(port, "dual.test", "AAAA")
    _udp(port, "svc.test", "HTTPS")
    _udp(port, "dual.test", "A")
    _udp(port, "dual.test", "A")
    with urllib.request.urlopen(
        f"http://127.0.0.1:{proxy.admin_port}/metrics", timeout=_TIMEOUT
    ) as response:
        page = response.read().decode()
    values = {
        f"{s.name}{dict(sorted(s.labels.items()))}": s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }
    assert values["ipv4proxy_dns_queries_total{'outcome': 'nodata_aaaa', 'qtype': 'AAAA'}"] == 1
    assert values["ipv4proxy_dns_queries_total{'outcome': 'ok', 'qtype': 'HTTPS'}"] == 1
    assert values["ipv4proxy_dns_queries_total{'outcome': 'ok', 'qtype': 'A'}"] == 1
    assert values["ipv4proxy_dns_queries_total{'outcome': 'cached', 'qtype': 'A'}"] == 1
    assert values["ipv4proxy_dns_aaaa_emptied_total{}"] == 1
    assert values["ipv4proxy_dns_ipv6hints_removed_total{}"] == 1
    assert values["ipv4proxy_dns_query_seconds_count{}"] == 4


def test_reload_applies_new_dns_settings_and_refuses_a_new_listen(
    proxy_factory: ProxyFactory, upstream: Dnsmasq, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    base = f"dns: {{listen: ['127.0.0.1:0'], upstreams: ['127.0.0.1:{upstream.port}']"
    config.write_text(base + "}\n")
    proxy, port = _start(proxy_factory, ["--config", str(config)], listen_flag=False)
    assert _udp(port, "dual.test", "A").rcode() == dns.rcode.NOERROR
    config.write_text(base + ", clients: ['10.0.0.0/8']}\n")
    mark = proxy.mark()
    proxy.send_signal(signal.SIGHUP)
    line = proxy.wait_for_line(lambda t: "reloaded configuration" in t, 10, mark)
    assert line is not None
    assert "dns.clients" in line
    assert _udp(port, "dual.test", "A").rcode() == dns.rcode.REFUSED
    config.write_text("dns: {listen: ['127.0.0.1:5301']}\n")
    mark = proxy.mark()
    proxy.send_signal(signal.SIGHUP)
    refused = proxy.wait_for_line(lambda t: "reload refused" in t, 10, mark)
    assert refused is not None
    assert "dns.listen cannot change" in refused


def test_nothing_to_rewrite_means_the_upstreams_bytes(proxy_factory: ProxyFactory) -> None:
    with EchoUpstream() as echo:
        _, port = _start(proxy_factory, ["--dns-upstreams", f"127.0.0.1:{echo.port}"])
        cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"fedcba98")
        query = dns.message.make_query(
            "same.test", "A", use_edns=0, want_dnssec=True, options=[cookie]
        )
        query.flags |= dns.flags.CD
        wire = query.to_wire()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(_TIMEOUT)
            sock.sendto(wire, ("127.0.0.1", echo.port))
            direct = sock.recv(65535)
            sock.sendto(wire, ("127.0.0.1", port))
            through = sock.recv(65535)
        assert through == direct


def test_node_lookup_through_resolv_conf_gets_ipv4_only(
    proxy_factory: ProxyFactory, upstream: Dnsmasq, tmp_path: Path
) -> None:
    """dns.lookup (getaddrinfo, what ws, fetch and https.get use) with a resolv.conf that
    names the listener, and nothing else changed: a mount namespace swaps /etc/resolv.conf
    for the node process only. resolv.conf takes no port, so the listener binds :53 on a
    loopback address of its own (root only)."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        unavailable("needs root and unshare (util-linux) to bind :53 and swap resolv.conf")
    address = f"127.77.{random.randint(1, 254)}.53"
    _start(
        proxy_factory,
        ["--dns-listen", f"{address}:53", "--dns-upstreams", f"127.0.0.1:{upstream.port}"],
        listen_flag=False,
    )
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {address}\noptions timeout:2 attempts:2\n")
    swap = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    command = [unshare, "--mount", "--propagation", "private", "sh", "-c", swap, "sh"]
    result = run_program(
        [*command, str(resolv), *node_command("dns-lookup.mjs", ["dual.test", "alias.test"])],
        cwd=NODE_DIR,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    for name in ("dual.test", "alias.test"):
        assert answers[name] == {"ok": [{"address": "127.0.0.1", "family": 4}]}, answers
    asked = {(q.qtype, q.name) for q in upstream.queries()}
    assert ("AAAA", "dual.test") in asked  # getaddrinfo asked for AAAA and got none


def test_a_tcp_client_announcing_an_oversized_query_is_closed(
    listener: tuple[ProxyProcess, int],
) -> None:
    """A query is a few hundred bytes; a length prefix of 60,000 is not a question (it would
    make the listener hold 64 KiB per pending query): the connection closes unanswered,
    and the next client is served."""
    _, port = listener
    with socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT) as sock:
        sock.sendall(struct.pack("!H", 60_000) + b"\0" * 4096)
        assert sock.recv(1) == b""  # closed, no answer
    assert _tcp(port, "v4.test", "A").rcode() == dns.rcode.NOERROR


def test_dns_answers_before_the_proxy_says_ready(listener: tuple[ProxyProcess, int]) -> None:
    """/readyz turns ready with the proxy listeners: the DNS listener is bound before them,
    so an app started on readiness finds its DNS answering."""
    proxy, _ = listener
    lines = proxy.logs()
    dns_at = next(i for i, line in enumerate(lines) if "dns listening on" in line)
    ready_at = next(i for i, line in enumerate(lines) if line.rstrip().endswith(" ready"))
    listening_at = next(i for i, line in enumerate(lines) if " ipv4proxy listening on" in line)
    assert dns_at < listening_at < ready_at
