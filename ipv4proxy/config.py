"""The one configuration object: frozen, typed, validated, with the safe defaults embedded.

Sources, highest first: command-line flag > environment variable > YAML file > default.
Every key has all three spellings, derived from its path in the tree below:

    dialer.connect_timeout   YAML ``dialer: {connect_timeout: 10}``
                             env  ``IPV4PROXY_DIALER_CONNECT_TIMEOUT=10``
                             flag ``--dialer-connect-timeout 10``

Lists are YAML sequences, or comma-separated in env and flags. ``listeners`` also takes
plain ``HOST:PORT`` strings (flag ``--listen``, env ``IPV4PROXY_LISTEN``).

Rules: the tree is made of frozen, slotted dataclasses; a field's ``metadata`` holds its
help text and its check; unknown keys and bad values raise ConfigError naming the key's
path and what was expected (``listeners[0].port: expected 0-65535, got 70000``). Each
default says why it is that number. Nothing here reads files or the environment on its
own: callers pass the file's text and the environment in.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import typing
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ipv4proxy.errors import ConfigError
from ipv4proxy.protocols.dnsshape import ShapeRule, parse_rule
from ipv4proxy.rules import (
    Cidr,
    DomainPattern,
    cidr_problem,
    domain_problem,
    is_loopback_host,
    parse_cidrs,
    parse_domains,
    parse_ports,
    port_problem,
    user_problem,
)

__all__ = [
    "AdminConfig",
    "AuthConfig",
    "Config",
    "DialerConfig",
    "DnsConfig",
    "DrainConfig",
    "HttpConfig",
    "LimitsConfig",
    "Listener",
    "LogConfig",
    "ParentConfig",
    "ParentRules",
    "PolicyConfig",
    "PolicyRules",
    "ResolverConfig",
    "changed_keys",
    "env_name",
    "env_names",
    "flag_name",
    "iter_keys",
    "load",
    "parse_hostport",
    "redact_url",
    "to_yaml",
]

MASK = "********"

ENV_PREFIX = "IPV4PROXY_"
Check = Callable[[Any], str | None]


def _setting(default: Any, help: str, check: Check | None = None, *, secret: bool = False) -> Any:
    """A field with its help and check; a ``secret`` value never appears in a message, and
    is masked wherever the configuration is shown (``check-config``)."""
    metadata = {"help": help, "check": check, "secret": secret}
    if isinstance(default, list | tuple) or dataclasses.is_dataclass(default):
        value = default
        return field(default_factory=lambda: value, metadata=metadata)
    return field(default=default, metadata=metadata)


# The metadata of a field made from the settings of its dataclass once, in
# ``__post_init__`` (after `load` checked them): the typed values the code uses as they
# are. Declared ``field(init=False, repr=False, compare=False, metadata=_DERIVED)``: not a
# setting (no YAML key, variable or flag), not shown, not compared.
_DERIVED = {"derived": True}


def _positive(value: float) -> str | None:
    return None if value > 0 else "expected a number > 0"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "expected 0-65535"


def _in_flight(value: int) -> str | None:
    # The UDP pool has 4 sockets per server of 16384 pending IDs each; 10000 stays below.
    return None if 1 <= value <= 10000 else "expected 1-10000"


def _not_negative(value: float) -> str | None:
    return None if value >= 0 else "expected a number >= 0"


def _fraction(value: float) -> str | None:
    return None if 0 <= value < 1 else "expected a fraction from 0 up to (not including) 1"


class _OneOf:
    """A check for a word from a fixed list; `_build` takes it in any case (``DEBUG``)."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def __call__(self, value: str) -> str | None:
        return None if value in self.choices else f"expected one of {', '.join(self.choices)}"


def _one_of(*choices: str) -> Check:
    return _OneOf(*choices)


