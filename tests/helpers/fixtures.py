"""The fixtures of every test that uses real parts: a real DNS server, TLS, test servers,
and the proxy under test. Each folder's conftest.py but tests/unit's imports them all.

Session-scoped where they can be (one dnsmasq, one server thread, one default proxy per
folder), so the suites stay fast. Rules kept here:

- Only 127.0.0.0/8 and ::1 are ever contacted.
- Processes are started here and stopped here, by PID, with bounded waits.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trustme

from helpers.ci import unavailable
from helpers.dnsmasq import Dnsmasq, running_dnsmasq
from helpers.net import Blackhole, bind_dual_port, ipv6_loopback_available, refused_port
from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.servers import LoopThread, Payload, TestServers, Trap, start_servers, start_trap

TEST_NAMES = (
    "dual.test",
    "v4.test",
    "multi.test",
    "trap.test",
    "*.trap.test",
    "localhost",
    "127.0.0.1",
)


# --- DNS ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    yield from running_dnsmasq(tmp_path_factory.mktemp("dnsmasq"))


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA certificate as a PEM file, for curl (--cacert) and Node (NODE_EXTRA_CA_CERTS)."""
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def server_ssl(tls_ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert(*TEST_NAMES).configure_cert(context)
    return context


@pytest.fixture(scope="session")
def client_ssl(tls_ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    tls_ca.configure_trust(context)
    return context


# --- servers ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def payload() -> Payload:
    return Payload()


@pytest.fixture(scope="session")
def server_loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture(scope="session")
def servers(
    server_loop: LoopThread, server_ssl: ssl.SSLContext, payload: Payload
) -> Iterator[TestServers]:
    started = server_loop.call(lambda: start_servers(server_ssl, payload))
    try:
        yield started
    finally:
        server_loop.call(started.close)


@pytest.fixture(scope="session")
def trap(server_loop: LoopThread) -> Iterator[Trap]:
    """An echo target on 127.0.0.1:P with a recording trap on [::1]:P (same P)."""
    if not ipv6_loopback_available():
        unavailable("::1 cannot be bound here, so the IPv6 trap cannot be set")
    sockets = bind_dual_port()
    started = server_loop.call(lambda: start_trap(sockets))
    try:
        yield started
    finally:
        server_loop.call(started.close)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections (fresh per test: no breaker carries over)."""
    sock = refused_port()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A 127.0.0.1 port where every connect attempt times out (SYNs dropped)."""
    with Blackhole() as hole:
        yield hole.port


# --- the proxy ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def proxy_factory(
    dnsmasq: Dnsmasq, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyFactory]:
    """Start a proxy with DEFAULT_PROXY_FLAGS plus extra args; all are stopped at the end.

    At the end, any traceback or unretrieved task exception in a proxy's stderr fails the
    session: the proxy must not meet an error it does not handle.
    """
    started: list[ProxyProcess] = []
    logs = tmp_path_factory.mktemp("proxy")

    def start(extra_args: Sequence[str] = ()) -> ProxyProcess:
        process = ProxyProcess(dnsmasq.port, extra_args, logs / f"proxy-{len(started)}.log")
        started.append(process)
        process.start()
        return process

    try:
        yield start
    finally:
        problems: list[str] = []
        for process in started:
            process.stop()
            crashes = process.crash_lines()
            if crashes:
                problems.append(f"{process.log_path}: {crashes[:5]}")
        if problems:
            pytest.fail("unhandled errors in proxy stderr:\n" + "\n".join(problems))


@pytest.fixture(scope="session")
def proxy(proxy_factory: ProxyFactory) -> ProxyProcess:
    """The shared proxy, with the default test flags only."""
    return proxy_factory(())
