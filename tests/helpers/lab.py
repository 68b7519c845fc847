"""The lab: the production failure rebuilt with network namespaces, veth and nftables.

Two hosts, each a network namespace joined by one veth pair (needs root):

- **gateway** (``GATEWAY_V4``, and ``GATEWAY_V6`` on a prefix of its own): IPv4
  connectivity only. It holds an IPv6 address, so resolvers still return AAAA records
  (getaddrinfo's AI_ADDRCONFIG), but it has no route to the service's IPv6 prefix, so a
  connect() there fails at once with ENETUNREACH. Its /etc/netns resolv.conf points at the
  lab DNS server (``CLIENT_DNS``); `resolving_through` points it elsewhere for a while (at
  ipv4proxy's DNS listener on the gateway's 127.0.0.1, for DNS mode). Clients run here
  under their own group (``CLIENT_GID``), the proxy under another (``PROXY_GID``), the
  DNS-mode proxy under a third (``DNS_PROXY_GID``), so nftables can tell their packets
  apart.
- **service**: dual-stack. One program (`helpers.lab_service`) serves DNS on
  ``CLIENT_DNS`` (for clients) and ``PROXY_DNS`` (given to the proxy with --nameserver),
  answering in a fixed order, and HTTPS with a WebSocket echo and a media file on port 443
  of every address, under a CA the lab makes.

nftables, on the service: the first SYN of each new IPv4 connection to port 443 is dropped,
so every IPv4 handshake takes about a second (the kernel retransmits the SYN after 1 s;
netem is not available everywhere); the failover name's first two addresses drop
everything. On the gateway: named counters of the client group's DNS queries and SYNs to
the service (a client that bypasses the proxy; IPv6 SYNs also on their own), of the client
group's DNS queries to anything but the gateway's loopback (DNS mode: clients ask only
the local listener), of the proxy group's IPv4 and IPv6 packets and DNS traffic, and of
the DNS-mode proxy group's DNS queries and IPv6 packets.

The broken-IPv6 mode (`set_broken_ipv6`) gives the gateway a route to the service's IPv6
prefix while the service silently drops IPv6 SYNs: the path where a dual-stack client hangs.

Hygiene: names carry the PID of the run; `teardown()` stops the lab's processes by PID,
deletes both namespaces (their veth ends and nftables tables go with them) and the
/etc/netns directory, and says what it could not remove. `sweep_stale()` removes what a
killed run left behind (its PID no longer alive).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from helpers.dnsmasq import ISOLATED
from helpers.net import client_env
from helpers.process import stop_process
from helpers.programs import run_program

__all__ = [
    "AAAA_FILTER_DNS",
    "BLACKHOLES",
    "CLIENT_DNS",
    "CLIENT_GID",
    "DNS_LISTEN",
    "DNS_MODE_NAME",
    "DNS_PROXY_GID",
    "GATEWAY_V4",
    "GOOD_MULTI",
    "LAB_CONNECT_TIMEOUT",
    "LAB_NAMES",
    "LAN_V4",
    "MEDIA_BLOCKS",
    "MULTI_ADDRESSES",
    "ORDER_NAMES",
    "PROXY_DNS",
    "PROXY_GID",
    "SERVICE_V4",
    "SERVICE_V6",
    "BypassCheck",
    "Counters",
    "DnsQuery",
    "Lab",
    "LabUnavailable",
    "blackhole_counter",
    "sweep_stale",
]

TESTS_DIR = Path(__file__).resolve().parents[1]

# Addresses live only inside the lab's namespaces: 198.18.0.0/15 (RFC 2544, benchmarking)
# and a ULA prefix (fd00::/8).
LAN_V4 = ipaddress.ip_network("198.18.0.0/24")
GATEWAY_V4 = "198.18.0.1"
SERVICE_V4 = "198.18.0.2"
MULTI_ADDRESSES = ("198.18.0.10", "198.18.0.11", "198.18.0.12")
BLACKHOLES = MULTI_ADDRESSES[:2]
CLIENT_DNS = "198.18.0.53"
PROXY_DNS = "198.18.0.54"
# The gateway's own IPv6 prefix (on-link only) and the service's, which it cannot reach.
GATEWAY_V6 = "fd00:4:2::1"
SERVICE_LINK_V6 = "fd00:4:2::2"
SERVICE_V6_NET = ipaddress.ip_network("fd00:4:1::/64")
SERVICE_V6 = "fd00:4:1::2"
# Group ids of the lab's clients and of the proxy; no name needs to exist for them.
CLIENT_GID = 47301
PROXY_GID = 47302
DNS_PROXY_GID = 47303
# DNS mode's listener, where a pod's or a VM's resolv.conf would point: the gateway's own
# loopback, port 53 (resolv.conf names no port).
DNS_LISTEN = "127.0.0.1:53"
# A name only the DNS-mode evidence case asks for, so its questions are all the listener's.
DNS_MODE_NAME = "dnsmode.lab.test"
# Shaping (docs/dns-mode.md, "Names with several A records"): three A records, the two
# black holes and the good (slow) address, the good one listed first, in the middle, last.
GOOD_MULTI = MULTI_ADDRESSES[2]
ORDER_NAMES: dict[str, str] = {
    "first": "order-first.lab.test",
    "middle": "order-middle.lab.test",
    "last": "order-last.lab.test",
}
_ORDERS = {
    "first": [GOOD_MULTI, *BLACKHOLES],
    "middle": [BLACKHOLES[0], GOOD_MULTI, BLACKHOLES[1]],
    "last": [*BLACKHOLES, GOOD_MULTI],
}
# A plain AAAA filter for comparison (dnsmasq --filter-AAAA) on the gateway's loopback, where
# a resolv.conf can name it (port 53); it forwards to the lab DNS server.
AAAA_FILTER_DNS = "127.0.0.2"
# The proxy's connect timeout in the lab, given explicitly (the failover case asserts that
# the third address wins well before it); 10 s is also the product's default.
LAB_CONNECT_TIMEOUT = 10.0
# The media file: several MiB, more than any buffer on the path.
MEDIA_BLOCKS = 8

# name -> {"A": [...], "AAAA": [...]}, answered in this order.
LAB_NAMES: dict[str, dict[str, list[str]]] = {
    "web.lab.test": {"A": [SERVICE_V4], "AAAA": [SERVICE_V6]},
    "media.lab.test": {"A": [SERVICE_V4], "AAAA": [SERVICE_V6]},
    "multi.lab.test": {"A": list(MULTI_ADDRESSES), "AAAA": [SERVICE_V6]},
    "v6only.lab.test": {"AAAA": [SERVICE_V6]},
    DNS_MODE_NAME: {"A": [SERVICE_V4], "AAAA": [SERVICE_V6]},
    **{ORDER_NAMES[o]: {"A": a, "AAAA": [SERVICE_V6]} for o, a in _ORDERS.items()},
}

_PREFIX = "ipv4proxy-lab-"
_STALE = re.compile(rf"^{re.escape(_PREFIX)}(\d+)-[0-9a-f]+-(gw|svc)$")
_NFT_TABLE = "ipv4proxy_lab"
# Bounds: a setup command, the service's start (a client program: programs.PROGRAM_SECONDS).
_COMMAND_SECONDS = 15.0
_READY_SECONDS = 20.0
# Set entries that let a retransmitted SYN through live this long: past the 1 s
# retransmission, short enough that a reused source port meets a fresh drop.
_SEEN_TIMEOUT = "5s"


class LabUnavailable(RuntimeError):
    """The lab cannot be built here (a tool or a kernel feature is missing); says which."""


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise LabUnavailable(f"{name} is not installed")
    return found


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run a setup command; raise RuntimeError with its stderr when it fails."""
    result = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=_COMMAND_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_pids(ip: str, name: str) -> list[int]:
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        return [int(pid) for pid in _run([ip, "netns", "pids", name]).split()]
    return []


