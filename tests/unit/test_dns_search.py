"""The search-list expansion (`search_names`) and the policy on the name that answered.

resolv.conf(5): a name with at least ``ndots`` dots is tried as given first, then with each
search domain; one with fewer dots gets the search domains first. These are the names a
request can be turned into, so every one of them is what the domain policy must judge.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipv4proxy.config import Config, PolicyConfig
from ipv4proxy.errors import Failure
from ipv4proxy.net.resolver import search_names
from ipv4proxy.policy import Policy

K8S = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")


@pytest.mark.parametrize(
    ("name", "search", "ndots", "expected"),
    [
        ("db", ("corp.example",), 1, ("db.corp.example", "db")),
        ("db.x", ("corp.example",), 1, ("db.x", "db.x.corp.example")),
        ("db", (), 1, ("db",)),
        (
            "kubernetes.default",
            K8S,
            5,
            (
                "kubernetes.default.default.svc.cluster.local",
                "kubernetes.default.svc.cluster.local",
                "kubernetes.default.cluster.local",
                "kubernetes.default",
            ),
        ),
        ("a.b.c.d.e", ("x",), 5, ("a.b.c.d.e.x", "a.b.c.d.e")),
        ("a.b.c.d.e.f", ("x",), 5, ("a.b.c.d.e.f", "a.b.c.d.e.f.x")),
        ("db.", ("corp.example",), 1, ("db",)),  # absolute: no search
        ("DB", ("Corp.Example.",), 1, ("db.corp.example", "db")),
        ("db", ("corp.example", "corp.example"), 1, ("db.corp.example", "db")),
        ("db", ("",), 1, ("db",)),
        ("x" * 240, ("y" * 20,), 1, ("x" * 240,)),  # too long with the domain: skipped
    ],
)
def test_search_names(
    name: str, search: tuple[str, ...], ndots: int, expected: tuple[str, ...]
) -> None:
    assert search_names(name, search, ndots) == expected


_LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_NAME = st.lists(_LABEL, min_size=1, max_size=6).map(".".join)


@given(name=_NAME, search=st.lists(_NAME, max_size=6), ndots=st.integers(0, 15))
def test_every_candidate_is_the_name_or_the_name_in_a_search_domain(
    name: str, search: list[str], ndots: int
) -> None:
    names = search_names(name, search, ndots)
    assert names.count(name) == 1
    assert len(set(names)) == len(names)
    expanded = [n for n in names if n != name]
    assert all(any(n == f"{name}.{d}" for d in search) for n in expanded)
    assert all(len(n) <= 253 for n in expanded)
    # ndots decides whether the name as given goes first or last.
    assert names[0 if name.count(".") >= ndots else -1] == name
    # Every search domain that fits is tried, in resolv.conf's order.
    fitting = [f"{name}.{d}" for d in dict.fromkeys(search) if len(name) + 1 + len(d) <= 253]
    assert expanded == list(dict.fromkeys(fitting))


def _policy(**settings: tuple[str, ...]) -> Policy:
    return Policy(Config(policy=PolicyConfig(**settings)))


def test_the_resolved_name_meets_the_deny_rule() -> None:
    policy = _policy(deny_domains=("*.corp.example",))
    decision = policy.resolved_name("db", "db.corp.example", 80)
    assert not decision.allowed
    assert decision.failure is Failure.DENIED
    assert decision.reason == (
        "db:80 (looked up as db.corp.example through the resolv.conf search list)"
        " is refused by policy.deny_domains[0] *.corp.example"
    )
    assert policy.resolved_name("db", "db.elsewhere.example", 80).allowed


def test_the_resolved_name_meets_the_allow_rule() -> None:
    policy = _policy(allow_domains=("*.whatsapp.net", "db"))
    assert policy.resolved_name("web", "web.whatsapp.net", 443).allowed
    refused = policy.resolved_name("db", "db.corp.example", 443)
    assert not refused.allowed
    assert "matches no name in policy.allow_domains" in refused.reason


def test_kubernetes_shape() -> None:
    policy = _policy(deny_domains=("*.cluster.local",))
    name = "kubernetes.default"
    for candidate in search_names(name, K8S, 5)[:-1]:
        assert not policy.resolved_name(name, candidate, 443).allowed
