"""Destination host checks: names, canonical IPv4, IPv6 refusal, authorities."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipv4proxy.errors import Failure, ProtocolError
from ipv4proxy.protocols.events import Destination, HostKind
from ipv4proxy.protocols.host import parse_authority, parse_host

NAME = HostKind.NAME
IPV4 = HostKind.IPV4

# Names whose last label starts with a letter, so they never "end in a number".
names = st.from_regex(
    r"[A-Za-z0-9_-]{1,20}(\.[A-Za-z0-9_-]{1,20}){0,4}\.[A-Za-z][A-Za-z0-9_-]{0,20}\.?",
    fullmatch=True,
)
ports = st.integers(1, 65535)


@pytest.mark.parametrize(
    ("text", "host", "kind"),
    [
        ("example.com", "example.com", NAME),
        ("Example.COM", "example.com", NAME),
        ("example.com.", "example.com", NAME),
        ("localhost", "localhost", NAME),
        ("_dmarc.example.com", "_dmarc.example.com", NAME),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", NAME),
        ("1e10", "1e10", NAME),
        ("123.example", "123.example", NAME),
        ("a" * 63 + ".com", "a" * 63 + ".com", NAME),
        ("1.2.3.4", "1.2.3.4", IPV4),
        ("1.2.3.4.", "1.2.3.4", IPV4),
        ("0.0.0.0", "0.0.0.0", IPV4),
        ("255.255.255.255", "255.255.255.255", IPV4),
        ("10.0.100.199", "10.0.100.199", IPV4),
    ],
)
def test_parse_host_accepts(text: str, host: str, kind: HostKind) -> None:
    assert parse_host(text, 443) == Destination(host, 443, kind)


def test_longest_name() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    assert parse_host(name + ".", 80).host == name
    with pytest.raises(ProtocolError) as info:
        parse_host(name + "b", 80)
    assert info.value.failure is Failure.MALFORMED


@pytest.mark.parametrize(
    "text",
    [
        # Non-canonical IPv4 spellings slip past policy checks.
        "127.1",
        "2130706433",
        "0x7f.1",
        "0x7f000001",
        "0177.0.0.1",
        "127.000.0.1",
        "01.2.3.4",
        "256.1.1.1",
        "1.2.3.4.5",
        "1.2.3",
        "example.123",
        "foo.0x",
        "foo.0XAB",
        # Not names at all.
        "",
        ".",
        "a..b",
        ".a",
        "example.com..",
        "a" * 64 + ".com",
        "ex ample.com",
        "a/b",
        "a\x00b",
        "a\r\nb",
        "bücher.de",
        "[example.com]",
        "example.com:80",
        "[::1",
    ],
)
def test_parse_host_refuses_malformed(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_host(text, 443)
    assert info.value.failure is Failure.MALFORMED
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text", ["::1", "[::1]", "2001:db8::1", "[2001:db8::1]", "::ffff:127.0.0.1", "fe80::1%eth0"]
)
def test_parse_host_refuses_ipv6(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_host(text, 443)
    assert info.value.failure is Failure.IPV6_LITERAL
    assert "IPv6 literal" in str(info.value)
    assert "IPv4 only" in str(info.value)


def test_ipv6_reason_names_the_address() -> None:
    with pytest.raises(ProtocolError, match=r"^\[2001:db8::1\] is an IPv6 literal; "):
        parse_host("[2001:db8::1]", 443)


def test_ipv6_reason_hides_unprintable_scope() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_host("fe80::1%a\nb", 443)
    assert info.value.failure is Failure.IPV6_LITERAL
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("port", [0, -1, 65536, 1 << 40])
def test_parse_host_refuses_ports(port: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_host("example.com", port)
    assert info.value.failure is Failure.MALFORMED


@pytest.mark.parametrize("port", [1, 80, 65535])
def test_parse_host_accepts_ports(port: int) -> None:
    assert parse_host("example.com", port).port == port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com:443", Destination("example.com", 443, NAME)),
        ("Example.com.:8080", Destination("example.com", 8080, NAME)),
        ("1.2.3.4:1", Destination("1.2.3.4", 1, IPV4)),
        ("1.2.3.4:00080", Destination("1.2.3.4", 80, IPV4)),
    ],
)
def test_parse_authority(text: str, expected: Destination) -> None:
    assert parse_authority(text) == expected


@pytest.mark.parametrize(
    ("text", "failure"),
    [
        ("[::1]:443", Failure.IPV6_LITERAL),
        ("[::1]", Failure.IPV6_LITERAL),
        ("2001:db8::1", Failure.IPV6_LITERAL),
        ("[2001:db8::1]:443", Failure.IPV6_LITERAL),
        ("example.com", Failure.MALFORMED),
        ("example.com:", Failure.MALFORMED),
        ("example.com:0", Failure.MALFORMED),
        ("example.com:65536", Failure.MALFORMED),
        ("example.com:123456", Failure.MALFORMED),
        ("example.com:44a", Failure.MALFORMED),
        ("example.com:+443", Failure.MALFORMED),
        ("example.com:\u0664\u0664\u0663", Failure.MALFORMED),  # Arabic-Indic digits
        (":443", Failure.MALFORMED),
        ("[::1", Failure.MALFORMED),
        ("[::1]x", Failure.MALFORMED),
        ("[example.com]:443", Failure.MALFORMED),
        ("127.1:443", Failure.MALFORMED),
        ("a:b:c", Failure.MALFORMED),
        ("", Failure.MALFORMED),
    ],
)
def test_parse_authority_refuses(text: str, failure: Failure) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_authority(text)
    assert info.value.failure is failure


@pytest.mark.parametrize(
    ("text", "port"), [("example.com", 80), ("example.com:", 80), ("example.com:81", 81)]
)
def test_parse_authority_default_port(text: str, port: int) -> None:
    assert parse_authority(text, default_port=80) == Destination("example.com", port, NAME)


@given(names, ports)
def test_names_round_trip(name: str, port: int) -> None:
    expected = name.lower().removesuffix(".")
    assert parse_host(name, port) == Destination(expected, port, NAME)
    assert parse_authority(f"{name}:{port}") == Destination(expected, port, NAME)


@given(st.ip_addresses(v=4), ports)
def test_ipv4_round_trip(address: object, port: int) -> None:
    text = str(address)
    assert parse_host(text, port) == Destination(text, port, IPV4)
    assert parse_authority(f"{text}:{port}") == Destination(text, port, IPV4)


@given(st.ip_addresses(v=6), ports)
def test_ipv6_always_refused(address: object, port: int) -> None:
    for text in (str(address), f"[{address}]"):
        with pytest.raises(ProtocolError) as info:
            parse_host(text, port)
        assert info.value.failure is Failure.IPV6_LITERAL
    with pytest.raises(ProtocolError) as info:
        parse_authority(f"[{address}]:{port}")
    assert info.value.failure is Failure.IPV6_LITERAL


@given(st.text(max_size=300), st.integers(-10, 70000))
def test_any_text_gives_destination_or_protocol_error(text: str, port: int) -> None:
    result: Destination | ProtocolError
    try:
        result = parse_host(text, port)
    except ProtocolError as error:
        result = error
    if isinstance(result, ProtocolError):
        assert "\n" not in str(result)
    else:
        assert result.host == result.host.lower()
        assert 1 <= result.port <= 65535


@given(st.text(max_size=300))
def test_any_authority_gives_destination_or_protocol_error(text: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse_authority(text)
