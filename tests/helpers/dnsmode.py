"""Upstreams for the DNS listener's tests (DNS mode): dnsmasq's records, and an echo server.

`DNS_MODE_ARGS` are extra dnsmasq options (``helpers.dnsmasq.Dnsmasq(extra_args=...)``)
that add, beside the shared names (``dual.test``: A and AAAA ...):

- ``alias.test`` CNAME ``dual.test``; ``chain.test`` CNAME ``alias.test``
- ``svc.test`` HTTPS ``1 . alpn=h2 ipv4hint=127.0.0.1 ipv6hint=::1``
- ``svcb.test`` SVCB ``1 svc.test. mandatory=ipv6hint port=8443 ipv6hint=::1``
- ``big.test``: 59 A records (an answer over 512 bytes: TC without EDNS)

Every record has a TTL of 60 s (dnsmasq's default local TTL is 0: nothing would be cached).
dnsmasq puts no SOA in its negative answers, so `zone_args` sends the zone ``zone.test``
to an `EchoUpstream`, which does.

`EchoUpstream` is a UDP nameserver on 127.0.0.1 that echoes the query's EDNS options and CD
flag back and answers by the first label of the name:

- ``servfail.*``: SERVFAIL;
- ``gone.*``: NXDOMAIN with an SOA (TTL and MINIMUM 60) in the authority section;
- ``v4.*``: A 127.0.0.6; an AAAA question gets NODATA with the SOA;
- anything else: A 127.0.0.7, or for AAAA a CNAME to ``edge.<name>`` and its AAAA ::7.

It keeps the options each query carried, so a test sees what reached it.
"""

from __future__ import annotations

import socket
import threading

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset

__all__ = ["DNS_MODE_ARGS", "EchoUpstream", "zone_args"]


def _rr(rdtype: str, text: str) -> str:
    wire = dns.rdata.from_text("IN", rdtype, text).to_wire()
    assert wire is not None
    return wire.hex()


def zone_args(port: int) -> tuple[str, ...]:
    """dnsmasq options that forward ``zone.test`` to an `EchoUpstream` on ``port``."""
    return (f"--server=/zone.test/127.0.0.1#{port}",)


DNS_MODE_ARGS: tuple[str, ...] = (
    "--local-ttl=60",
    "--neg-ttl=60",
    "--auth-ttl=60",
    "--cname=alias.test,dual.test",
    "--cname=chain.test,alias.test",
    f"--dns-rr=svc.test,65,{_rr('HTTPS', '1 . alpn=h2 ipv4hint=127.0.0.1 ipv6hint=::1')}",
    "--dns-rr=svcb.test,64," + _rr("SVCB", "1 svc.test. mandatory=ipv6hint port=8443 ipv6hint=::1"),
    *(f"--host-record=big.test,127.0.1.{i}" for i in range(1, 60)),
)

# The thread's receive timeout (so stop() is seen quickly) and a bound on its loop.
_POLL_SECONDS = 0.05
_MAX_POLLS = int(3600 / _POLL_SECONDS)


class EchoUpstream:
    """A UDP nameserver on 127.0.0.1:`port` echoing EDNS options; `start()` / `stop()`."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(_POLL_SECONDS)
        self.port: int = self._sock.getsockname()[1]
        self.options: list[list[dns.edns.Option]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="echo-dns", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> EchoUpstream:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self) -> None:
        for _ in range(_MAX_POLLS):
            if self._stop.is_set():
                return
            try:
                data, peer = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            self.options.append(list(query.options))
            self._sock.sendto(_answer(query), peer)


def _answer(query: dns.message.Message) -> bytes:
    response = dns.message.make_response(query)
    response.flags |= query.flags & dns.flags.CD
    if query.edns >= 0:
        response.use_edns(0, query.ednsflags, 1232, options=list(query.options))
    question = query.question[0]
    name = question.name
    first = name.labels[0].decode() if name.labels else ""
    aaaa = question.rdtype == dns.rdatatype.AAAA
    soa = dns.rrset.from_text(
        name.parent(), 60, "IN", "SOA", "ns.zone.test. admin.zone.test. 1 3600 600 86400 60"
    )
    if first == "servfail":
        response.set_rcode(dns.rcode.SERVFAIL)
    elif first == "gone":
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(soa)
    elif first == "v4" and aaaa:
        response.authority.append(soa)
    elif aaaa:
        edge = dns.name.Name((b"edge", *name.labels))
        response.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", edge.to_text()))
        response.answer.append(dns.rrset.from_text(edge, 60, "IN", "AAAA", "::7"))
    elif question.rdtype == dns.rdatatype.A:
        address = "127.0.0.6" if first == "v4" else "127.0.0.7"
        response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", address))
    wire: bytes = response.to_wire()
    return wire
