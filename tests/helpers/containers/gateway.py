"""A stand-in gateway, run inside a test pod beside ipv4proxy (standard library only).

    python3 gateway.py URL...

Does what docs/deployment.md asks of a gateway next to the classic sidecar: it waits (at
most 60 s) until the proxy's /readyz answers 200 on 127.0.0.1:9128. Then, for each URL, it
records what the system resolver (getaddrinfo, any family) returns for its host, and
fetches it with urllib, which takes its proxy from HTTPS_PROXY / HTTP_PROXY / NO_PROXY
like most HTTP clients (no variable: a direct connection), and TLS trust from
SSL_CERT_FILE. Each result is one JSON line on stdout (the test reads `podman logs`);
then it sleeps until the pod is stopped, so the pod stays up.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sys
import time
import urllib.parse
import urllib.request

READY_TRIES = 120
READY_PAUSE = 0.5
# How long the container stays up after its requests (the test stops it well before).
LINGER_SECONDS = 600


def record(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def wait_ready() -> int:
    for attempt in range(1, READY_TRIES + 1):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", 9128, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return attempt
        except OSError:
            pass
        time.sleep(READY_PAUSE)
    return 0


def main(urls: list[str]) -> None:
    # PID 1 of its container: without a handler, SIGTERM would be ignored until SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    attempts = wait_ready()
    record(event="ready" if attempts else "never-ready", attempts=attempts)
    for url in urls:
        host = urllib.parse.urlsplit(url).hostname or ""
        try:
            infos = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
            addresses = [[info[0].name, info[4][0]] for info in infos]
            record(event="resolved", host=host, addresses=addresses)
        except OSError as exc:
            record(event="unresolved", host=host, error=str(exc))
        try:
            with urllib.request.urlopen(url, timeout=15) as response:
                record(
                    event="fetched", url=url, status=response.status, body=response.read().decode()
                )
        except (OSError, ValueError) as exc:
            record(event="failed", url=url, error=str(exc))
    record(event="done")
    time.sleep(LINGER_SECONDS)


if __name__ == "__main__":
    main(sys.argv[1:])
