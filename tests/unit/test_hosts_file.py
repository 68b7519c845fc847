"""hosts(5) parsing: IPv4 entries only, in file order."""

from __future__ import annotations

from ipv4proxy.net.resolver import read_hosts


def test_ipv4_entries_kept_ipv6_dropped() -> None:
    text = """
# comment
127.0.0.1   localhost  Local.Example.
::1         localhost ip6-localhost
10.0.0.7    svc svc.ns.svc.cluster.local   # trailing comment
10.0.0.8    svc
10.0.0.7    svc
bogus       name
fe80::1%eth0 link
"""
    assert read_hosts(text) == {
        "localhost": ("127.0.0.1",),
        "local.example": ("127.0.0.1",),
        "svc": ("10.0.0.7", "10.0.0.8"),
        "svc.ns.svc.cluster.local": ("10.0.0.7",),
    }


def test_empty_and_garbage() -> None:
    assert read_hosts("") == {}
    assert read_hosts("\x00\xff junk\n# only\n1.2.3.4\n") == {}
