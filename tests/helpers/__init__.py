"""Test infrastructure for ipv4proxy's integration tests: real servers, real clients.

Everything here talks only to 127.0.0.0/8 or ::1, starts only processes it then stops by
PID, and bounds every wait in both count and time. Modules:

- `net`: ports that refuse, ports that never answer a SYN, a [::1] trap beside a 127.0.0.1
  target, and a clean environment for client subprocesses.
- `dnsmasq`: a real DNS server with the test names, and its query log.
- `servers`: TLS, WebSocket, HTTP and raw TCP servers on one event loop in a thread.
- `proxy`: the proxy under test as a subprocess, its stderr, and its access lines.
- `wire`: hand-written HTTP CONNECT / SOCKS5 / SOCKS4 client exchanges for exact assertions.
- `programs`: bounded runs of curl, node and ``python3 -m ipv4proxy`` in a clean environment.
- `process`: `stop_process`, the one way a helper stops a program it started (SIGTERM, then
  SIGKILL after a bound).
"""