def parse_hostport(text: str, *, default_port: int | None = None, key: str = "") -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[V6]:PORT``); raises ConfigError naming ``key``."""
    where = f"{key}: " if key else ""
    host, sep, port_text = text.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        if default_port is None:
            raise ConfigError(f"{where}expected HOST:PORT, got {text!r}")
        host, port_text = text, str(default_port)
    host = host.removeprefix("[").removesuffix("]")
    if not host:
        raise ConfigError(f"{where}expected HOST:PORT, the host is missing in {text!r}")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{where}expected HOST:PORT with a port of 0-65535, got {text!r}")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class Listener:
    host: str = _setting("127.0.0.1", "address to accept clients on (loopback: only this host)")
    # 3128 is the port every proxy-aware tool guesses first (Squid's).
    port: int = _setting(3128, "TCP port; 0 picks a free one", _port)
    # Empty: any client that can reach the address. A non-loopback listener must then
    # require authentication (see _listeners_safe).
    clients: tuple[str, ...] = _setting(
        (), "client IPv4 CIDRs allowed to connect; empty: any", cidr_problem
    )
    # clients, parsed
    networks: tuple[Cidr, ...] = field(init=False, repr=False, compare=False, metadata=_DERIVED)

    def __post_init__(self) -> None:
        object.__setattr__(self, "networks", parse_cidrs(self.clients))


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = _setting(
        "info", "debug, info, warning or error", _one_of("debug", "info", "warning", "error")
    )
    # Text is what a person reads in `kubectl logs`; json is for log pipelines.
    format: str = _setting(
        "text", "text (key=value lines) or json (one object a line)", _one_of("text", "json")
    )
    # One line per tunnel is what an operator audits by; a busy tier may not want them,
    # but turning the level to warning would hide refusals and lifecycle lines too.
    access: bool = _setting(
        True, "one line per tunnel that ran; false leaves them out (refusals stay)"
    )
    # A refusal line costs a client one TCP handshake. 100 a second per cause keeps every
    # real client's errors visible (a gateway's reconnect loop is a few a second) while a
    # flood costs at most ~20 KB/s of log per cause; the rest are counted in one line.
    refusals_per_second: int = _setting(
        100,
        "refusal lines logged per second for each cause; the rest are counted; 0: no bound",
        _not_negative,
    )


def _listen_or_off(value: str) -> str | None:
    if value == "":
        return None
    try:
        host, _ = parse_hostport(value)
    except ConfigError:
        return "expected HOST:PORT, or an empty string to turn the admin listener off"
    return None if ":" not in host else "expected an IPv4 HOST:PORT"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    # Loopback, because /metrics shows traffic patterns; a kubelet probe or a Prometheus
    # scrape from outside the pod needs 0.0.0.0:9128 (the endpoints are read-only).
    # 9128 sits beside the proxy's 3128 and clear of Prometheus' own 9090 and Envoy's 9901.
    listen: str = _setting(
        "127.0.0.1:9128",
        "HOST:PORT of the /healthz, /readyz and /metrics endpoints; empty: no admin listener",
        _listen_or_off,
    )


@dataclass(frozen=True, slots=True)
class DrainConfig:
    # Kubernetes sends SIGKILL terminationGracePeriodSeconds (30 s by default) after SIGTERM,
    # to every container of the pod at once. 20 s lets the gateway's own shutdown use its
    # open tunnels and still leaves 10 s before SIGKILL for closing and exiting.
    grace_period: float = _setting(
        20.0, "seconds open tunnels may keep running after SIGTERM before they are cut", _positive
    )


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    nameservers: tuple[str, ...] = _setting(
        (), "IPv4 DNS servers as IP[:PORT]; empty: the nameservers of resolv_conf"
    )
    # Kubernetes pods rely on its search list and ndots.
    resolv_conf: str = _setting(
        "/etc/resolv.conf", "resolv.conf to take nameservers, search and ndots from"
    )
    hosts_file: str = _setting("/etc/hosts", "hosts file whose IPv4 entries win over DNS")
    # Resolvers retry UDP after 1-2 s, so 5 s allows a retry on each of two servers.
    timeout: float = _setting(
        5.0, "seconds for a whole lookup (every server, every search domain)", _positive
    )
    # Even a TTL of 0 is kept this long so a burst of tunnels to one name sends one query.
    min_ttl: float = _setting(1.0, "shortest time an answer is cached, seconds", _positive)
    # Long TTLs are cut so a moved service is followed within the hour.
    max_ttl: float = _setting(3600.0, "longest time an answer is cached, seconds", _positive)
    # RFC 2308 section 5 calls 1-3 hours a reasonable cap; a sidecar wants a name that has
    # just been created (a new service) usable within minutes, so 5 minutes.
    negative_max_ttl: float = _setting(
        300.0,
        "longest time an NXDOMAIN or NODATA answer is cached (RFC 2308), seconds; 0: never",
        _not_negative,
    )
    # RFC 8767 section 5 suggests 1-3 days. An expired address is only ever connected to,
    # and a moved one fails like a missing one would, so the low end: one day rides out an
    # overnight outage of the cluster DNS.
    stale_window: float = _setting(
        86400.0,
        "how long after expiry an answer is still served while every DNS server fails "
        "(RFC 8767), seconds; 0: never",
        _not_negative,
    )
    # A gateway talks to a few dozen names; 10000 entries is a few MB at most and never
    # evicts in normal use, while a client looping over random names cannot grow memory.
    cache_size: int = _setting(
        10000, "most names kept in the DNS cache (least recently used go)", _positive
    )
    # A name asked for in the last tenth of its TTL is refreshed in the background, so a
    # busy name never waits on DNS (the same fraction Unbound's prefetch uses).
    prefetch: float = _setting(
        0.1, "fraction of a TTL left when a hit starts a background refresh; 0: never", _fraction
    )
    # Distinct names being looked up at once (a name asked again while in flight joins its
    # lookup and does not count). A gateway uses a few dozen names; 256 new names at once
    # is a cold start of a busy shared tier, and still well under what a cluster resolver
    # serves one client concurrently (CoreDNS forward: 1000, Unbound: 1024 per thread).
    # Even with every server silent for the whole 5 s timeout, 256 slots pass 50 new names
    # a second, while a flood of random names holds no more than 256 lookups (a few KB
    # each) and 4 UDP sockets per server. Over it a lookup fails at once (DNS_BUSY, 503).
    max_in_flight: int = _setting(
        256,
        "most distinct names looked up at once; over it a lookup fails at once (DNS_BUSY)",
        _in_flight,
    )

    def nameserver_addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(parse_hostport(s, default_port=53) for s in self.nameservers)


def _each(check: Callable[[str], str | None]) -> Check:
    def check_all(values: tuple[str, ...]) -> str | None:
        return next((m for m in map(check, values) if m), None)

    return check_all


def _workers_problem(value: str) -> str | None:
    if value == "auto" or (value.isascii() and value.isdigit() and 1 <= int(value) <= 256):
        return None
    return "expected a number of processes from 1 to 256, or auto (the CPUs this process may use)"


def _dns_listen_problem(value: str) -> str | None:
    try:
        host, _ = parse_hostport(value)
    except ConfigError:
        return f"expected HOST:PORT, got {value!r}"
    return None if ":" not in host else f"{host} is IPv6; the DNS listener is IPv4 only"


def _dns_upstream_problem(value: str) -> str | None:
    try:
        host, _ = parse_hostport(value, default_port=53)
    except ConfigError:
        return f"expected IP[:PORT], got {value!r}"
    if ":" in host:
        return f"{host} is IPv6; this proxy opens IPv4 sockets only"
    try:
        ipaddress.IPv4Address(host)  # canonical dotted quad only: no 01.1.1.1, no '²'
    except ValueError:
        return f"expected an IPv4 address, got {value!r}"
    return None


def _client_rate(value: int) -> str | None:
    return None if value >= 1 else "expected a number >= 1"


def _shape_rule_problem(value: str) -> str | None:
    try:
        parse_rule(value)
    except ValueError as exc:
        return str(exc)
    return None


def _shape_ttl(value: int) -> str | None:
    return None if 1 <= value <= 3600 else "expected 1-3600 (seconds)"


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """The A-only DNS listener (docs/dns-mode.md); off while ``listen`` is empty."""

    # Off by default: a DNS server is only wanted where clients cannot be given a proxy.
    listen: tuple[str, ...] = _setting(
        (),
        "HOST:PORT addresses to answer DNS on, UDP and TCP each (127.0.0.1:53); empty: off",
        _each(_dns_listen_problem),
    )
    # Empty means loopback only, so turning the listener on never makes an open resolver.
    clients: tuple[str, ...] = _setting(
        (), "client IPv4 CIDRs allowed to query; empty: loopback only", cidr_problem
    )
    # Empty: the resolver's own servers, so DNS mode and proxy mode see the same answers.
    upstreams: tuple[str, ...] = _setting(
        (),
        "DNS servers queries are forwarded to, IP[:PORT]; empty: resolver.nameservers, "
        "else the nameservers of resolver.resolv_conf",
        _each(_dns_upstream_problem),
    )
    # The same reasoning as resolver.max_in_flight: a pod's clients ask a few dozen names,
    # 256 at once is a busy cold start, and a flood holds at most 256 upstream sockets.
    max_in_flight: int = _setting(
        256,
        "queries forwarded upstream at once; over it a query gets SERVFAIL at once",
        _in_flight,
    )
    # A Node gateway asks a few names a second (its own cache is short); 200 a second per
    # address (and a burst of as many) never slows a real client, while one looping client
    # cannot use up the in-flight slots of the others.
    client_rate: int = _setting(
        200,
        "queries per second one client address may ask (bursts of as many); over: REFUSED",
        _client_rate,
    )

    # one: Node's Happy Eyeballs cuts every attempt but the last after 250 ms, so any second
    # address can cost the slow good one its attempt; a single A record gets one untimed
    # attempt (docs/dns-mode.md, "Names with several A records").
    shape: str = _setting(
        "one",
        "names with several A records: one (only the address known to work), first (all, "
        "that one first, known-bad ones left out) or off (the upstream's records)",
        _one_of("one", "first", "off"),
    )
    # Every name, and the port gateways use (WhatsApp's web, media and WebSocket: 443).
    shape_names: tuple[str, ...] = _setting(
        ("*:443",),
        "names shaped, and the port their connect race uses: *, *.DOMAIN or NAME, each "
        "with :PORT (443 when left out); the first match wins",
        _each(_shape_rule_problem),
    )
    # Tens of seconds: a client whose address died asks again within half a minute and
    # gets the next good one, while a race runs at most twice a minute per name.
    shape_ttl: int = _setting(
        30,
        "longest TTL of a shaped answer, and how long a race result is fresh, seconds",
        _shape_ttl,
    )
    # The first query of a name waits for its race: one slow handshake (a SYN retransmit
    # takes 1 s) fits, and it stays under the 5 s a stub resolver waits before asking again.
    shape_race_timeout: float = _setting(
        3.0,
        "seconds a connect race may take; past it the name is answered unshaped",
        _positive,
    )

    def listen_addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(parse_hostport(s) for s in self.listen)

    def shape_rules(self) -> tuple[ShapeRule, ...]:
        return tuple(parse_rule(s) for s in self.shape_names)

    def upstream_addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(parse_hostport(s, default_port=53) for s in self.upstreams)


@dataclass(frozen=True, slots=True)
class DialerConfig:
    # RFC 8305 section 5 recommends 250 ms between connection attempts.
    attempt_delay: float = _setting(
        0.25, "seconds before racing the next address (RFC 8305)", _positive
    )
    # One budget for every address of a destination: long enough for a slow IPv4 handshake
    # with SYN retransmits (1 s, 3 s), short enough that a client's own timer rarely fires first.
    connect_timeout: float = _setting(
        10.0, "seconds to connect, over all of a destination's addresses", _positive
    )
    # One failure is noise (a lost SYN, a restarting server); three in a row is a dead address.
    breaker_failures: int = _setting(
        3, "consecutive connect failures that take an address out of the race", _positive
    )
    # Long enough that a dead edge costs most requests nothing, short enough that a recovered
    # one is back in the race within half a minute.
    breaker_cooldown: float = _setting(
        30.0, "seconds an address is skipped before it is tried again (half-open)", _positive
    )


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    # Real request heads are under 8 KiB; 32 KiB leaves room for large cookies and tokens.
    max_head: int = _setting(
        32 * 1024, "largest HTTP request head or SOCKS request, bytes", _positive
    )
    # A client that has not finished its handshake after this long is a slow or idle one.
    handshake_timeout: float = _setting(
        10.0, "seconds a client has to send its whole request", _positive
    )
    # Ten times Baileys' WebSocket keepalive ping (keepAliveIntervalMs, 30 s), so a
    # WhatsApp tunnel never looks idle even when a few pings are late, and under the
    # 350 s idle timeout of AWS load balancers so the proxy, not a middlebox, decides.
    idle_timeout: float = _setting(
        300.0, "seconds a tunnel may pass no byte either way before it is closed", _positive
    )
    # A gateway holds thousands of long-lived WebSockets; each tunnel costs two descriptors,
    # so 10,000 tunnels fit a 20,000+ descriptor limit (containers usually allow far more).
    max_connections: int = _setting(
        10_000, "client connections open at once; more are refused at once", _positive
    )
    # 0 (off): a sidecar's clients all share 127.0.0.1, so a per-address bound would cap
    # the one legitimate client. Set it on a shared egress tier.
    max_connections_per_client: int = _setting(
        0,
        "connections open at once from one client address; 0: no bound but the total",
        _not_negative,
    )
    # What every stalled tunnel together may hold: bytes read from one side that the other
    # side's socket has not taken yet. 32 MiB lets 128 tunnels stall with a whole 256 KiB
    # read each before reads shrink to a page; with 10,000 connections the worst case stays
    # inside the sidecar's 256 Mi limit (docs/security.md, "Memory bounds").
    relay_memory: int = _setting(
        32 * 1024 * 1024,
        "bytes all tunnels together may hold for peers that read slowly; past it reads shrink",
        _positive,
    )
    # What unfinished request heads together may hold: 512 heads of the largest size
    # (max_head) at once. A real head arrives whole in one read and holds nothing.
    handshake_memory: int = _setting(
        16 * 1024 * 1024,
        "bytes all unfinished requests together may hold; a request over it is refused (503)",
        _positive,
    )


@dataclass(frozen=True, slots=True, repr=False)
class AuthConfig:
    # Env/flag lists are comma-separated, so such passwords cannot hold a comma: use the file.
    users: tuple[str, ...] = _setting(
        (), "USER:PASSWORD pairs allowed to connect", user_problem, secret=True
    )
    # A mounted Kubernetes Secret: the password never has to be in the config or the env.
    users_file: str = _setting("", "file of USER:PASSWORD lines (e.g. a mounted Secret)")

    def __repr__(self) -> str:  # never print a password, even in check-config
        return f"AuthConfig(users=<{len(self.users)} hidden>, users_file={self.users_file!r})"

    @property
    def enabled(self) -> bool:
        return bool(self.users or self.users_file)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    # HTTP, HTTPS and XMPP (WhatsApp's chat port): what a WhatsApp gateway needs.
    ports: tuple[str, ...] = _setting(
        ("80", "443", "5222"), "destination ports allowed (ranges like 8000-8100)", port_problem
    )
    allow_domains: tuple[str, ...] = _setting(
        (), "if set, only names matching one (whatsapp.net, *.whatsapp.net)", domain_problem
    )
    deny_domains: tuple[str, ...] = _setting((), "names refused", domain_problem)
    allow_cidrs: tuple[str, ...] = _setting(
        (),
        "if set, only resolved addresses in one; also opens special ranges it names",
        cidr_problem,
    )
    deny_cidrs: tuple[str, ...] = _setting(
        (), "resolved addresses refused (e.g. private ranges)", cidr_problem
    )
    # Opening loopback to try the proxy against a local server must not turn the rest of
    # the internet off, as listing it in allow_cidrs (an allow-list) would.
    open_cidrs: tuple[str, ...] = _setting(
        (),
        "special ranges opened (e.g. 127.0.0.0/8); unlike allow_cidrs, nothing else changes",
        cidr_problem,
    )
    rules: PolicyRules = field(init=False, repr=False, compare=False, metadata=_DERIVED)

    def __post_init__(self) -> None:
        rules = PolicyRules(
            ports=parse_ports(self.ports),
            allow_domains=parse_domains(self.allow_domains),
            deny_domains=parse_domains(self.deny_domains),
            allow_cidrs=parse_cidrs(self.allow_cidrs),
            deny_cidrs=parse_cidrs(self.deny_cidrs),
            open_cidrs=parse_cidrs(self.open_cidrs),
        )
        object.__setattr__(self, "rules", rules)


@dataclass(frozen=True, slots=True)
class PolicyRules:
    """`PolicyConfig` parsed: what `policy.Policy` takes as it is."""

    ports: frozenset[int]
    allow_domains: tuple[DomainPattern, ...]
    deny_domains: tuple[DomainPattern, ...]
    allow_cidrs: tuple[Cidr, ...]
    deny_cidrs: tuple[Cidr, ...]
    open_cidrs: tuple[Cidr, ...]


PARENT_SCHEMES = ("socks5", "socks4", "http")


def redact_url(url: str, mask: str = "***") -> str:
    """``url`` with the password of its user-info replaced by ``mask`` (for printing)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostport = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{mask}@{hostport}"


