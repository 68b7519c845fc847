"""``http.connect_failure``: the setting, and which HTTP answers it silences (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipv4proxy.cli import parse
from ipv4proxy.config import load
from ipv4proxy.errors import ConfigError, Failure, ProtocolError, UpstreamError
from ipv4proxy.protocols import ProtocolKind, Refused
from ipv4proxy.protocols.http import DESTINATION_FAILURES, HttpHandshake, error_response, silenced

SILENT_MODES = ("close", "reset")
# The failures that keep their status in every mode, and why.
KEEPS_STATUS = {
    Failure.MALFORMED: "the client sent a bad request",
    Failure.HEAD_TOO_LARGE: "the client sent a bad request",
    Failure.HANDSHAKE_TIMEOUT: "the client was too slow",
    Failure.UNSUPPORTED: "the client asked for something this proxy does not do",
    Failure.BAD_ADDRESS_TYPE: "the client sent a bad request",
    Failure.AUTH_REQUIRED: "the client must see the 407 challenge to authenticate",
    Failure.TOO_MANY_CONNECTIONS: "refused before any request: there is nothing to answer",
    Failure.IDLE_TIMEOUT: "ends a tunnel, never a request",
    Failure.OVERLOADED: "refused before the request is complete: nothing was dialled",
    Failure.DNS_BUSY: "the proxy is busy, not the destination: 503 tells the client to retry",
    Failure.BAD_RESPONSE: "a forwarded request's origin answered badly; never a CONNECT",
}


def _sorted(failures: Iterable[Failure]) -> list[Failure]:
    return sorted(failures, key=lambda failure: failure.name)


def test_every_failure_is_classified() -> None:
    assert DESTINATION_FAILURES.isdisjoint(KEEPS_STATUS)
    assert DESTINATION_FAILURES | set(KEEPS_STATUS) == set(Failure)


def test_default_is_reset() -> None:
    assert load().http.connect_failure == "reset"


@pytest.mark.parametrize(
    ("text", "environ", "argv"),
    [
        ("http: {connect_failure: close}", {}, []),
        ("", {"IPV4PROXY_HTTP_CONNECT_FAILURE": "close"}, []),
        ("", {"IPV4PROXY_HTTP_CONNECT_FAILURE": "status"}, ["--http-connect-failure", "close"]),
    ],
)
def test_every_spelling(text: str, environ: dict[str, str], argv: list[str]) -> None:
    if argv:
        assert parse(argv, environ).http.connect_failure == "close"
    else:
        assert load(text, environ).http.connect_failure == "close"


def test_bad_value_names_the_key() -> None:
    expected = r"^http\.connect_failure: expected one of reset, close, status, got 'rst'$"
    with pytest.raises(ConfigError, match=expected):
        load("http: {connect_failure: rst}")


def _connect(handshake: HttpHandshake, authority: str = "example.com:443") -> HttpHandshake:
    handshake.feed(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    return handshake


@pytest.mark.parametrize("failure", _sorted(DESTINATION_FAILURES))
def test_a_failed_connect_in_each_mode(failure: Failure) -> None:
    """close and reset: silenced (the session sends nothing, then a FIN or an RST:
    tests/unit/test_session.py); status: the response, cause in Proxy-Status."""
    handshake = _connect(HttpHandshake())
    error = UpstreamError("reason", failure=failure)
    for mode in SILENT_MODES:
        assert silenced(handshake.protocol, error, mode)
    assert not silenced(handshake.protocol, error, "status")
    response = handshake.error_reply(error)
    assert response == error_response(error)
    assert response.startswith(b"HTTP/1.1 %d " % failure.http_status)
    assert b'; details="reason"\r\n' in response


_SF_STRING = re.compile(rb'"(?:[ !#-\[\]-~]|\\["\\])*"')


@given(st.text(max_size=80))
def test_proxy_status_details_is_a_structured_field_string(reason: str) -> None:
    """Whatever the reason holds (quotes, backslashes, non-ASCII, line ends), the header
    is one line of printable ASCII whose details parameter is a valid sf-string."""
    response = error_response(UpstreamError(reason, failure=Failure.NXDOMAIN))
    header = response.split(b"\r\n")[1]
    prefix = b'Proxy-Status: ipv4proxy; error=dns_error; rcode="NXDOMAIN"; details='
    assert header.startswith(prefix)
    assert _SF_STRING.fullmatch(header[len(prefix) :]) is not None


@pytest.mark.parametrize("mode", SILENT_MODES)
@pytest.mark.parametrize("failure", _sorted(KEEPS_STATUS))
def test_silent_modes_keep_the_status_for_client_errors(failure: Failure, mode: str) -> None:
    handshake = _connect(HttpHandshake())
    error = ProtocolError("reason", failure=failure)
    assert not silenced(handshake.protocol, error, mode)
    assert handshake.error_reply(error) == error_response(error)


@pytest.mark.parametrize("mode", SILENT_MODES)
def test_silent_modes_cover_a_refused_ipv6_connect(mode: str) -> None:
    """The IPv6 literal is refused while parsing; the reply still knows it was a CONNECT."""
    handshake = HttpHandshake()
    [refused] = handshake.feed(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n")
    assert isinstance(refused, Refused)
    assert refused.error.failure is Failure.IPV6_LITERAL
    assert silenced(handshake.protocol, refused.error, mode)


@pytest.mark.parametrize("mode", SILENT_MODES)
@pytest.mark.parametrize("failure", _sorted(DESTINATION_FAILURES))
def test_forwarding_keeps_its_status_in_silent_modes(failure: Failure, mode: str) -> None:
    """A forwarded request's error status is its response: every client handles that."""
    handshake = HttpHandshake()
    handshake.feed(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert handshake.protocol is ProtocolKind.HTTP_FORWARD
    error = UpstreamError("reason", failure=failure)
    assert not silenced(handshake.protocol, error, mode)
