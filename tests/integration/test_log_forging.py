"""A client cannot forge a line of the proxy's text log (issue 12, item 6).

The exact shapes of the issue, sent over real sockets to a real proxy (with auth.users set,
so SOCKS4a is refused without credentials): a SOCKS5 domain, a SOCKS5 BIND domain, a SOCKS4a
host and an HTTP CONNECT target holding ``\\n<a whole access line>\\x1b[2J``. The proxy's log
file must keep one line per record, no forged ``outcome=ok``, and each logged target must
read back (``ipv4proxy.log.parse_fields``) as exactly what the client sent.
"""

from __future__ import annotations

import re
import struct

from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.wire import Tunnel, open_tunnel_socket
from ipv4proxy.log import parse_fields

USER, PASSWORD = b"alice", b"forging-test-password"
FORGED = (
    "\n2026-12-03T06:00:00.000Z INFO ipv4proxy.access tunnel client=203.0.113.9:4444 "
    "protocol=socks5 target=bank.example:443 address=198.51.100.1 via=direct outcome=ok"
    "\r\x1b[2J\x00\u2028\x85"
)
# What a record of the text format starts with: the UTC stamp, a level, a logger.
_RECORD = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) \S+ ")
_LOG_SECONDS = 5.0


async def _exchange(proxy: ProxyProcess, data: bytes, reply_size: int) -> bytes:
    tunnel: Tunnel = await open_tunnel_socket(proxy.port)
    try:
        tunnel.writer.write(data)
        return await tunnel.read_exactly(reply_size)
    finally:
        await tunnel.close()


def _socks5(command: int, host: bytes) -> bytes:
    auth = b"\x01" + bytes((len(USER),)) + USER + bytes((len(PASSWORD),)) + PASSWORD
    request = b"\x05" + bytes((command,)) + b"\x00\x03" + bytes((len(host),)) + host
    return b"\x05\x01\x02" + auth + request + struct.pack("!H", 443)


async def test_client_bytes_never_forge_a_log_line(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(("--auth-users", f"{USER.decode()}:{PASSWORD.decode()}"))
    # The bytes after the first LF are latin-1 on the wire for SOCKS (a byte per char);
    # U+2028 cannot be one byte, so the SOCKS hosts carry its UTF-8 bytes instead.
    host = FORGED.encode("utf-8")
    assert len(host) < 256
    mark = proxy.mark()

    # SOCKS5 CONNECT, then BIND, to the forged domain (after valid credentials).
    reply = await _exchange(proxy, _socks5(1, host), 2 + 2 + 10)
    assert reply[:4] == b"\x05\x02\x01\x00"  # method user/pass; auth ok
    assert reply[5] != 0  # refused
    reply = await _exchange(proxy, _socks5(2, host), 2 + 2 + 10)
    assert reply[5] != 0
    # SOCKS4a with no credentials at all: the host is read before auth is judged.
    # (NUL ends a SOCKS4 field, so this host carries none.)
    host4 = host.replace(b"\x00", b"")
    reply = await _exchange(proxy, b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00" + host4 + b"\x00", 8)
    assert reply[1] != 0x5A
    # HTTP CONNECT whose target holds the forged line.
    connect = b"CONNECT x" + host + b":443 HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = await _exchange(proxy, connect, 12)
    assert reply.startswith(b"HTTP/1.1 4")

    def tunnel_lines() -> int:
        return sum(" tunnel " in line for line in proxy.logs()[mark:])

    proxy.wait_for_line(lambda _: tunnel_lines() >= 4, _LOG_SECONDS, since=mark)
    proxy.stop()  # every line is in the file once the process is gone

    raw = proxy.log_path.read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        assert _RECORD.match(line) is not None, line  # each line is a record of its own
        assert b"\r" not in line
        assert b"\x1b" not in line
        assert b"\x00" not in line
        assert "\u2028" not in line.decode("utf-8")
    records = [parse_fields(line.decode("utf-8")) for line in lines[:-1]]
    assert all(fields.get("outcome") != "ok" for fields in records)
    tunnels = [fields for fields in records if "outcome" in fields]
    assert len(tunnels) == 4, raw.decode("utf-8", "replace")
    forged = host.decode("latin-1")
    by_protocol = {(fields["protocol"], fields["target"]) for fields in tunnels}
    assert ("socks5", forged + ":443") in by_protocol  # read back exactly, from CONNECT
    assert ("socks4a", host4.decode("latin-1") + ":443") in by_protocol
    # The BIND line names the target; the CONNECT line is refused before its target is read
    # (a bare LF in the head), so it shows what it could.
    assert sum(protocol == "socks5" for protocol, _ in by_protocol) >= 1
    assert any(protocol.startswith("http") for protocol, _ in by_protocol)
