"""resolv.conf's search list and ndots, as Kubernetes pods rely on them, against dnsmasq.

A pod's resolv.conf says ``search <ns>.svc.cluster.local svc.cluster.local ...`` and
``options ndots:5``: a short name is tried with each search domain first. The proxy reads
both from its resolv.conf even when its nameservers are given explicitly (here, to reach
the test dnsmasq on its own port).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.dnsmasq import Dnsmasq
from ipv4proxy.config import ResolverConfig
from ipv4proxy.errors import Failure, ResolveError
from ipv4proxy.net.resolver import Resolver


def _resolver(dnsmasq: Dnsmasq, tmp_path: Path, resolv_conf: str) -> Resolver:
    path = tmp_path / "resolv.conf"
    path.write_text(resolv_conf)
    config = ResolverConfig(
        nameservers=(f"127.0.0.1:{dnsmasq.port}",),
        resolv_conf=str(path),
        hosts_file="/dev/null",
    )
    return Resolver(config, hosts={})


async def test_short_name_takes_the_search_domain(dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    resolver = _resolver(dnsmasq, tmp_path, "search test\noptions ndots:5\n")
    try:
        assert await resolver.resolve("v4") == ("127.0.0.1",)
        assert await resolver.resolve("multi") != ()
    finally:
        await resolver.close()


async def test_without_search_a_short_name_is_not_found(dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    """The bare name goes to the server as is; this dnsmasq serves only .test and refuses
    anything else, which the answer names."""
    resolver = _resolver(dnsmasq, tmp_path, "options ndots:1\n")
    try:
        with pytest.raises(ResolveError) as caught:
            await resolver.resolve("v4")
        assert caught.value.failure is Failure.DNS_FAILURE
        assert "REFUSED" in str(caught.value)
    finally:
        await resolver.close()


async def test_search_queries_are_a_only(dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    """ndots:5 makes even dual.test try the search domain first; every query is still A."""
    before = len(dnsmasq.queries())
    resolver = _resolver(dnsmasq, tmp_path, "search test\noptions ndots:5\n")
    try:
        assert await resolver.resolve("dual.test") == ("127.0.0.1",)
    finally:
        await resolver.close()
    asked = dnsmasq.queries()[before:]
    names = [query.name for query in asked]
    assert "dual.test.test" in names  # the search domain was tried first (ndots:5)
    assert "dual.test" in names
    assert {query.qtype for query in asked} == {"A"}
