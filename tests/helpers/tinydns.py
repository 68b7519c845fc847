"""A tiny authoritative DNS server plus a TCP listener, for use inside a network namespace.

Run as a program (``ip netns exec NS python3 tests/helpers/tinydns.py NAME=ADDR ...``): it
binds UDP and TCP on 127.0.0.1 port 0, prints ``dns=PORT tcp=PORT`` on one line, then
answers A and AAAA questions for the names given (an IPv4 address makes an A record, an
IPv6 one an AAAA record; TTL 60) until it is killed; any other name is NXDOMAIN. The TCP
listener never accepts: the kernel completes handshakes into its backlog, which is all a
connect-time probe needs. Every question is answered from memory; nothing is forwarded.
"""

from __future__ import annotations

import ipaddress
import socket
import sys

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

# Real questions are a few dozen bytes; a UDP DNS message is at most 512 without EDNS.
_MAX_QUERY = 4096
# Questions answered before the server ends on its own (a runaway-loop bound).
_MAX_QUERIES = 10_000


def _records(args: list[str]) -> dict[tuple[str, int], list[str]]:
    table: dict[tuple[str, int], list[str]] = {}
    for arg in args:
        name, _, address = arg.partition("=")
        kind = dns.rdatatype.A if ipaddress.ip_address(address).version == 4 else dns.rdatatype.AAAA
        table.setdefault((name.lower().rstrip(".") + ".", kind), []).append(address)
    return table


def main() -> None:
    table = _records(sys.argv[1:])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(64)
    print(f"dns={udp.getsockname()[1]} tcp={tcp.getsockname()[1]}", flush=True)
    for _ in range(_MAX_QUERIES):
        data, peer = udp.recvfrom(_MAX_QUERY)
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            continue
        reply = dns.message.make_response(query)
        question = query.question[0]
        names = {name for name, _ in table}
        addresses = table.get((question.name.to_text().lower(), question.rdtype))
        if addresses:
            reply.answer.append(
                dns.rrset.from_text_list(question.name, 60, "IN", question.rdtype, addresses)
            )
        elif question.name.to_text().lower() not in names:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        udp.sendto(reply.to_wire(), peer)


if __name__ == "__main__":
    main()
