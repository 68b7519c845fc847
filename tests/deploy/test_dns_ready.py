"""deploy/systemd/dns-ready.py, the start gate of every DNS-mode deployment, run for real.

It is the Kubernetes startupProbe (sidecar-dns), the compose healthcheck and the systemd
ExecStartPost; here it asks a real DNS server on loopback: an answer passes, silence, a
closed port or a SERVFAIL do not, and --wait gives up within its bound; then against
ipv4proxy's own DNS listener, in front of such a server. The lab
(tests/lab/test_lab.py) runs it against ipv4proxy's own DNS listener.
"""

from __future__ import annotations

import re
import sys

from helpers.deploy import DEPLOY
from helpers.dnsfake import ScriptedNameserver
from helpers.programs import run_program
from helpers.proxy import ProxyFactory

DNS_READY = DEPLOY / "systemd" / "dns-ready.py"


def _ready(address: str, *args: str) -> tuple[int, str]:
    result = run_program([sys.executable, str(DNS_READY), address, *args])
    return result.returncode, result.stderr.decode()


def test_an_answer_passes() -> None:
    with ScriptedNameserver("answer") as server:
        assert _ready(f"127.0.0.1:{server.port}") == (0, "")
    assert sum(server.names.values()) == 1  # one question


def test_an_answer_with_another_id_first_still_passes() -> None:
    with ScriptedNameserver("decoy") as server:
        assert _ready(f"127.0.0.1:{server.port}") == (0, "")


def test_silence_fails() -> None:
    with ScriptedNameserver("drop") as server:
        code, stderr = _ready(f"127.0.0.1:{server.port}")
    assert code == 1
    assert "timed out" in stderr


def test_a_closed_port_fails_and_wait_is_bounded() -> None:
    with ScriptedNameserver("answer") as server:
        port = server.port
    code, stderr = _ready(f"127.0.0.1:{port}", "--wait", "1")
    assert code == 1
    assert stderr.count("Connection refused") >= 2  # it did ask again within the second


_DNS_LISTENING = re.compile(r"dns listening on 127\.0\.0\.1:(\d+)")


def _dns_proxy(proxy_factory: ProxyFactory, upstream_port: int) -> str:
    proxy = proxy_factory(
        ["--dns-listen", "127.0.0.1:0", "--dns-upstreams", f"127.0.0.1:{upstream_port}"]
    )
    line = proxy.wait_for_line(lambda text: _DNS_LISTENING.search(text) is not None)
    match = _DNS_LISTENING.search(line or "")
    assert match is not None, "\n".join(proxy.logs())
    return f"127.0.0.1:{match[1]}"


def test_the_dns_listener_passes_while_its_upstream_answers(proxy_factory: ProxyFactory) -> None:
    with ScriptedNameserver("answer") as upstream:
        address = _dns_proxy(proxy_factory, upstream.port)
        assert _ready(address) == (0, "")
        assert sum(upstream.names.values()) == 1  # forwarded, not answered by the proxy


def test_the_dns_listener_fails_without_an_upstream(proxy_factory: ProxyFactory) -> None:
    """Bound but useless: SERVFAIL (an answer, not silence), so the gate stays closed."""
    with ScriptedNameserver("answer") as gone:
        port = gone.port
    code, stderr = _ready(_dns_proxy(proxy_factory, port))
    assert code == 1
    assert "rcode 2" in stderr
