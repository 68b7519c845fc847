"""A tiny authoritative DNS server on 127.0.0.1 (real UDP), whose answers a test changes.

dnsmasq (``helpers.dnsmasq``) is the fixed world every test shares; this one is for tests
that change or stop DNS mid-run: change a record, drop it (NXDOMAIN), go silent (queries
time out), or stop (the port is closed; queries are refused), then start again on the same
port. It answers from `records` with dnspython's message API; every negative answer
carries an SOA in its authority section (RFC 2308), whose TTL and MINIMUM the test sets.

Answers keep the order the test gave (dnspython would shuffle them).
It runs in a thread, so both an in-process resolver and a proxy subprocess can use it.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DnsServer", "Record"]

# The thread's receive timeout, so stop() is seen quickly, and a bound on its loop
# (a day of idle polls: far beyond any test, but not forever).
_POLL_SECONDS = 0.05
_MAX_POLLS = int(86400 / _POLL_SECONDS)
_JOIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Record:
    """A name's A records and their TTL; no addresses means the name exists with no A (NODATA)."""

    addresses: tuple[str, ...]
    ttl: int = 60


class DnsServer:
    """`records` (name -> Record) answered on 127.0.0.1:`port`; `queries` counts (name, type)."""

    def __init__(self, *, soa_ttl: int = 30, soa_minimum: int = 30) -> None:
        self.records: dict[str, Record] = {}
        self.soa_ttl = soa_ttl
        self.soa_minimum = soa_minimum
        self.silent = False
        self.queries: Counter[tuple[str, str]] = Counter()
        self.port = 0
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def set(self, name: str, *addresses: str, ttl: int = 60) -> None:
        with self._lock:
            self.records[name] = Record(tuple(addresses), ttl)

    def remove(self, name: str) -> None:
        with self._lock:
            self.records.pop(name, None)

    def count(self, name: str, qtype: str = "A") -> int:
        with self._lock:
            return self.queries[(name, qtype)]

    def start(self) -> None:
        """Listen (on the same port again after a stop) and answer in a thread."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.settimeout(_POLL_SECONDS)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the port: from now on queries are refused (ICMP port unreachable)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_JOIN_SECONDS)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        for _ in range(_MAX_POLLS):
            if self._stop.is_set():
                return
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._answer(data)
            if reply is not None:
                sock.sendto(reply, peer)

    def _answer(self, data: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:  # a test server ignores garbage
            return None
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        qtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries[(name, qtype)] += 1
            if self.silent:
                return None
            record = self.records.get(name)
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        if record is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        if record is not None and record.addresses and question.rdtype == dns.rdatatype.A:
            reply.answer.append(
                dns.rrset.from_text_list(
                    question.name, record.ttl, dns.rdataclass.IN, dns.rdatatype.A, record.addresses
                )
            )
        else:
            reply.authority.append(self._soa(question.name))
        # Unshuffled, so a test knows which address a client tries first.
        wire: bytes = reply.to_wire(want_shuffle=False)
        return wire

    def _soa(self, name: dns.name.Name) -> dns.rrset.RRset:
        zone = name.parent() if len(name) > 2 else name
        text = f"ns.{zone} admin.{zone} 1 3600 600 86400 {self.soa_minimum}"
        return dns.rrset.from_text(zone, self.soa_ttl, dns.rdataclass.IN, dns.rdatatype.SOA, text)

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