def _parent_url(url: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "expected SCHEME://[USER:PASS@]HOST:PORT with a port of 1-65535"
    if parts.scheme not in PARENT_SCHEMES:
        return f"expected a URL of scheme {', '.join(PARENT_SCHEMES)}"
    if not parts.hostname or port is None or port == 0:
        return "expected SCHEME://[USER:PASS@]HOST:PORT with a port of 1-65535"
    if ":" in parts.hostname:
        return f"{parts.hostname} is IPv6; this proxy opens IPv4 sockets only"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "expected no path, query or fragment"
    return None


@dataclass(frozen=True, slots=True)
class ParentRules:
    """`ParentConfig`'s destination rules parsed: what `net.parents.Parent` takes as it is."""

    domains: tuple[DomainPattern, ...]
    cidrs: tuple[Cidr, ...]
    ports: frozenset[int]


@dataclass(frozen=True, slots=True)
class ParentConfig:
    """A parent proxy and the destinations sent through it.

    A destination matches when its port is in ``ports`` (any port when empty) and its name
    matches ``domains`` or one of its resolved addresses is in ``cidrs`` (anything, when
    both are empty). Every matching parent is tried in file order; a matched destination
    never goes out directly. Flag and env form: ``name=N url=URL domains=A;B cidrs=C
    ports=P;Q``.
    """

    name: str = _setting("", "the parent's name in logs and answers (default: its host:port)")
    url: str = _setting(
        "",
        "socks5://, socks4:// or http://[USER:PASS@]HOST:PORT (percent-encode : @ in USER, PASS)",
        _parent_url,
        secret=True,
    )
    domains: tuple[str, ...] = _setting(
        (), "names (whatsapp.com) and patterns (*.whatsapp.net: any name below it)", domain_problem
    )
    cidrs: tuple[str, ...] = _setting((), "IPv4 networks of the resolved address", cidr_problem)
    ports: tuple[str, ...] = _setting(
        (), "destination ports or ranges (8000-8100); empty: every port", port_problem
    )
    rules: ParentRules = field(init=False, repr=False, compare=False, metadata=_DERIVED)

    def __post_init__(self) -> None:
        rules = ParentRules(
            domains=parse_domains(self.domains),
            cidrs=parse_cidrs(self.cidrs),
            ports=parse_ports(self.ports),
        )
        object.__setattr__(self, "rules", rules)

    def __repr__(self) -> str:  # never print a password, even in check-config
        return (
            f"ParentConfig(name={self.name!r}, url={redact_url(self.url)!r}, "
            f"domains={self.domains!r}, cidrs={self.cidrs!r}, ports={self.ports!r})"
        )

    @property
    def label(self) -> str:
        """The parent's name, or its host:port (never its credentials)."""
        if self.name:
            return self.name
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.hostname}:{parts.port}"

    @classmethod
    def from_text(cls, text: str, where: str) -> dict[str, Any]:
        """The mapping that ``name=N url=URL domains=A;B cidrs=C ports=P;Q`` stands for."""
        data: dict[str, Any] = {}
        for index, word in enumerate(text.split()):
            key, sep, value = word.partition("=")
            if not sep:
                if "://" in word and "url" not in data:
                    key, value = "url", word  # a bare URL
                else:  # the word is not repeated: it may hold a password
                    raise ConfigError(
                        f"{where}: expected KEY=VALUE words (name, url, domains, cidrs, ports); "
                        f"word {index + 1} is not one"
                    )
            data[key] = value.split(";") if key in ("domains", "cidrs", "ports") else value
        return data


