"""A scripted nameserver on 127.0.0.1 (real UDP and TCP), and a count of a process's UDP sockets.

`ScriptedNameserver` answers the names in ``answers`` and does ``mode`` with every other
UDP question:

- ``drop``: read it and never answer (a nameserver that has gone silent);
- ``truncate``: answer with the TC flag and no records, so the client must ask over TCP,
  where the full answer comes;
- ``decoy``: first send an answer with another ID (a forger's guess), then the real one.

It records each question's name and the source port it came from, so a test sees how many
sockets a client spread its queries over. It runs in a thread, so an in-process resolver
and a proxy subprocess can both use it. Every loop is bounded in count and time.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import threading
from collections import Counter
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["ScriptedNameserver", "udp_sockets"]

_POLL_SECONDS = 0.05
_MAX_POLLS = int(3600 / _POLL_SECONDS)  # an hour of polls: far beyond any test
_JOIN_SECONDS = 5.0
_TCP_SECONDS = 2.0
_BIND_TRIES = 50


class ScriptedNameserver:
    """UDP and TCP on 127.0.0.1:`port`; see the module docstring for ``mode``."""

    def __init__(self, mode: str = "drop", answers: dict[str, str] | None = None) -> None:
        if mode not in {"drop", "truncate", "decoy", "answer"}:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.answers = dict(answers or {})
        self.names: Counter[str] = Counter()
        self.tcp_names: Counter[str] = Counter()
        self.source_ports: set[int] = set()
        self.port = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None

    def start(self) -> None:
        """Bind UDP and TCP on one port the kernel picks (a UDP port may be a busy TCP one:
        bounded retries), and serve in a thread."""
        for _ in range(_BIND_TRIES):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                udp.bind(("127.0.0.1", 0))
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            break
        else:
            raise OSError(f"no port free for both UDP and TCP in {_BIND_TRIES} tries")
        self.port = udp.getsockname()[1]
        tcp.listen(16)
        self._udp, self._tcp = udp, tcp
        self._thread = threading.Thread(target=self._serve, name="scripted-dns", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_JOIN_SECONDS)
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()

    def __enter__(self) -> ScriptedNameserver:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def distinct_names(self) -> int:
        with self._lock:
            return len(self.names)

    def _serve(self) -> None:
        assert self._udp is not None
        assert self._tcp is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ)
            selector.register(self._tcp, selectors.EVENT_READ)
            for _ in range(_MAX_POLLS):
                if self._stop.is_set():
                    return
                for key, _ in selector.select(_POLL_SECONDS):
                    if key.fileobj is self._udp:
                        self._datagram()
                    else:
                        self._stream()

    def _datagram(self) -> None:
        assert self._udp is not None
        try:
            data, peer = self._udp.recvfrom(65535)
        except OSError:
            return
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        name = query.question[0].name.to_text(omit_final_dot=True).lower()
        with self._lock:
            self.names[name] += 1
            self.source_ports.add(peer[1])
        if name in self.answers or self.mode == "answer":
            self._udp.sendto(self._answer(query, name).to_wire(), peer)
        elif self.mode == "truncate":
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC
            self._udp.sendto(response.to_wire(), peer)
        elif self.mode == "decoy":
            decoy = self._answer(query, name, address="127.0.0.66")
            decoy.id = (query.id + 1) % 65536
            self._udp.sendto(decoy.to_wire(), peer)
            self._udp.sendto(self._answer(query, name).to_wire(), peer)
        # "drop": read, counted, never answered

    def _stream(self) -> None:
        assert self._tcp is not None
        try:
            conn, _ = self._tcp.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(_TCP_SECONDS)
            try:
                (length,) = struct.unpack("!H", _read_exactly(conn, 2))
                query = dns.message.from_wire(_read_exactly(conn, length))
            except (OSError, ValueError, dns.exception.DNSException):
                return
            name = query.question[0].name.to_text(omit_final_dot=True).lower()
            with self._lock:
                self.tcp_names[name] += 1
            wire = self._answer(query, name).to_wire()
            try:
                conn.sendall(struct.pack("!H", len(wire)) + wire)
            except OSError:
                return

    def _answer(
        self, query: dns.message.Message, name: str, address: str = ""
    ) -> dns.message.Message:
        response = dns.message.make_response(query)
        rrset = dns.rrset.from_text(
            query.question[0].name,
            60,
            dns.rdataclass.IN,
            dns.rdatatype.A,
            address or self.answers.get(name, "127.0.0.1"),
        )
        response.answer.append(rrset)
        return response


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    for _ in range(size + 1):  # each recv returns at least one byte or ends the stream
        if len(data) >= size:
            return data
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("stream ended")
        data += chunk
    return data


def udp_sockets(pid: int) -> int:
    """How many UDP sockets process ``pid`` holds: its socket descriptors whose inode is in
    its network namespace's /proc/PID/net/udp table."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / entry)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    table = Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]
    return sum(1 for line in table if line.split()[9] in inodes)
