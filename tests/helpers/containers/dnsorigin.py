"""A stand-in upstream DNS server, run inside a test pod (needs dnspython: run it with the
ipv4proxy image's Python).

    python3 dnsorigin.py PORT NAME=ADDRESS...

Answers A and AAAA questions over UDP on 127.0.0.1:PORT from the table given (an IPv4
address makes an A record, an IPv6 one an AAAA record; TTL 60), NXDOMAIN for any other
name, and prints one line per question, so a test can see what was asked. It runs until
it is stopped, or until it has answered `MAX_QUERIES` questions.
"""

from __future__ import annotations

import ipaddress
import socket
import sys

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

MAX_QUERIES = 10_000


def main(port: int, entries: list[str]) -> None:
    table: dict[tuple[str, int], list[str]] = {}
    for entry in entries:
        name, _, address = entry.partition("=")
        kind = dns.rdatatype.A if ipaddress.ip_address(address).version == 4 else dns.rdatatype.AAAA
        table.setdefault((name.lower().rstrip(".") + ".", kind), []).append(address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
        print(f"dnsorigin ready on 127.0.0.1:{port}", flush=True)
        for _ in range(MAX_QUERIES):
            data, peer = sock.recvfrom(4096)
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            reply = dns.message.make_response(query)
            for question in query.question:
                name = question.name.to_text().lower()
                asked = dns.rdatatype.to_text(question.rdtype)
                print(f"dnsorigin asked {name} {asked}", flush=True)
                addresses = table.get((name, question.rdtype), [])
                if addresses:
                    reply.answer.append(
                        dns.rrset.from_text_list(name, 60, "IN", question.rdtype, addresses)
                    )
                elif not any(key[0] == name for key in table):
                    reply.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(reply.to_wire(), peer)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
