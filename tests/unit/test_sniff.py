"""The first byte: which ones start a protocol, and what the others get (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ipv4proxy.errors import Failure
from ipv4proxy.protocols import new_handshake
from ipv4proxy.protocols.http import HttpHandshake
from ipv4proxy.protocols.sniff import TLS_REASON, foreign

TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def test_tls_is_closed_with_the_reason() -> None:
    refusal = foreign(0x16)
    assert refusal is not None
    assert refusal.reply == b""
    assert str(refusal.error) == TLS_REASON
    assert refusal.error.failure is Failure.MALFORMED


def test_socks_and_method_bytes_pass() -> None:
    for first in [0x04, 0x05, *TCHAR]:
        assert foreign(first) is None, first


@given(st.integers(0, 255))
def test_every_other_byte_is_a_400_that_names_it(first: int) -> None:
    refusal = foreign(first)
    if first in (0x04, 0x05) or first in TCHAR:
        assert refusal is None
        return
    assert refusal is not None
    if first == 0x16:
        return
    assert refusal.reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert f"0x{first:02x}" in str(refusal.error)
    assert refusal.reply.count(b"\n") == 6  # a head of 5 lines, a body of one


def test_a_method_byte_still_reaches_the_http_handshake() -> None:
    assert isinstance(new_handshake(ord("G")), HttpHandshake)