def _remove_namespace(ip: str, name: str) -> list[str]:
    """Kill what still runs in a lab namespace (by PID), delete it and its /etc/netns files."""
    problems: list[str] = []
    for pid in _netns_pids(ip, name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if name in _run([ip, "netns", "list"]).split():
        try:
            _run([ip, "netns", "delete", name])
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            problems.append(str(exc))
    etc = Path("/etc/netns") / name
    if etc.exists():
        shutil.rmtree(etc, ignore_errors=True)
        if etc.exists():
            problems.append(f"could not remove {etc}")
    return problems


def sweep_stale() -> list[str]:
    """Remove lab namespaces whose run (the PID in their name) is gone; return their names."""
    ip = _tool("ip")
    removed: list[str] = []
    for line in _run([ip, "netns", "list"]).splitlines():
        name = line.split(" ", 1)[0]
        match = _STALE.match(name)
        if match and not _alive(int(match[1])):
            _remove_namespace(ip, name)
            removed.append(name)
    if removed:
        with contextlib.suppress(OSError):
            Path("/etc/netns").rmdir()  # only if empty: a dead run may have created it
    return removed


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """One question the lab DNS server received, and the address it was sent to."""

    server: str
    client: str
    qtype: str
    name: str


@dataclass(frozen=True, slots=True)
class Counters:
    """Packet counts of the lab's nftables counters on one host, by counter name."""

    packets: Mapping[str, int]

    def __sub__(self, other: Counters) -> Counters:
        return Counters({k: v - other.packets.get(k, 0) for k, v in self.packets.items()})

    def __getitem__(self, name: str) -> int:
        return self.packets[name]


def _gateway_rules() -> str:
    client = f"meta skgid {CLIENT_GID}"
    proxy = f"meta skgid {PROXY_GID}"
    dns_proxy = f"meta skgid {DNS_PROXY_GID}"
    syn = "tcp flags & (syn | ack) == syn"
    return f"""
table inet {_NFT_TABLE} {{
    counter client_dns {{}}
    counter client_syn {{}}
    counter proxy_ipv4_out {{}}
    counter proxy_ipv6 {{}}
    counter proxy_dns {{}}
    counter proxy_dns_elsewhere {{}}
    counter client_dns_remote {{}}
    counter client_syn6 {{}}
    counter dns_proxy_dns {{}}
    counter dns_proxy_ipv6 {{}}
    chain output {{
        type filter hook output priority filter; policy accept;
        {client} udp dport 53 counter name client_dns
        {client} tcp dport 53 counter name client_dns
        {client} meta l4proto {{ tcp, udp }} th dport 53 ip daddr != 127.0.0.0/8 \\
            counter name client_dns_remote
        {client} meta l4proto {{ tcp, udp }} th dport 53 meta nfproto ipv6 \\
            counter name client_dns_remote
        {client} ip daddr {LAN_V4} {syn} counter name client_syn
        {client} ip6 daddr {SERVICE_V6_NET} {syn} counter name client_syn
        {client} ip6 daddr {SERVICE_V6_NET} {syn} counter name client_syn6
        {dns_proxy} meta l4proto {{ tcp, udp }} th dport 53 counter name dns_proxy_dns
        {dns_proxy} meta nfproto ipv6 counter name dns_proxy_ipv6
        {proxy} meta nfproto ipv6 counter name proxy_ipv6
        {proxy} meta nfproto ipv4 oifname != "lo" counter name proxy_ipv4_out
        {proxy} udp dport 53 counter name proxy_dns
        {proxy} tcp dport 53 counter name proxy_dns
        {proxy} meta l4proto {{ tcp, udp }} th dport 53 ip daddr != {PROXY_DNS} \\
            counter name proxy_dns_elsewhere
    }}
}}
"""


def blackhole_counter(address: str) -> str:
    """The service's nftables counter of packets dropped for black-holed `address`."""
    return "blackholed_" + address.replace(".", "_")


def _service_rules() -> str:
    syn = "tcp dport 443 tcp flags & (syn | ack) == syn"
    counters = "\n    ".join(f"counter {blackhole_counter(a)} {{}}" for a in BLACKHOLES)
    drops = "\n        ".join(
        f"ip daddr {a} counter name {blackhole_counter(a)} drop" for a in BLACKHOLES
    )
    first_syn = f"ip daddr {LAN_V4} {syn}"
    return f"""
table inet {_NFT_TABLE} {{
    set seen4 {{ type ipv4_addr . inet_service; flags timeout; timeout {_SEEN_TIMEOUT}; }}
    counter first_syn_dropped {{}}
    counter ipv6_syn_dropped {{}}
    {counters}
    chain broken_ipv6 {{
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        {drops}
        meta nfproto ipv6 {syn} jump broken_ipv6
        {first_syn} ip saddr . tcp sport @seen4 accept
        {first_syn} add @seen4 {{ ip saddr . tcp sport }} counter name first_syn_dropped drop
    }}
}}
"""


class BypassCheck:
    """The client group's direct DNS queries and SYNs to the service since it was made."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self._before = lab.counters(lab.gateway)

    def verify(self) -> None:
        """Raise AssertionError when a client resolved or connected by itself meanwhile."""
        seen = self._lab.counters(self._lab.gateway) - self._before
        assert (seen["client_dns"], seen["client_syn"]) == (0, 0), (
            f"a client bypassed the proxy: {seen['client_dns']} direct DNS packets, "
            f"{seen['client_syn']} direct SYNs to the service"
        )


@dataclass
class Lab:
    """One lab: `build()` it, use it, `teardown()` it (idempotent; also after a failed build)."""

    workdir: Path
    run_id: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(3)}")
    gateway: str = field(init=False)
    service: str = field(init=False)
    ca_file: Path = field(init=False)
    query_log: Path = field(init=False)
    _ip: str = field(init=False, default="")
    _processes: list[subprocess.Popen[bytes]] = field(init=False, default_factory=list)
    _built: list[str] = field(init=False, default_factory=list)
    _made_etc_netns: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.gateway = f"{_PREFIX}{self.run_id}-gw"
        self.service = f"{_PREFIX}{self.run_id}-svc"
        self.ca_file = self.workdir / "ca.pem"
        self.query_log = self.workdir / "dns-queries.jsonl"

    # --- building --------------------------------------------------------------------------

    def build(self) -> None:
        """Create both hosts, their addresses, routes, rules, DNS and TLS servers."""
        self._ip = _tool("ip")
        nft = _tool("nft")
        _tool("setpriv")
        try:
            _run([self._ip, "netns", "add", self.gateway])
        except RuntimeError as exc:
            raise LabUnavailable(f"cannot create a network namespace: {exc}") from exc
        self._built.append(self.gateway)
        _run([self._ip, "netns", "add", self.service])
        self._built.append(self.service)
        ip_gw = [self._ip, "-n", self.gateway]
        ip_svc = [self._ip, "-n", self.service]
        _run(
            [
                self._ip,
                "link",
                "add",
                "eth0",
                "netns",
                self.gateway,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.service,
            ]
        )
        for ip in (ip_gw, ip_svc):
            _run([*ip, "link", "set", "lo", "up"])
            _run([*ip, "link", "set", "eth0", "up"])
        _run([*ip_gw, "addr", "add", f"{GATEWAY_V4}/{LAN_V4.prefixlen}", "dev", "eth0"])
        _run([*ip_gw, "-6", "addr", "add", f"{GATEWAY_V6}/64", "dev", "eth0", "nodad"])
        service_v4 = (SERVICE_V4, *MULTI_ADDRESSES, CLIENT_DNS, PROXY_DNS)
        for address in service_v4:
            _run([*ip_svc, "addr", "add", f"{address}/{LAN_V4.prefixlen}", "dev", "eth0"])
        for address in (SERVICE_LINK_V6, SERVICE_V6):
            _run([*ip_svc, "-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad"])
        try:
            for host, rules in ((self.gateway, _gateway_rules()), (self.service, _service_rules())):
                _run([self._ip, "netns", "exec", host, nft, "-f", "-"], stdin=rules)
        except RuntimeError as exc:
            raise LabUnavailable(f"cannot load the nftables rules: {exc}") from exc
        self._write_resolv_conf()
        self._start_service()

    def _write_resolv_conf(self, nameserver: str = CLIENT_DNS) -> None:
        etc_netns = Path("/etc/netns")
        if not etc_netns.exists():
            etc_netns.mkdir(mode=0o755)
            self._made_etc_netns = True
        directory = etc_netns / self.gateway
        directory.mkdir(mode=0o755, exist_ok=True)
        (directory / "resolv.conf").write_text(
            f"# ipv4proxy lab {self.run_id}\n"
            f"nameserver {nameserver}\n"
            "options timeout:2 attempts:2\n"
        )

    @contextlib.contextmanager
    def resolving_through(self, nameserver: str) -> Iterator[None]:
        """Programs started on the gateway meanwhile resolve through `nameserver` (its
        resolv.conf, which ``ip netns exec`` mounts at each start); then CLIENT_DNS again."""
        self._write_resolv_conf(nameserver)
        try:
            yield
        finally:
            self._write_resolv_conf()

    def _start_service(self) -> None:
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert = ca.issue_cert(*LAB_NAMES)
        cert_file, key_file = self.workdir / "service.pem", self.workdir / "service.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(cert_file), append=True)
        cert.private_key_pem.write_to_path(str(key_file))
        config = self.workdir / "service.json"
        config.write_text(
            json.dumps(
                {
                    "cert_file": str(cert_file),
                    "key_file": str(key_file),
                    "media_blocks": MEDIA_BLOCKS,
                    "query_log": str(self.query_log),
                    "dns_addresses": [CLIENT_DNS, PROXY_DNS],
                    "zone": LAB_NAMES,
                }
            )
        )
        stderr = (self.workdir / "service.stderr").open("wb")
        process = subprocess.Popen(
            [
                self._ip,
                "netns",
                "exec",
                self.service,
                sys.executable,
                "-m",
                "helpers.lab_service",
                str(config),
            ],
            cwd=TESTS_DIR,
            env=client_env({"PYTHONPATH": str(TESTS_DIR), "PYTHONDONTWRITEBYTECODE": "1"}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        stderr.close()
        self._processes.append(process)
        if not self._wait_ready(process):
            raise RuntimeError(
                "the lab service did not start: "
                + (self.workdir / "service.stderr").read_text(errors="replace")
            )

    @staticmethod
    def _wait_ready(process: subprocess.Popen[bytes]) -> bool:
        """Wait, bounded, for the service's ``ready`` line."""
        assert process.stdout is not None
        deadline = time.monotonic() + _READY_SECONDS
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while (remaining := deadline - time.monotonic()) > 0:
                if not selector.select(remaining):
                    return False
                line = process.stdout.readline()
                if not line:
                    return False  # exited
                if line.strip() == b"ready":
                    return True
        return False

    def start_aaaa_filter(self) -> None:
        """Start dnsmasq on the gateway at ``AAAA_FILTER_DNS``:53 with ``--filter-AAAA``,
        forwarding to the lab DNS server, no cache (each answer in the server's order);
        stopped by `teardown()`. Raises LabUnavailable when it does not start."""
        log = self.workdir / "aaaa-filter.log"
        command = [
            *self.on_gateway(None),
            _tool("dnsmasq"),
            *ISOLATED,
            f"--listen-address={AAAA_FILTER_DNS}",
            "--port=53",
            f"--server={CLIENT_DNS}",
            "--filter-AAAA",
            "--cache-size=0",
            f"--log-facility={log}",
            "--user=root",
        ]
        stderr = (self.workdir / "aaaa-filter.stderr").open("wb")
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        stderr.close()
        self._processes.append(process)
        deadline = time.monotonic() + _COMMAND_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            if log.exists() and "started" in log.read_text(errors="replace"):
                return
            time.sleep(0.05)
        problem = (self.workdir / "aaaa-filter.stderr").read_text(errors="replace")
        raise LabUnavailable(f"dnsmasq --filter-AAAA did not start: {problem.strip()}")

    @property
    def pids(self) -> list[int]:
        """PIDs of the processes the lab itself started (the service host's program)."""
        return [process.pid for process in self._processes]

    # --- tearing down ----------------------------------------------------------------------

    def teardown(self) -> None:
        """Remove everything this lab made; raise RuntimeError naming anything left over."""
        for process in reversed(self._processes):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                stop_process(process)
            if process.stdout is not None:
                process.stdout.close()
        self._processes.clear()
        if not self._ip:
            return
        problems: list[str] = []
        for name in reversed(self._built):
            problems += _remove_namespace(self._ip, name)
        self._built.clear()
        if self._made_etc_netns:
            with contextlib.suppress(OSError):
                Path("/etc/netns").rmdir()  # only if empty: someone else may use it now
        left = [n for n in (self.gateway, self.service) if n in _run([self._ip, "netns", "list"])]
        if left or problems:
            raise RuntimeError(f"lab teardown left {left}: {problems}")

    def service_crash_lines(self) -> list[str]:
        """Lines of the service's stderr that show an error it did not handle."""
        path = self.workdir / "service.stderr"
        if not path.exists():
            return []
        markers = ("Traceback (most recent call last)", "Exception in callback", "Error handling")
        lines = path.read_text(errors="replace").splitlines()
        return [line for line in lines if any(marker in line for marker in markers)]

    # --- running things on the hosts -------------------------------------------------------

    def on_gateway(self, gid: int | None) -> list[str]:
        """The command prefix that runs a program on the gateway, under group `gid`.

        ``ip netns exec`` and ``setpriv`` both exec, so the PID is the program's own.
        """
        prefix = [self._ip, "netns", "exec", self.gateway]
        if gid is not None:
            prefix += [_tool("setpriv"), f"--regid={gid}", "--clear-groups", "--"]
        return prefix

    def run_gateway(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        gid: int | None = CLIENT_GID,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a client program on the gateway (as the client group), bounded in time."""
        return run_program([*self.on_gateway(gid), *argv], env, cwd)

    def python_client(
        self, args: Sequence[str], env: Mapping[str, str] | None = None, *, gid: int | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `helpers.lab_client` on the gateway (as the client group unless `gid`)."""
        return self.run_gateway(
            [sys.executable, "-m", "helpers.lab_client", *args],
            {"PYTHONPATH": str(TESTS_DIR), "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
            gid=CLIENT_GID if gid is None else gid,
            cwd=TESTS_DIR,
        )

    # --- evidence --------------------------------------------------------------------------

    def counters(self, host: str) -> Counters:
        """The nftables counters of `host` (``self.gateway`` or ``self.service``), now."""
        out = _run([self._ip, "netns", "exec", host, _tool("nft"), "-j", "list", "counters"])
        packets: dict[str, int] = {}
        for item in json.loads(out).get("nftables", []):
            counter = item.get("counter")
            if counter and counter.get("table") == _NFT_TABLE:
                packets[str(counter["name"])] = int(counter["packets"])
        return Counters(packets)

    def bypass_check(self) -> BypassCheck:
        """Start watching for clients going around the proxy; call `verify()` at the end."""
        return BypassCheck(self)

    @contextlib.contextmanager
    def no_bypass(self) -> Iterator[None]:
        """Assert that clients sent no DNS query and no SYN to the service themselves.

        The body is a proxied case: everything must go through the proxy on 127.0.0.1.
        """
        check = self.bypass_check()
        yield
        check.verify()

    def dns_queries(self) -> list[DnsQuery]:
        """Every question the lab DNS server has received, in order."""
        if not self.query_log.exists():
            return []
        found: list[DnsQuery] = []
        for line in self.query_log.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            found.append(DnsQuery(item["server"], item["client"], item["qtype"], item["name"]))
        return found

    def set_broken_ipv6(self, broken: bool) -> None:
        """Give the gateway a route to the service's IPv6 prefix, which drops IPv6 SYNs
        (`broken`), or take both away (the normal, IPv4-only gateway)."""
        nft = [self._ip, "netns", "exec", self.service, _tool("nft")]
        route = [str(SERVICE_V6_NET), "via", SERVICE_LINK_V6, "dev", "eth0"]
        if broken:
            _run(
                [
                    *nft,
                    "add",
                    "rule",
                    "inet",
                    _NFT_TABLE,
                    "broken_ipv6",
                    "counter",
                    "name",
                    "ipv6_syn_dropped",
                    "drop",
                ]
            )
            _run([self._ip, "-n", self.gateway, "-6", "route", "add", *route])
        else:
            _run([self._ip, "-n", self.gateway, "-6", "route", "del", *route])
            _run([*nft, "flush", "chain", "inet", _NFT_TABLE, "broken_ipv6"])
