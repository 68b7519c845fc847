"""The lab's service host, as one program run inside the service network namespace.

    python3 -m helpers.lab_service CONFIG.json

It serves, until SIGTERM or SIGINT:

- DNS over UDP on each of ``dns_addresses`` (port 53), answering from ``zone`` (name ->
  {"A": [...], "AAAA": [...]}) **in the order given**: dnsmasq rotates multi-record
  answers, and the lab needs a fixed order (the failover case puts two black holes first).
  A known name without records of the asked type gets NODATA (NOERROR, empty answer, SOA);
  any other name NXDOMAIN. Every question is appended to ``query_log`` as one JSON line
  with the address it arrived on, so a test can tell the proxy's questions from the
  clients' (they are sent to different addresses) and prove that no AAAA was asked.
- HTTPS on 0.0.0.0:443 and [::]:443 (aiohttp, the lab CA's certificate): ``/ws`` a
  WebSocket echo, ``/media`` the deterministic `Payload` of ``media_blocks`` MiB (the media
  path), ``/hello`` a small JSON answer naming the address the client reached.

When everything listens it prints ``ready`` on stdout.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import Any, TextIO, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from aiohttp import web

from helpers.servers import Payload, payload_handler, ws_echo

__all__ = ["main"]

# Short: the proxy caches answers for their TTL (at least 1 s), and a test that looks for
# a fresh question should not have to wait long.
_TTL = 1
_HTTPS_PORT = 443
_DNS_PORT = 53
_ZONE_ORIGIN = dns.name.from_text("lab.test.")
_SOA = "ns.lab.test. hostmaster.lab.test. 1 3600 600 86400 1"


class _Dns(asyncio.DatagramProtocol):
    """Answers questions arriving on one address; logs each one."""

    def __init__(self, local: str, zone: dict[str, dict[str, list[str]]], log: TextIO) -> None:
        self._local = local
        self._zone = zone
        self._log = log
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport (the selector one is not a DatagramTransport subclass).
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return  # not a DNS message: nothing to answer
        if not query.question or self._transport is None:
            return
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        qtype = dns.rdatatype.to_text(question.rdtype)
        self._log.write(
            json.dumps(
                {
                    "server": self._local,
                    "client": addr[0],
                    "port": addr[1],
                    "qtype": qtype,
                    "name": name,
                }
            )
            + "\n"
        )
        self._log.flush()
        # In the zone's order: dnspython shuffles an RRset's records unless told not to,
        # and the shaping cases need each record order as listed.
        answer = self._answer(query, name, qtype).to_wire(want_shuffle=False)
        self._transport.sendto(answer, addr)

    def _answer(self, query: dns.message.Message, name: str, qtype: str) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        records = self._zone.get(name)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        addresses = (records or {}).get(qtype, [])
        if addresses:
            rrset = dns.rrset.from_text_list(
                query.question[0].name, _TTL, dns.rdataclass.IN, qtype, addresses
            )
            response.answer.append(rrset)
        else:
            response.authority.append(
                dns.rrset.from_text(_ZONE_ORIGIN, _TTL, dns.rdataclass.IN, "SOA", _SOA)
            )
        return response


async def _hello(request: web.Request) -> web.Response:
    transport = request.transport
    local = transport.get_extra_info("sockname")[0] if transport else "-"
    return web.json_response({"host": request.headers.get("Host", ""), "local": local})


def _listener(family: socket.AddressFamily, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, _HTTPS_PORT))
    return sock


async def _serve(config: dict[str, Any], log: TextIO) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(config["cert_file"], config["key_file"])
    app = web.Application()
    app.router.add_get("/ws", ws_echo)
    app.router.add_get("/media", payload_handler(Payload(blocks=int(config["media_blocks"]))))
    app.router.add_get("/hello", _hello)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        await web.SockSite(runner, _listener(family, host), ssl_context=tls).start()

    transports = []
    for address in config["dns_addresses"]:
        transport, _ = await loop.create_datagram_endpoint(
            functools.partial(_Dns, address, config["zone"], log),
            local_addr=(address, _DNS_PORT),
        )
        transports.append(transport)
    print("ready", flush=True)
    await stop.wait()
    for transport in transports:
        transport.close()
    await runner.cleanup()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 -m helpers.lab_service CONFIG.json", file=sys.stderr)
        return 64
    config = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    with Path(config["query_log"]).open("a", encoding="utf-8") as log:
        asyncio.run(_serve(config, log))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