def _parents_ok(parents: tuple[ParentConfig, ...]) -> None:
    seen: set[str] = set()
    for index, parent in enumerate(parents):
        if not parent.url:
            raise ConfigError(f"parents[{index}].url: required")
        if parent.label in seen:
            raise ConfigError(f"parents[{index}].name: {parent.label!r} is used twice")
        seen.add(parent.label)


@dataclass(frozen=True, slots=True)
class HttpConfig:
    # "reset" because it is the one mode every client in the matrix (docs/clients.md, "How a failed
    # CONNECT is signalled") turns into a prompt error: "status" stalls Baileys behind
    # https-proxy-agent (the status is replayed to ws as the upgrade's answer), "close"
    # stalls global-agent and sends undici's ProxyAgent into a reconnect loop.
    connect_failure: str = _setting(
        "reset",
        "how a CONNECT to an unreachable or refused destination fails: 'reset' closes the "
        "connection with an RST, 'close' closes it with a FIN, 'status' answers with the "
        "HTTP status and the reason (the log names the cause in every mode)",
        _one_of("reset", "close", "status"),
    )


def _nameservers_ok(config: ResolverConfig) -> None:
    for index, text in enumerate(config.nameservers):
        host, _ = parse_hostport(text, default_port=53, key=f"resolver.nameservers[{index}]")
        if ":" in host:
            raise ConfigError(
                f"resolver.nameservers[{index}]: {host} is IPv6; this proxy opens IPv4 sockets only"
            )


