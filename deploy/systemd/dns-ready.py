"""Exit 0 once ipv4proxy's DNS listener answers; the start gate of DNS mode.

    python3 dns-ready.py [HOST:PORT] [--wait SECONDS]

Sends one question (". NS", recursion desired) over UDP to HOST:PORT (127.0.0.1:53) and
exits 0 only when an answer with the same ID comes back whose rcode is NOERROR or
NXDOMAIN: the listener is bound, this client is allowed, and the upstream resolver
answered through it. SERVFAIL (upstream not reachable yet), REFUSED (a client rule) or
silence exit 1. With --wait it asks again every 0.2 s until that many seconds have passed
(systemd's ExecStartPost); without it, once (a Kubernetes startupProbe or a compose
healthcheck, which retry by themselves). Standard library only: it runs in the ipv4proxy
image and venv, where no dig or nslookup exists.
"""

import os
import socket
import sys
import time

# Each try waits this long for its answer; a local listener answers in milliseconds, the
# rest is the upstream's round trip.
TRY_SECONDS = 2.0
RETRY_SECONDS = 0.2
# Datagrams read per try while waiting for the one with the question's ID.
MAX_DATAGRAMS = 8
NOERROR, NXDOMAIN = 0, 3


def ask(host: str, port: int) -> bool:
    query_id = os.urandom(2)
    # flags RD; one question; root name; type NS (2); class IN (1). RFC 1035 section 4.1.
    query = query_id + bytes.fromhex("0100 0001 0000 0000 0000 00 0002 0001")
    reply = b""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TRY_SECONDS)
            sock.connect((host, port))
            sock.send(query)
            # A datagram with another ID (a late answer, a forgery) is not the answer.
            for _ in range(MAX_DATAGRAMS):
                reply = sock.recv(4096)
                if len(reply) >= 12 and reply[:2] == query_id and reply[2] & 0x80:
                    break
            else:
                print(f"dns-ready: {host}:{port}: no answer to the question", file=sys.stderr)
                return False
    except OSError as exc:
        print(f"dns-ready: {host}:{port}: {exc}", file=sys.stderr)
        return False
    rcode = reply[3] & 0x0F
    if rcode not in (NOERROR, NXDOMAIN):
        print(f"dns-ready: {host}:{port}: rcode {rcode}", file=sys.stderr)
        return False
    return True


def main(argv: list[str]) -> int:
    wait = 0.0
    if "--wait" in argv:
        at = argv.index("--wait")
        wait = float(argv[at + 1])
        del argv[at : at + 2]
    host, _, port = (argv[0] if argv else "127.0.0.1:53").rpartition(":")
    deadline = time.monotonic() + wait
    while not ask(host, int(port)):
        if time.monotonic() + RETRY_SECONDS >= deadline:
            return 1
        time.sleep(RETRY_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
