"""Who may connect, and where they may go: pure decisions that name the rule that made them.

Job: every access decision of the proxy, made without I/O so a test can call it directly.
The session asks, in order: may this client address use this listener (`client`); are
these credentials good (`credentials_ok`); may the request name this destination
(`destination`: port, then domain rules); and, after resolution, which of the name's IPv4
addresses may be dialed (`addresses`). The dialer is handed only the allowed addresses.

Rules, in the order they are applied to a resolved address (`address`):
1. a loop is always refused, whatever the other rules say: any address that reaches this
   host (0.0.0.0/8, loopback, an address of one of its interfaces, a listen address) at
   a port this process listens on (a proxy listener or the admin listener). Otherwise
   ``CONNECT 0.0.0.0:3128`` opened with ``allow_cidrs: [0.0.0.0/0]`` nests tunnels into
   the proxy itself (500 in one write, measured) or reaches /metrics through it;
2. ``policy.deny_cidrs`` refuse;
3. ``policy.allow_cidrs`` allow, even inside a special range (that is how one opens
   loopback, say, on purpose);
4. special ranges refuse: 0.0.0.0/8, loopback, link-local (169.254.169.254 is the cloud
   metadata service), multicast, reserved and broadcast (240.0.0.0/4);
5. when ``policy.allow_cidrs`` is set, an address outside every entry is refused;
6. everything else is allowed, private ranges (10/8, 172.16/12, 192.168/16, 100.64/10)
   included: a pod's own services live there. Deny them with ``policy.deny_cidrs``.
Names are checked before resolution (``policy.deny_domains``, then
``policy.allow_domains``) and addresses after it, so a DNS answer cannot smuggle in an
address the rules refuse. When the resolv.conf search list makes the name that answered
another one (``db`` answered as ``db.corp.example``), that name must pass the same domain
rules too (`resolved_name`): every name a request is turned into is judged, and a refused
expansion is refused, not skipped for the next candidate (that would reach another host
than the one the client's resolv.conf means). An IPv4 literal matches no domain: when
``allow_domains`` is set, a literal must be inside ``allow_cidrs``.

Credentials are compared in constant time (``hmac.compare_digest`` over SHA-256 digests
of user and password, against every configured pair), and never logged: no reason here
holds a username or a password.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ipv4proxy.config import Config, env_name, flag_name
from ipv4proxy.errors import Failure, PolicyDenied
from ipv4proxy.protocols import Destination, HostKind, ProtocolKind
from ipv4proxy.rules import Cidr, parse_user_line

__all__ = ["SPECIAL_RANGES", "Decision", "Policy", "require"]

Network = ipaddress.IPv4Network


def _setting_hint(*path: str) -> str:
    """A setting as a person sets it: ``policy.ports (--policy-ports, IPV4PROXY_POLICY_PORTS)``."""
    return f"{'.'.join(path)} ({flag_name(path)}, {env_name(path)})"


_OPEN_HINT = _setting_hint("policy", "open_cidrs")

# Addresses that always reach this host, whatever its interfaces are.
_THIS_HOST = (Network("0.0.0.0/8"), Network("127.0.0.0/8"))

# Destinations no egress proxy should reach unless told to (RFC 6890 special-purpose).
SPECIAL_RANGES: tuple[tuple[str, Network], ...] = (
    ("this-network", Network("0.0.0.0/8")),
    ("loopback", Network("127.0.0.0/8")),
    ("link-local (cloud metadata)", Network("169.254.0.0/16")),
    ("multicast", Network("224.0.0.0/4")),
    ("reserved", Network("240.0.0.0/4")),  # 255.255.255.255 (broadcast) included
)


@dataclass(frozen=True, slots=True)
class Decision:
    """An answer: allowed or not, the rule that decided, and a reason for the client."""

    allowed: bool
    rule: str
    reason: str = ""
    failure: Failure = Failure.DENIED

    def error(self) -> PolicyDenied:
        return PolicyDenied(self.reason, failure=self.failure)


ALLOWED = Decision(True, "default")


def require(decision: Decision) -> None:
    """Raise the decision's PolicyDenied when it refuses."""
    if not decision.allowed:
        raise decision.error()