@dataclass(frozen=True, slots=True)
class Config:
    listeners: tuple[Listener, ...] = _setting((Listener(),), "where clients connect")
    log: LogConfig = _setting(LogConfig(), "logging")
    resolver: ResolverConfig = _setting(ResolverConfig(), "A-only name resolution")
    dialer: DialerConfig = _setting(DialerConfig(), "IPv4 connection racing")
    limits: LimitsConfig = _setting(LimitsConfig(), "bounds on what a client may send")
    auth: AuthConfig = _setting(AuthConfig(), "who may connect: credentials")
    policy: PolicyConfig = _setting(PolicyConfig(), "where clients may go")
    admin: AdminConfig = _setting(AdminConfig(), "health, readiness and metrics endpoints")
    drain: DrainConfig = _setting(DrainConfig(), "graceful stop on SIGTERM")
    parents: tuple[ParentConfig, ...] = _setting(
        (), "parent proxies and the destinations that go through them"
    )
    http: HttpConfig = _setting(HttpConfig(), "HTTP proxy answers")
    dns: DnsConfig = _setting(DnsConfig(), "the A-only DNS listener (DNS mode)")
    # 1: one process, as a sidecar wants (its clients are one pod; a second process would
    # only cost memory). A shared egress tier sets its cores, or auto (docs/operations.md,
    # "Workers"). 256 is far above any core count a pod gets, and keeps a typo from
    # forking thousands of processes.
    workers: str = _setting(
        "1",
        "proxy processes serving the listeners together (SO_REUSEPORT), 1-256, or auto: the "
        "CPUs this process may use (affinity and cgroup quota); each gets a share of the limits",
        _workers_problem,
    )


