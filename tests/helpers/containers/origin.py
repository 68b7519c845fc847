"""A stand-in destination, run inside a test container (standard library only).

    python3 origin.py [--sysctl NAME=VALUE]... [--http PORT]... [--https PORT --cert PEM --key PEM]

Answers every GET with 200 and ``origin <scheme> <port> <path>``, so a test can tell which
listener a request reached. Listens on 127.0.0.1 only: it is reached by the proxy in the
same pod, never from outside. Runs until it is stopped (SIGTERM ends Python at once).
--sysctl first writes a network sysctl of the pod's namespace (the container must be
privileged: podman 4.3's kube play does not apply a pod's securityContext.sysctls).
"""

from __future__ import annotations

import argparse
import http.server
import signal
import ssl
import sys
import threading


def handler(scheme: str, port: int) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = f"origin {scheme} {port} {self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            print(f"origin {scheme} {port}: " + format % args, flush=True)

    return Handler


def main() -> None:
    # PID 1 of its container: without a handler, SIGTERM would be ignored until SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, action="append", default=[])
    parser.add_argument("--https", type=int, action="append", default=[])
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--sysctl", action="append", default=[])
    args = parser.parse_args()
    for setting in args.sysctl:
        name, _, value = setting.partition("=")
        with open("/proc/sys/" + name.replace(".", "/"), "w") as file:
            file.write(value)
        print(f"origin set {name}={value}", flush=True)
    servers = []
    for port in args.http:
        servers.append(http.server.ThreadingHTTPServer(("127.0.0.1", port), handler("http", port)))
    for port in args.https:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler("https", port))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        servers.append(server)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    print("origin ready", flush=True)
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
