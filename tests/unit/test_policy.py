"""The policy, decision by decision: clients, credentials, ports, domains, addresses."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipv4proxy.cli import build_policy, parse
from ipv4proxy.config import load
from ipv4proxy.errors import ConfigError, Failure, PolicyDenied
from ipv4proxy.policy import SPECIAL_RANGES, Policy, require
from ipv4proxy.protocols import Destination, HostKind, ProtocolKind
from ipv4proxy.rules import domain_matches, local_addresses, parse_ports, parse_users

NAME, IPV4 = HostKind.NAME, HostKind.IPV4
REPO = Path(__file__).resolve().parents[2]


def policy(text: str = "", users: list[tuple[str, str]] | None = None) -> Policy:
    return Policy(load(text), users or [])


# --- where clients may go: ports and domains --------------------------------------------


@pytest.mark.parametrize(("port", "allowed"), [(80, True), (443, True), (5222, True), (22, False)])
def test_default_ports(port: int, allowed: bool) -> None:
    decision = policy().destination(Destination("web.whatsapp.com", port, NAME))
    assert decision.allowed is allowed
    if not allowed:
        assert decision.rule == "policy.ports"
        assert f"port {port} is not in policy.ports" in decision.reason


def test_port_ranges() -> None:
    assert parse_ports(["80", "8000-8002"]) == {80, 8000, 8001, 8002}
    p = policy("policy: {ports: ['8000-8100']}")
    assert p.destination(Destination("a.example", 8050, NAME)).allowed
    assert not p.destination(Destination("a.example", 443, NAME)).allowed


@pytest.mark.parametrize(
    ("name", "pattern", "matches"),
    [
        ("whatsapp.net", "whatsapp.net", True),
        ("g.whatsapp.net", "whatsapp.net", False),
        ("g.whatsapp.net", "*.whatsapp.net", True),
        ("a.b.whatsapp.net", "*.whatsapp.net", True),
        ("whatsapp.net", "*.whatsapp.net", False),
        ("evilwhatsapp.net", "*.whatsapp.net", False),
        ("whatsapp.net.evil.com", "*.whatsapp.net", False),
        ("mmg.whatsapp.net", "MMG.WhatsApp.net.", True),
    ],
)
def test_domain_patterns(name: str, pattern: str, matches: bool) -> None:
    assert domain_matches(name, pattern) is matches


def test_allow_and_deny_domains() -> None:
    p = policy(
        "policy: {allow_domains: [whatsapp.net, '*.whatsapp.net'],"
        " deny_domains: [bad.whatsapp.net]}"
    )
    assert p.destination(Destination("g.whatsapp.net", 443, NAME)).allowed
    denied = p.destination(Destination("bad.whatsapp.net", 443, NAME))
    assert (denied.allowed, denied.rule) == (False, "policy.deny_domains[0] bad.whatsapp.net")
    other = p.destination(Destination("example.com", 443, NAME))
    assert (other.allowed, other.rule) == (False, "policy.allow_domains")
    # An IPv4 literal is no name: with a domain allowlist it needs an allow_cidrs entry.
    literal = p.destination(Destination("157.240.1.1", 443, IPV4))
    assert (literal.allowed, literal.rule) == (False, "policy.allow_domains")
    opened = policy("policy: {allow_domains: [whatsapp.net], allow_cidrs: [157.240.0.0/16]}")
    assert opened.destination(Destination("157.240.1.1", 443, IPV4)).allowed


# --- where clients may go: resolved addresses -------------------------------------------


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "special range loopback 127.0.0.0/8"),
        ("127.255.0.9", "special range loopback 127.0.0.0/8"),
        ("169.254.169.254", "special range link-local (cloud metadata) 169.254.0.0/16"),
        ("0.0.0.0", "special range this-network 0.0.0.0/8"),
        ("0.1.2.3", "special range this-network 0.0.0.0/8"),
        ("224.0.0.1", "special range multicast 224.0.0.0/4"),
        ("239.255.255.250", "special range multicast 224.0.0.0/4"),
        ("240.0.0.1", "special range reserved 240.0.0.0/4"),
        ("255.255.255.255", "special range reserved 240.0.0.0/4"),
    ],
)
def test_special_ranges_refused_by_default(address: str, rule: str) -> None:
    decision = policy().address(address, 443)
    assert (decision.allowed, decision.rule) == (False, rule)
    # Says how to open it: the key, its flag and its variable.
    assert "policy.open_cidrs (--policy-open-cidrs, IPV4PROXY_POLICY_OPEN_CIDRS)" in decision.reason
    assert decision.error().failure is Failure.DENIED


@pytest.mark.parametrize("opened", ["127.0.0.0/8", "127.0.0.1/32"])
def test_opening_a_special_range_changes_nothing_else(opened: str) -> None:
    """open_cidrs lifts one special range's refusal; public addresses stay allowed, the other
    special ranges and deny_cidrs stay refused (allow_cidrs would have made an allow-list)."""
    opened_policy = policy(f"policy: {{open_cidrs: [{opened}], deny_cidrs: [10.0.0.0/8]}}")
    assert opened_policy.address("127.0.0.1", 8000).allowed
    assert opened_policy.address("57.144.151.32", 443).allowed  # public: still allowed
    assert not opened_policy.address("169.254.169.254", 80).allowed
    assert not opened_policy.address("0.0.0.0", 80).allowed
    assert not opened_policy.address("10.1.2.3", 80).allowed
    allow_list = policy(f"policy: {{allow_cidrs: [{opened}]}}")
    assert not allow_list.address("57.144.151.32", 443).allowed


@pytest.mark.parametrize("address", ["10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1"])
def test_private_ranges_allowed_by_default_and_deniable(address: str) -> None:
    assert policy().address(address, 443).allowed
    denied = policy(
        "policy: {deny_cidrs: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10]}"
    ).address(address, 443)
    assert not denied.allowed
    assert denied.rule.startswith("policy.deny_cidrs[")


def test_allow_cidrs_opens_a_special_range_and_restricts_the_rest() -> None:
    p = policy("policy: {allow_cidrs: [127.0.0.0/8]}")
    assert p.address("127.0.0.1", 8080).allowed
    assert not p.address("169.254.169.254", 80).allowed
    outside = p.address("8.8.8.8", 443)
    assert (outside.allowed, outside.rule) == (False, "policy.allow_cidrs")


def test_deny_beats_allow() -> None:
    p = policy("policy: {allow_cidrs: [10.0.0.0/8], deny_cidrs: [10.9.0.0/16]}")
    assert p.address("10.1.0.1", 443).allowed
    assert p.address("10.9.0.1", 443).rule == "policy.deny_cidrs[0] 10.9.0.0/16"


def test_own_listen_address_refused_even_when_loopback_is_open() -> None:
    p = policy("policy: {allow_cidrs: [127.0.0.0/8]}")
    p.listening_on([("127.0.0.1", 3128)])
    assert p.address("127.0.0.1", 3128).rule == "own listen address"
    assert p.address("127.0.0.1", 3129).allowed
    wildcard = policy("policy: {allow_cidrs: [10.0.0.0/8]}")
    wildcard.listening_on([("0.0.0.0", 3128)], local={"10.0.0.5"})
    assert not wildcard.address("10.0.0.5", 3128).allowed
    assert wildcard.address("10.0.0.6", 3128).allowed  # another host's proxy: no loop


@pytest.mark.parametrize(
    ("address", "port"),
    [
        ("0.0.0.0", 3128),  # "this host" in a destination: the kernel connects to itself
        ("0.1.2.3", 3128),
        ("127.0.0.1", 3128),
        ("127.9.9.9", 3128),  # all of 127/8 reaches a wildcard or loopback listener
        ("192.0.2.2", 3128),  # an interface address
        ("127.0.0.1", 9128),  # the admin listener: /metrics through the proxy
        ("192.0.2.2", 9128),
    ],
)
def test_a_loop_is_refused_even_when_every_address_is_open(address: str, port: int) -> None:
    p = policy("policy: {allow_cidrs: [0.0.0.0/0], ports: ['1-65535']}")
    p.listening_on([("0.0.0.0", 3128), ("127.0.0.1", 9128)], local={"127.0.0.1", "192.0.2.2"})
    decision = p.address(address, port)
    assert (decision.allowed, decision.rule) == (False, "own listen address")
    assert (
        decision.reason == f"{address}:{port} reaches an own listen address of this proxy (a loop)"
    )
    assert p.address(address, 3129).allowed  # another port of this host: opened on purpose


def test_a_name_is_dialed_only_at_its_allowed_addresses() -> None:
    p = policy("policy: {deny_cidrs: [10.0.0.0/8]}")
    allowed, decision = p.addresses(("10.0.0.1", "157.240.1.1", "127.0.0.1"), 443, "x.example")
    assert allowed == ("157.240.1.1",)
    assert decision.allowed
    none, refused = p.addresses(("127.0.0.1", "10.0.0.1"), 443, "x.example")
    assert none == ()
    assert refused.rule == "special range loopback 127.0.0.0/8"
    assert "x.example:443 resolves only to refused addresses (127.0.0.1, 10.0.0.1)" in (
        refused.reason
    )
    with pytest.raises(PolicyDenied) as info:
        require(refused)
    assert info.value.failure is Failure.DENIED


@given(st.ip_addresses(v=4))
def test_every_special_address_is_refused_by_default(ip: ipaddress.IPv4Address) -> None:
    decision = policy().address(str(ip), 443)
    special = any(ip in network for _, network in SPECIAL_RANGES)
    assert decision.allowed is not special
    if special:
        assert decision.rule.startswith("special range")


@given(st.lists(st.ip_addresses(v=4), min_size=1, max_size=8), st.integers(1, 65535))
def test_the_dialer_never_gets_a_refused_address(
    ips: list[ipaddress.IPv4Address], port: int
) -> None:
    p = policy("policy: {deny_cidrs: [10.0.0.0/8, 192.168.0.0/16]}")
    addresses = tuple(str(ip) for ip in ips)
    allowed, decision = p.addresses(addresses, port, "n.example")
    assert all(p.address(a, port).allowed for a in allowed)
    assert [a for a in addresses if p.address(a, port).allowed] == list(allowed)
    assert decision.allowed is bool(allowed)


# --- who may connect ----------------------------------------------------------------------


def test_client_cidrs_per_listener() -> None:
    p = policy("listeners: [{host: 0.0.0.0, port: 3128, clients: [10.0.0.0/8]}, '127.0.0.1:3129']")
    assert p.client(0, "10.1.2.3").allowed
    refused = p.client(0, "192.168.1.1")
    assert (refused.allowed, refused.rule) == (False, "listeners[0].clients")
    assert refused.reason == "client 192.168.1.1 is not allowed by listeners[0].clients"
    assert p.client(1, "192.168.1.1").allowed  # the loopback listener has no list
    assert not p.client(0, "::1").allowed


def test_credentials() -> None:
    p = policy("auth: {users: ['alice:s3cret:with:colons']}", [("bob", "pw")])
    assert p.auth_required
    assert p.credentials_ok(("alice", "s3cret:with:colons"))
    assert p.credentials_ok(("bob", "pw"))
    assert not p.credentials_ok(("alice", "pw"))
    assert not p.credentials_ok(("bob", "s3cret:with:colons"))
    assert not p.credentials_ok(None)
    missing = p.credentials(None)
    assert (missing.allowed, missing.failure) == (False, Failure.AUTH_REQUIRED)
    wrong = p.credentials(("alice", "nope"))
    assert "alice" not in wrong.reason
    assert "nope" not in wrong.reason
    assert wrong.error().failure.http_status == 407
    assert wrong.error().failure.socks5 == 0x02
    assert policy().credentials(None).allowed  # auth off: anyone


def test_socks4_is_refused_when_auth_is_required() -> None:
    """SOCKS4 has a user id but no password: with auth on it is refused, saying why."""
    p = policy("", [("bob", "")])
    refused = p.credentials(("bob", ""), protocol=ProtocolKind.SOCKS4A)
    assert (refused.allowed, refused.failure) == (False, Failure.AUTH_REQUIRED)
    assert "SOCKS4 cannot carry a password" in refused.reason
    assert (
        policy().credentials(None, protocol=ProtocolKind.SOCKS4).allowed
    )  # auth off: SOCKS4 is fine


@given(st.text(max_size=20), st.text(max_size=20))
def test_only_the_configured_pair_passes(user: str, password: str) -> None:
    p = policy("", [("u", "p")])
    assert p.credentials_ok((user, password)) is ((user, password) == ("u", "p"))


def test_users_file_and_errors_that_hide_the_secret(tmp_path: Path) -> None:
    assert parse_users("# comment\n\nalice:one\n bob:two \n") == [("alice", "one"), ("bob", "two")]
    good = tmp_path / "users"
    good.write_text("alice:one\n")
    config = parse(["--auth-users-file", str(good), "--listen", "0.0.0.0:0"], {})
    assert build_policy(config).credentials_ok(("alice", "one"))
    bad = tmp_path / "bad"
    bad.write_text("alice:one\nhunter2\n")
    with pytest.raises(ConfigError) as info:
        build_policy(parse(["--auth-users-file", str(bad)], {}))
    assert str(info.value).startswith("auth.users_file: ")
    assert "line 2" in str(info.value)
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^auth\.users_file: cannot read"):
        build_policy(parse(["--auth-users-file", str(tmp_path / "missing")], {}))
    empty = tmp_path / "empty"
    empty.write_text("# nobody\n")
    with pytest.raises(ConfigError, match=r"holds no USER:PASSWORD"):
        build_policy(parse(["--auth-users-file", str(empty)], {}))


def test_passwords_never_printed() -> None:
    config = load("auth: {users: ['alice:hunter2']}")
    assert "hunter2" not in repr(config)
    assert "alice" not in repr(config)
    assert "users=<1 hidden>" in repr(config)
    with pytest.raises(ConfigError) as info:
        load("auth: {users: ['hunter2']}")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError) as nested:
        load("auth: {users: [{x: hunter2}]}")
    assert "hunter2" not in str(nested.value)


# --- safe defaults at start ----------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "192.168.1.1", "example.com"])
def test_non_loopback_listener_needs_clients_or_auth(host: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(f"listeners: ['{host}:3128']")
    message = str(info.value)
    assert message.startswith(f"listeners[0]: {host} is not a loopback address")
    assert "listeners[0].clients" in message
    assert "auth.users_file" in message
    assert load(f"listeners: [{{host: '{host}', port: 1, clients: [10.0.0.0/8]}}]")
    assert load(f"listeners: ['{host}:1']\nauth: {{users: ['a:b']}}")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_listener_needs_nothing(host: str) -> None:
    assert load(f"listeners: [{{host: '{host}', port: 1}}]").listeners[0].host == host


def test_check_config_exits_2_for_an_open_listener(capsys: pytest.CaptureFixture[str]) -> None:
    from ipv4proxy.cli import main

    with pytest.raises(SystemExit) as info:
        main(["check-config", "--listen", "0.0.0.0:3128"])
    assert info.value.code == 2
    assert "listeners[0]: 0.0.0.0 is not a loopback address" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("policy: {ports: [0]}", r"^policy\.ports: expected ports within 1-65535"),
        ("policy: {ports: ['90-80']}", r"^policy\.ports: expected ports within"),
        ("policy: {ports: [http]}", r"^policy\.ports: expected a port or a range"),
        ("policy: {deny_cidrs: ['::1/128']}", r"^policy\.deny_cidrs: expected IPv4 networks"),
        ("policy: {allow_domains: ['a.*.b']}", r"^policy\.allow_domains: expected a domain"),
        ("listeners: [{host: 0.0.0.0, port: 1, clients: [x]}]", r"^listeners\[0\]\.clients:"),
        ("limits: {idle_timeout: 0}", r"^limits\.idle_timeout: expected a number > 0"),
        ("limits: {max_connections: 0}", r"^limits\.max_connections: expected a number > 0"),
        ("limits: {max_connections_per_client: -1}", r"^limits\.max_connections_per_client:"),
    ],
)
def test_policy_config_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(text)


def test_limits_defaults() -> None:
    limits = load().limits
    assert limits.max_head <= 64 * 1024  # "well below a megabyte"
    assert limits.idle_timeout >= 10 * 30  # ten Baileys keepalive intervals
    assert limits.max_connections == 10_000
    assert limits.max_connections_per_client == 0


def test_whatsapp_example_loads() -> None:
    text = (REPO / "deploy" / "examples" / "whatsapp-allowlist.yaml").read_text()
    config = load(text)
    p = Policy(config)
    for name in ("web.whatsapp.com", "g.whatsapp.net", "mmg.whatsapp.net", "whatsapp.net"):
        assert p.destination(Destination(name, 443, NAME)).allowed, name
    assert p.destination(Destination("g.whatsapp.net", 5222, NAME)).allowed
    assert not p.destination(Destination("example.com", 443, NAME)).allowed
    assert not p.destination(Destination("web.whatsapp.com", 22, NAME)).allowed
    assert not p.address("169.254.169.254", 443).allowed


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
           |-- 192.0.2.7
              /32 host LOCAL
"""


def test_local_addresses_are_the_host_local_entries_of_fib_trie() -> None:
    assert local_addresses(FIB_TRIE) == {"127.0.0.1", "192.0.2.2", "192.0.2.7"}
    assert local_addresses("") == frozenset()


def test_this_machines_own_addresses_are_read() -> None:
    """The file the server reads at start exists here and lists loopback at least."""
    assert "127.0.0.1" in local_addresses(Path("/proc/net/fib_trie").read_text())