def _listeners_safe(config: Config) -> None:
    """Refuse an open proxy: a non-loopback listener needs client CIDRs or authentication."""
    for index, listener in enumerate(config.listeners):
        if is_loopback_host(listener.host) or listener.clients or config.auth.enabled:
            continue
        raise ConfigError(
            f"listeners[{index}]: {listener.host} is not a loopback address, so anyone who "
            f"reaches it could use this proxy; set listeners[{index}].clients to the client "
            f"CIDRs allowed (YAML: listeners: [{{host: {listener.host}, port: {listener.port}, "
            "clients: [10.0.0.0/8]}]) or require credentials with auth.users_file or auth.users"
        )


def _addresses_distinct(config: Config) -> None:
    """Refuse two listeners (or a listener and the admin listener) on one address and port:
    the second bind would fail at start with a bare "address already in use". 0.0.0.0
    overlaps every address on its port; port 0 (a free port each) never collides."""
    bound = [
        (f"listeners[{index}]", listener.host, listener.port)
        for index, listener in enumerate(config.listeners)
    ]
    if config.admin.listen:
        host, port = parse_hostport(config.admin.listen, key="admin.listen")
        bound.append(("admin.listen", host, port))
    for later, (key, host, port) in enumerate(bound):
        for other, other_host, other_port in bound[:later]:
            same_address = host == other_host or "0.0.0.0" in (host, other_host)  # noqa: S104
            if port and port == other_port and same_address:
                raise ConfigError(
                    f"{key}: {host}:{port} is also {other} ({other_host}:{other_port});"
                    " give each listener its own address or port"
                )


