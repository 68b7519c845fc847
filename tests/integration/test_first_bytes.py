"""First bytes that start no protocol are refused at once, not at the handshake timeout.

The proxy here waits a minute for a handshake, longer than every read of these tests
(helpers.wire.WIRE_SECONDS) and curl's own --max-time: an answer that came only at the
timeout would fail them, so no test needs a clock.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers.programs import run_curl
from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.servers import TestServers
from helpers.wire import http_raw, open_tunnel_socket
from ipv4proxy.protocols.sniff import TLS_REASON

# A TLS 1.2 record header and the start of a ClientHello, as curl sends it.
CLIENT_HELLO = bytes.fromhex("160301020001000200fc0303") + bytes(32)


@pytest.fixture(scope="module")
def patient(proxy_factory: ProxyFactory) -> Iterator[ProxyProcess]:
    process = proxy_factory(("--limits-handshake-timeout", "60"))
    yield process
    process.stop()


@pytest.mark.parametrize(
    "data", [b"\x06\x01\x00", b"\x00\x00", b"\xff", b" GET / HTTP/1.1\r\n\r\n", b"\r\n"]
)
async def test_foreign_first_byte_is_400_at_once(patient: ProxyProcess, data: bytes) -> None:
    tunnel, reply = await http_raw(patient.port, data)
    rest = await tunnel.read_to_eof()
    await tunnel.close()
    assert reply.status == 400, reply
    expected = f"the first byte 0x{data[0]:02x} starts neither SOCKS4 (0x04), SOCKS5 (0x05)"
    assert reply.body_text.startswith(expected), reply
    assert rest == b""
    fields = await patient.access(client=tunnel.client, after=tunnel.opened)
    assert fields["outcome"] == "MALFORMED", fields
    assert fields["reason"].startswith(expected), fields


async def test_tls_client_hello_is_closed_at_once(patient: ProxyProcess) -> None:
    tunnel = await open_tunnel_socket(patient.port)
    tunnel.writer.write(CLIENT_HELLO)
    assert await tunnel.read_to_eof() == b""  # closed, with no answer a TLS client misreads
    await tunnel.close()
    fields = await patient.access(client=tunnel.client, after=tunnel.opened)
    assert fields["reason"] == TLS_REASON, fields
    assert fields["outcome"] == "MALFORMED", fields


def test_curl_with_an_https_proxy_url_fails_fast(
    patient: ProxyProcess, servers: TestServers
) -> None:
    """``HTTPS_PROXY=https://proxy``: curl speaks TLS to the proxy, which closes at once:
    curl fails with a TLS error, not its timeout (exit 28), and the log says what to fix."""
    mark = patient.mark()
    env = {"HTTPS_PROXY": f"https://127.0.0.1:{patient.port}"}
    result = run_curl(["--proxy-insecure", f"https://v4.test:{servers.https_port}/hello"], env)
    assert result.returncode not in (0, 28), result
    fields = patient.wait_for_access(since=mark, reason=TLS_REASON)
    assert fields["outcome"] == "MALFORMED", fields


@pytest.mark.parametrize("first", [0x04, 0x05, ord("G"), ord("C"), ord("p")])
async def test_protocol_first_bytes_still_wait(patient: ProxyProcess, first: int) -> None:
    """The bytes that can start SOCKS4, SOCKS5 or a method are not refused: the proxy waits
    for the rest (here the client ends, and nothing was answered)."""
    tunnel = await open_tunnel_socket(patient.port)
    tunnel.writer.write(bytes([first]))
    await tunnel.writer.drain()
    tunnel.writer.write_eof()
    assert await tunnel.read_to_eof() == b""
    await tunnel.close()