def _digest(user: str, password: str) -> bytes:
    def h(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()

    return h(user) + h(password)  # fixed length: no user/password split is ambiguous


def _networks(key: str, cidrs: Iterable[Cidr]) -> tuple[tuple[str, Network], ...]:
    """Each network with the name of its rule (``policy.deny_cidrs[0] 10.0.0.0/8``)."""
    return tuple((f"{key}[{i}] {cidr.text}", cidr.network) for i, cidr in enumerate(cidrs))


# Address decisions remembered per policy (about 200 bytes each).
_ADDRESS_DECISIONS = 4096


class Policy:
    """The decisions of one configuration. Build once at start; every method is pure."""

    __slots__ = (
        "_address_decisions",
        "_allow_cidrs",
        "_allow_domains",
        "_clients",
        "_deny_cidrs",
        "_deny_domains",
        "_digests",
        "_local",
        "_open_cidrs",
        "_own",
        "_own_ports",
        "_ports",
    )

    def __init__(self, config: Config, users: Sequence[tuple[str, str]] = ()) -> None:
        """``users`` adds to ``config.auth.users`` (the pairs of ``auth.users_file``)."""
        rules = config.policy.rules  # parsed once, by the configuration
        self._ports = rules.ports
        self._allow_cidrs = _networks("policy.allow_cidrs", rules.allow_cidrs)
        self._deny_cidrs = _networks("policy.deny_cidrs", rules.deny_cidrs)
        self._open_cidrs = _networks("policy.open_cidrs", rules.open_cidrs)
        self._allow_domains = rules.allow_domains
        self._deny_domains = rules.deny_domains
        self._clients = tuple(
            _networks(f"listeners[{index}].clients", listener.networks)
            for index, listener in enumerate(config.listeners)
        )
        pairs = [parse_user_line(line) for line in config.auth.users] + list(users)
        self._digests = tuple(_digest(user, password) for user, password in pairs)
        self._own: frozenset[tuple[str, int]] = frozenset()
        self._own_ports: frozenset[int] = frozenset()
        self._local: frozenset[str] = frozenset()
        # (address, port) -> its Decision: the rules walk a dozen networks per address, and
        # a sidecar sees the same few destinations over and over. Bounded; cleared when full.
        self._address_decisions: dict[tuple[str, int], Decision] = {}

    def listening_on(self, addresses: Iterable[tuple[str, int]], local: Iterable[str] = ()) -> None:
        """Record the bound listen addresses (proxy and admin listeners) and this host's
        interface addresses (``local``): a request that reaches them is a loop."""
        self._own = frozenset(addresses)
        self._own_ports = frozenset(port for _, port in self._own)
        self._local = frozenset(local)
        self._address_decisions.clear()

    # who may connect

    def client(self, listener: int, address: str) -> Decision:
        """May ``address`` (the client's IP) use listener number ``listener``?"""
        networks = self._clients[listener] if listener < len(self._clients) else ()
        if not networks:
            return ALLOWED
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            ip = None
        for rule, network in networks:
            if ip is not None and ip in network:
                return Decision(True, rule)
        rule = f"listeners[{listener}].clients"
        return Decision(False, rule, f"client {address} is not allowed by {rule}")

    @property
    def auth_required(self) -> bool:
        return bool(self._digests)

    def credentials_ok(self, credentials: tuple[str, str] | None) -> bool:
        """True when auth is off or ``credentials`` match a configured pair (constant time)."""
        if not self._digests:
            return True
        if credentials is None:
            return False
        given = _digest(*credentials)
        ok = False
        for digest in self._digests:  # no early exit: every pair costs the same
            ok |= hmac.compare_digest(given, digest)
        return ok

    def credentials(
        self,
        credentials: tuple[str, str] | None,
        *,
        protocol: ProtocolKind = ProtocolKind.HTTP_CONNECT,
    ) -> Decision:
        """Whether ``credentials`` let a request of ``protocol`` through."""
        if self._digests and protocol.socks4:
            reason = (
                "SOCKS4 cannot carry a password and this proxy requires authentication:"
                " use SOCKS5 or HTTP with credentials"
            )
            return Decision(False, "auth", reason, Failure.AUTH_REQUIRED)
        if self.credentials_ok(credentials):
            return ALLOWED
        reason = (
            "proxy authentication required"
            if credentials is None
            else "proxy authentication failed: wrong username or password"
        )
        return Decision(False, "auth", reason, Failure.AUTH_REQUIRED)

    # where they may go

    def destination(self, destination: Destination) -> Decision:
        """Port and domain rules, before any resolution."""
        target = str(destination)
        if destination.port not in self._ports:
            return Decision(
                False,
                "policy.ports",
                f"{target}: port {destination.port} is not in {_setting_hint('policy', 'ports')}",
            )
        if destination.kind is HostKind.IPV4:
            if self._allow_domains and not self._in_allow_cidrs(destination.host):
                rule = "policy.allow_domains"
                return Decision(False, rule, f"{target}: an IPv4 literal matches no name in {rule}")
            return ALLOWED
        return self._domain(destination.host, target)

    def resolved_name(self, name: str, resolved: str, port: int) -> Decision:
        """The domain rules for ``resolved``, the name the resolv.conf search list turned
        ``name`` into (``db`` -> ``db.corp.example``): the name actually looked up must
        pass them too, or ``*.corp.example`` would be reached as ``db``."""
        target = f"{name}:{port} (looked up as {resolved} through the resolv.conf search list)"
        return self._domain(resolved, target)

    def _domain(self, name: str, target: str) -> Decision:
        """``policy.deny_domains``, then ``policy.allow_domains``, for ``name``."""
        for index, pattern in enumerate(self._deny_domains):
            if pattern.matches(name):
                rule = f"policy.deny_domains[{index}] {pattern.text}"
                return Decision(False, rule, f"{target} is refused by {rule}")
        if not self._allow_domains:
            return ALLOWED
        for index, pattern in enumerate(self._allow_domains):
            if pattern.matches(name):
                return Decision(True, f"policy.allow_domains[{index}] {pattern.text}")
        rule = "policy.allow_domains"
        return Decision(False, rule, f"{target} matches no name in {rule}")

    def _in_allow_cidrs(self, address: str) -> bool:
        ip = ipaddress.IPv4Address(address)
        return any(ip in network for _, network in self._allow_cidrs)

    def address(self, address: str, port: int) -> Decision:
        """The address rules (see the module docstring) for one resolved IPv4 address."""
        key = (address, port)
        decision = self._address_decisions.get(key)
        if decision is None:
            decision = self._address(address, port)
            if len(self._address_decisions) >= _ADDRESS_DECISIONS:
                self._address_decisions.clear()
            self._address_decisions[key] = decision
        return decision

    def _address(self, address: str, port: int) -> Decision:
        ip = ipaddress.IPv4Address(address)
        if port in self._own_ports and (
            address in self._local
            or any(ip in network for network in _THIS_HOST)
            or any(host == address for host, _ in self._own)
        ):
            rule = "own listen address"
            return Decision(
                False,
                rule,
                f"{address}:{port} reaches an own listen address of this proxy (a loop)",
            )
        for rule, network in self._deny_cidrs:
            if ip in network:
                return Decision(False, rule, f"{address} is refused by {rule}")
        for rule, network in self._allow_cidrs:
            if ip in network:
                return Decision(True, rule)
        for name, network in SPECIAL_RANGES:
            if ip in network and not any(ip in opened for _, opened in self._open_cidrs):
                rule = f"special range {name} {network}"
                return Decision(
                    False, rule, f"{address} is in the {rule} (open it with {_OPEN_HINT})"
                )
        if self._allow_cidrs:
            rule = "policy.allow_cidrs"
            return Decision(False, rule, f"{address} is in no network of {rule}")
        return ALLOWED

    def addresses(
        self, addresses: Sequence[str], port: int, name: str
    ) -> tuple[tuple[str, ...], Decision]:
        """The allowed subset of a name's addresses, in order, and the decision.

        When none is allowed the decision refuses with the first address's rule, and the
        reason names the destination and every refused address.
        """
        allowed: list[str] = []
        first: Decision | None = None
        for address in addresses:
            decision = self.address(address, port)
            if decision.allowed:
                allowed.append(address)
            elif first is None:
                first = decision
        if allowed or first is None:
            return tuple(allowed), ALLOWED
        every = ", ".join(addresses)
        reason = f"{name}:{port} resolves only to refused addresses ({every}): {first.reason}"
        return (), Decision(False, first.rule, reason)