# -- the generic part: walking the tree --------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def iter_keys(
    cls: type = Config, prefix: tuple[str, ...] = ()
) -> typing.Iterator[tuple[tuple[str, ...], Any, dataclasses.Field[Any]]]:
    """Every leaf key: (path, type, field). ``listeners`` is one leaf (a list)."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:  # a derived value, not a setting
            continue
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            yield from iter_keys(kind, (*prefix, f.name))
        else:
            yield (*prefix, f.name), kind, f


def env_name(path: Sequence[str]) -> str:
    return ENV_PREFIX + "_".join(path).upper()


def flag_name(path: Sequence[str]) -> str:
    return "--" + "-".join(path).replace("_", "-")


def env_names(path: Sequence[str]) -> tuple[str, ...]:
    """The variables of a key: its derived name, and for ``listeners`` the documented
    ``IPV4PROXY_LISTEN`` (the flag's name) as well, the derived one winning."""
    if tuple(path) == ("listeners",):
        return (ENV_PREFIX + "LISTEN", env_name(path))
    return (env_name(path),)


# Variables of ours that are not settings.
_OTHER_ENV = frozenset({ENV_PREFIX + "CONFIG"})


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """One warning for each ``IPV4PROXY_*`` variable that sets nothing (a typo would
    otherwise be dropped in silence), with the nearest known name when there is one."""
    known = {name for path, _, _ in iter_keys() for name in env_names(path)} | _OTHER_ENV
    warnings = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        tail = name.removeprefix(ENV_PREFIX)
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.8) or sorted(
            k for k in known if k.endswith("_" + tail) or k.endswith("_" + tail + "S")
        )
        hint = f" (did you mean {near[0]}?)" if near else ""
        warnings.append(f"{name} is not a setting and is ignored{hint}")
    return warnings


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (YAML itself lets the
    last one win in silence, so a second ``policy:`` block would undo the first)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {line})", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _unique_mapping,
)


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Turn a YAML value (or a string from env/flags) into ``kind``; raise ConfigError."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        (item_kind, _) = typing.get_args(kind)
        items: Any
        if isinstance(value, str):
            items = _split(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            items = [value]  # one scalar is a list of one (`ports: 443`), as a string is
        else:
            items = value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(item, item_kind, f"{where}[{i}]") for i, item in enumerate(items))
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _build(kind, value, where)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        }:
            return value.lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind is int or kind is float:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ConfigError(
                f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}"
            )
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}"
            ) from None
    if kind is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported setting type {kind!r}")  # pragma: no cover


def _build(cls: type, data: Any, where: str) -> Any:
    if cls is Listener and isinstance(data, str):
        host, port = parse_hostport(data, key=where)
        return Listener(host, port)
    if cls is ParentConfig and isinstance(data, str):
        data = ParentConfig.from_text(data, where)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{path}: unknown key (expected one of {known})")
        secret = fields[key].metadata.get("secret", False)
        try:
            coerced = _coerce(value, hints[key], path)
        except ConfigError:
            if secret:
                raise ConfigError(f"{path}: expected a list of strings") from None
            raise
        check = fields[key].metadata.get("check")
        if isinstance(check, _OneOf) and isinstance(coerced, str):
            coerced = coerced.lower()
        message = check(coerced) if check is not None else None
        if message:
            # Rule checks name the bad item themselves ("..., got '70000x'").
            shown = "" if secret or ", got " in message else f", got {value!r}"
            raise ConfigError(f"{path}: {message}{shown}")
        values[key] = coerced
    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - every field has a default
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for part in path[:-1]:
        node = tree.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{part}: expected a mapping, got {node!r}")
        tree = node
    tree[path[-1]] = value


def load(
    file_text: str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[tuple[str, ...], str | list[str]] | None = None,
) -> Config:
    """Merge file, environment and flags (flags win) into a validated Config.

    ``flags`` maps a key path to the flag's value(s); a list holds the values of a repeated
    flag, each of which may itself be a comma-separated list. Raises ConfigError.
    """
    tree: dict[str, Any] = {}
    if file_text:
        try:
            loaded = yaml.load(file_text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"config file: expected a mapping at the top, got {type(loaded).__name__}"
            )
        tree = loaded or {}
    for path, _, _ in iter_keys():
        for name in env_names(path):
            if environ is not None and name in environ:
                _set(tree, path, environ[name])
    for path, value in (flags or {}).items():
        if isinstance(value, list):  # a repeated flag; each value may be a comma-separated list
            _set(tree, path, [item for text in value for item in _split(text)])
        else:
            _set(tree, path, value)
    config: Config = _build(Config, tree, "")
    _nameservers_ok(config.resolver)
    _parents_ok(config.parents)
    if not config.listeners:
        raise ConfigError("listeners: expected at least one listener")
    _listeners_safe(config)
    _addresses_distinct(config)
    return config


# -- showing the configuration ------------------------------------------------------------


def _tree(value: Any) -> Any:
    """A plain YAML-able tree of ``value``; fields marked ``secret`` are masked when set."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        tree: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            if not f.init:  # a derived value, not a setting
                continue
            item = getattr(value, f.name)
            secret = f.metadata.get("secret", False)
            if secret and isinstance(item, tuple | list):
                tree[f.name] = [MASK for _ in item]  # how many, never what
            elif secret and isinstance(item, str) and "://" in item:
                tree[f.name] = redact_url(item, MASK)  # the host stays visible, not the password
            elif secret and item not in ("", None, 0):
                tree[f.name] = MASK
            else:
                tree[f.name] = _tree(item)
        return tree
    if isinstance(value, tuple | list):
        return [_tree(item) for item in value]
    return value


def to_yaml(config: Config) -> str:
    """The effective configuration as YAML that `load` accepts; secrets are masked."""
    text: str = yaml.safe_dump(_tree(config), sort_keys=False, default_flow_style=False)
    return text


def changed_keys(old: Config, new: Config) -> list[str]:
    """The dotted paths of the keys whose values differ (names only, never values)."""
    changed = []
    for path, _, _ in iter_keys():
        a: Any = old
        b: Any = new
        for part in path:
            a, b = getattr(a, part), getattr(b, part)
        if a != b:
            changed.append(".".join(path))
    return changed
