"""The client matrix: what each real client does when the proxy fails, in each mode.

For every client a WhatsApp gateway runs (Baileys 6.17 and Baileys 7 through
https-proxy-agent and through socks-proxy-agent, plain ``ws`` through both and through
global-agent with environment variables only, undici's ProxyAgent, axios with either agent
(Baileys 6.17's media path), Baileys 7's own ``getHttpStream`` (its media path: Node's
built-in fetch) with an undici ``ProxyAgent`` as ``dispatcher`` or under a global
``EnvHttpProxyAgent``, curl, aiohttp), every failure (no A record, NXDOMAIN, refused,
connect timeout, a policy refusal, an IPv6 literal) and each mode of
``http.connect_failure``, `EXPECTED` records the outcome: an error reported promptly,
Baileys closing and its reconnect handler trying again, or a stall. A change in any
client's behaviour fails the test for its cell, so the table in docs/clients.md stays true.

The policy refusal is a destination name the matrix proxies deny (403 ``DENIED``, SOCKS5
0x02); the IPv6 literal is the proxy's other refusal before any dial (502, SOCKS5 0x08).

One Node process per client and mode runs all its cases concurrently, each bounded by
`WINDOW_S`, and prints a JSON line per case; curl runs once per case, aiohttp in one event
loop. All of it runs at once, then Baileys 7's clients (`SECOND_RUN`), so the whole matrix
costs about two windows.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from helpers.net import Blackhole, client_env, refused_port
from helpers.process import stop_process
from helpers.programs import NODE_DIR, curl_command, node_binary
from helpers.proxy import ProxyFactory, ProxyProcess, parse_access_line
from helpers.servers import LoopThread

# "Promptly": a case that has not ended within this many seconds is a stall. The proxy
# runs with a 1 s connect timeout, so every failure reaches the client well before this.
WINDOW_S = 8.0
CONNECT_TIMEOUT_S = "1"
# Bound on each client process: the window plus start-up (loading Baileys) on a busy host.
PROCESS_S = WINDOW_S + 40.0
MODES = ("status", "close", "reset")
# Far fewer CONNECTs to one failing target than undici's retry loop makes in one window
# (230-620 measured on a loaded 2-core host, once fewer than 50 under heavier load), and
# more than twice the one or two attempts each of the other clients makes.
_STORM = 20
_ACCESS = "tunnel client="
NODE_CLIENTS = (
    "baileys-https-proxy-agent",
    "baileys-socks-proxy-agent",
    "ws-https-proxy-agent",
    "ws-socks-proxy-agent",
    "ws-global-agent",
    "undici-proxy-agent",
    "axios-https-proxy-agent",
    "axios-socks-proxy-agent",
    "baileys7-https-proxy-agent",
    "baileys7-socks-proxy-agent",
    "baileys7-fetch-proxy-agent",
    "baileys7-fetch-env-proxy-agent",
)
BAILEYS_SOCKETS = (
    "baileys-https-proxy-agent",
    "baileys-socks-proxy-agent",
    "baileys7-https-proxy-agent",
    "baileys7-socks-proxy-agent",
)
CLIENTS = (*NODE_CLIENTS, "curl", "aiohttp")
# Baileys 7's clients run after all the others, not beside them: Baileys' processes cost
# enough CPU (loading it, each socket's keys) that on a busy 2-core host all of them at
# once overran the window (a Baileys that would have reconnected was taken for a stall).
SECOND_RUN = tuple(client for client in NODE_CLIENTS if client.startswith("baileys7"))
FIRST_RUN = tuple(client for client in NODE_CLIENTS if client not in SECOND_RUN)
FAILURES = ("no-a-record", "nxdomain", "refused", "connect-timeout", "policy", "ipv6-literal")
CASES = ("ok", *FAILURES)
# What the proxy logs as the cause of each failure (the same in every mode).
CAUSES = {
    "no-a-record": "NODATA",
    "nxdomain": "NXDOMAIN",
    "refused": "ECONNREFUSED",
    "connect-timeout": "ETIMEDOUT",
    "policy": "DENIED",
    "ipv6-literal": "IPV6_LITERAL",
}
# The matrix proxies refuse this name by policy (--policy-deny-domains).
DENIED_NAME = "denied.test"


def _row(ok: str, failed: str) -> dict[str, str]:
    return {"ok": ok, **dict.fromkeys(FAILURES, failed)}


# (client, mode) -> case -> outcome. See tests/node/matrix.mjs for the outcome names.
# docs/clients.md's matrix is rendered from this table (test_clients_doc_shows_the_matrix).
EXPECTED: dict[tuple[str, str], dict[str, str]] = {
    # https-proxy-agent replays the status to ws as the upgrade's response; ws emits
    # 'unexpected-response', which Baileys re-emits and nothing else: no close, no retry.
    ("baileys-https-proxy-agent", "status"): _row("reconnect", "stall"),
    ("baileys-https-proxy-agent", "close"): _row("reconnect", "reconnect"),
    ("baileys-https-proxy-agent", "reset"): _row("reconnect", "reconnect"),
    ("baileys-socks-proxy-agent", "status"): _row("reconnect", "reconnect"),
    ("baileys-socks-proxy-agent", "close"): _row("reconnect", "reconnect"),
    ("baileys-socks-proxy-agent", "reset"): _row("reconnect", "reconnect"),
    ("ws-https-proxy-agent", "status"): _row("open", "error"),
    ("ws-https-proxy-agent", "close"): _row("open", "error"),
    ("ws-https-proxy-agent", "reset"): _row("open", "error"),
    ("ws-socks-proxy-agent", "status"): _row("open", "error"),
    ("ws-socks-proxy-agent", "close"): _row("open", "error"),
    ("ws-socks-proxy-agent", "reset"): _row("open", "error"),
    # global-agent starts TLS on the first byte the proxy sends, whatever it is; with no
    # byte at all (a FIN) it waits forever.
    ("ws-global-agent", "status"): _row("open", "error"),
    ("ws-global-agent", "close"): _row("open", "stall"),
    ("ws-global-agent", "reset"): _row("open", "error"),
    # undici takes a connection closed during CONNECT for a socket error it may retry,
    # and retries at once, forever: a stall for the caller and a storm for the proxy.
    ("undici-proxy-agent", "status"): _row("ok", "error"),
    ("undici-proxy-agent", "close"): _row("ok", "stall"),
    ("undici-proxy-agent", "reset"): _row("ok", "error"),
    # Baileys 6.17's media path (axios + agent): a non-2xx answer is an error to axios.
    ("axios-https-proxy-agent", "status"): _row("ok", "error"),
    ("axios-https-proxy-agent", "close"): _row("ok", "error"),
    ("axios-https-proxy-agent", "reset"): _row("ok", "error"),
    ("axios-socks-proxy-agent", "status"): _row("ok", "error"),
    ("axios-socks-proxy-agent", "close"): _row("ok", "error"),
    ("axios-socks-proxy-agent", "reset"): _row("ok", "error"),
    # Baileys 7 opens its WebSocket the same way (ws with the `agent` option), and so
    # fails the same way: with "status" https-proxy-agent's replayed 502 stalls it too.
    ("baileys7-https-proxy-agent", "status"): _row("reconnect", "stall"),
    ("baileys7-https-proxy-agent", "close"): _row("reconnect", "reconnect"),
    ("baileys7-https-proxy-agent", "reset"): _row("reconnect", "reconnect"),
    ("baileys7-socks-proxy-agent", "status"): _row("reconnect", "reconnect"),
    ("baileys7-socks-proxy-agent", "close"): _row("reconnect", "reconnect"),
    ("baileys7-socks-proxy-agent", "reset"): _row("reconnect", "reconnect"),
    # Baileys 7's media path: Node's built-in fetch with an undici 7 dispatcher, passed per
    # call or set globally; either way undici's CONNECT, so undici's retry loop on "close".
    ("baileys7-fetch-proxy-agent", "status"): _row("ok", "error"),
    ("baileys7-fetch-proxy-agent", "close"): _row("ok", "stall"),
    ("baileys7-fetch-proxy-agent", "reset"): _row("ok", "error"),
    ("baileys7-fetch-env-proxy-agent", "status"): _row("ok", "error"),
    ("baileys7-fetch-env-proxy-agent", "close"): _row("ok", "stall"),
    ("baileys7-fetch-env-proxy-agent", "reset"): _row("ok", "error"),
    ("curl", "status"): _row("ok", "error"),
    ("curl", "close"): _row("ok", "error"),
    ("curl", "reset"): _row("ok", "error"),
    ("aiohttp", "status"): _row("ok", "error"),
    ("aiohttp", "close"): _row("ok", "error"),
    ("aiohttp", "reset"): _row("ok", "error"),
}
CLIENTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "clients.md"


def render_matrix() -> str:
    """The table of docs/clients.md: one row per client, one column per mode, for every failure."""
    lines = [
        "| client | " + " | ".join(f"`{mode}`" for mode in MODES) + " |",
        "|---" * (len(MODES) + 1) + "|",
    ]
    for client in CLIENTS:
        cells = []
        for mode in MODES:
            outcomes = {EXPECTED[client, mode][failure] for failure in FAILURES}
            cells.append(" / ".join(sorted(outcomes)))
        lines.append(f"| {client} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def test_clients_doc_shows_the_matrix() -> None:
    assert render_matrix() in CLIENTS_DOC.read_text(encoding="utf-8"), render_matrix()


@dataclass
class WaServer:
    """A TLS WebSocket server standing in for WhatsApp, and what it saw per client."""

    port: int
    first_frames: dict[str, bytes]


async def _start_wa(server_ssl: ssl.SSLContext) -> tuple[WaServer, web.AppRunner]:
    first_frames: dict[str, bytes] = {}

    async def wa(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        client = request.match_info["client"]
        async for message in ws:
            if message.type is WSMsgType.BINARY:
                first_frames.setdefault(client, bytes(message.data[:8]))
                break
        await ws.close()  # Baileys then closes and reconnects: its success path here
        return ws

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/wa/{client}", wa)
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    port: int = runner.addresses[0][1]
    return WaServer(port, first_frames), runner


@dataclass
class StandIns:
    """What every client of the matrix goes to: the proxies (one per mode), the targets."""

    proxies: dict[str, ProxyProcess]
    targets: dict[str, str]
    wa: WaServer


@dataclass
class Matrix:
    outcomes: dict[tuple[str, str, str], str]
    details: dict[tuple[str, str, str], str]
    proxies: dict[str, ProxyProcess]
    targets: dict[str, str]
    wa: WaServer


def _targets(wa_port: int, refused: int, blackhole: int) -> dict[str, str]:
    return {
        "ok": f"v4.test:{wa_port}",
        "no-a-record": f"v6only.test:{wa_port}",
        "nxdomain": "missing.test:443",
        "refused": f"v4.test:{refused}",
        "connect-timeout": f"v4.test:{blackhole}",
        "policy": f"{DENIED_NAME}:{wa_port}",
        # Port 443, never a random one: global-agent writes ``CONNECT ::1:443`` without
        # brackets, which is still an IPv6 address (refused as one); ``::1:38123`` is not
        # and would be refused as malformed, with a 400 in every mode.
        "ipv6-literal": "[::1]:443",
    }


def _node_cases(client: str, mode: str, proxy: ProxyProcess, targets: dict[str, str]) -> str:
    scheme = "socks5h" if "socks" in client else "http"
    cases = []
    for case, target in targets.items():
        if client.startswith(("undici", "axios", "baileys7-fetch")):
            url = f"https://{target}/hello"
        else:
            url = f"wss://{target}/wa/{client}-{mode}"
        cases.append({"id": case, "proxy": f"{scheme}://127.0.0.1:{proxy.port}", "url": url})
    return json.dumps(cases)


def _start_node(
    client: str, mode: str, proxy: ProxyProcess, targets: dict[str, str], ca_file: Path
) -> subprocess.Popen[bytes]:
    node = node_binary(NODE_DIR, "baileys7")
    env = {"NODE_EXTRA_CA_CERTS": str(ca_file)}
    preload: list[str] = []
    if client == "ws-global-agent":
        env["GLOBAL_AGENT_HTTP_PROXY"] = proxy.url
        preload = ["-r", "global-agent/bootstrap"]
    if client == "baileys7-fetch-env-proxy-agent":
        env["HTTPS_PROXY"] = proxy.url
    argv = [node, *preload, str(NODE_DIR / "matrix.mjs"), client, str(int(WINDOW_S * 1000))]
    return subprocess.Popen(
        [*argv, _node_cases(client, mode, proxy, targets)],
        cwd=NODE_DIR,
        env=client_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _start_curl(proxy: ProxyProcess, target: str, ca_file: Path) -> subprocess.Popen[bytes]:
    argv = ["-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca_file), "-x", proxy.url]
    return subprocess.Popen(
        curl_command([*argv, f"https://{target}/hello"], max_seconds=WINDOW_S),
        env=client_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def _aiohttp_case(proxy: ProxyProcess, target: str, client_ssl: ssl.SSLContext) -> str:
    timeout = aiohttp.ClientTimeout(total=WINDOW_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"https://{target}/hello", proxy=proxy.url, ssl=client_ssl) as response,
        ):
            await response.read()
            return "ok" if response.status == 200 else f"status {response.status}"
    except TimeoutError:
        return "stall"
    except aiohttp.ClientError:
        return "error"


async def _aiohttp_all(
    proxies: dict[str, ProxyProcess], targets: dict[str, str], client_ssl: ssl.SSLContext
) -> dict[tuple[str, str], str]:
    keys = [(mode, case) for mode in MODES for case in CASES]
    results = await asyncio.gather(
        *(_aiohttp_case(proxies[mode], targets[case], client_ssl) for mode, case in keys)
    )
    return dict(zip(keys, results, strict=True))


def _curl_outcome(process: subprocess.Popen[bytes]) -> str:
    stdout, _ = process.communicate(timeout=PROCESS_S)
    if process.returncode == 0 and stdout == b"200":
        return "ok"
    if process.returncode == 28:  # --max-time ran out
        return "stall"
    return "error"


def _start_all_node(
    clients: tuple[str, ...], stand_ins: StandIns, ca_file: Path
) -> dict[tuple[str, str], subprocess.Popen[bytes]]:
    return {
        (client, mode): _start_node(
            client, mode, stand_ins.proxies[mode], stand_ins.targets, ca_file
        )
        for client in clients
        for mode in MODES
    }


def _node_outcomes(
    node: dict[tuple[str, str], subprocess.Popen[bytes]],
    outcomes: dict[tuple[str, str, str], str],
    details: dict[tuple[str, str, str], str],
) -> None:
    deadline = time.monotonic() + PROCESS_S
    for (client, mode), process in node.items():
        stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        for line in stdout.decode().splitlines():
            result = json.loads(line)
            key = (client, mode, result["id"])
            outcomes[key] = result["outcome"]
            details[key] = f"{result['ms']} ms {result['detail']} | {stderr.decode()[-500:]}"


@pytest.fixture(scope="module")
def stand_ins(
    proxy_factory: ProxyFactory, server_loop: LoopThread, server_ssl: ssl.SSLContext
) -> Iterator[StandIns]:
    wa, runner = server_loop.call(lambda: _start_wa(server_ssl))
    refused = refused_port()
    hole = Blackhole()
    try:
        proxies = {
            mode: proxy_factory(
                [
                    "--dialer-connect-timeout",
                    CONNECT_TIMEOUT_S,
                    "--policy-deny-domains",
                    DENIED_NAME,
                    "--http-connect-failure",
                    mode,
                ]
            )
            for mode in MODES
        }
        yield StandIns(proxies, _targets(wa.port, refused.getsockname()[1], hole.port), wa)
    finally:
        hole.close()
        refused.close()
        server_loop.call(runner.cleanup)


@pytest.fixture(scope="module")
def matrix(stand_ins: StandIns, client_ssl: ssl.SSLContext, ca_file: Path) -> Iterator[Matrix]:
    """Every client but Baileys 7's, at once."""
    proxies, targets = stand_ins.proxies, stand_ins.targets
    processes: list[subprocess.Popen[bytes]] = []
    try:
        node = _start_all_node(FIRST_RUN, stand_ins, ca_file)
        processes += node.values()
        curls = {
            (mode, case): _start_curl(proxies[mode], targets[case], ca_file)
            for mode in MODES
            for case in CASES
        }
        processes += curls.values()
        outcomes: dict[tuple[str, str, str], str] = {}
        details: dict[tuple[str, str, str], str] = {}
        by_aiohttp = asyncio.run(_aiohttp_all(proxies, targets, client_ssl))
        for (mode, case), outcome in by_aiohttp.items():
            outcomes["aiohttp", mode, case] = outcome
        for (mode, case), process in curls.items():
            outcomes["curl", mode, case] = _curl_outcome(process)
        _node_outcomes(node, outcomes, details)
        yield Matrix(outcomes, details, proxies, targets, stand_ins.wa)
    finally:
        for process in processes:
            stop_process(process)


@pytest.fixture(scope="module")
def matrix7(matrix: Matrix, stand_ins: StandIns, ca_file: Path) -> Iterator[Matrix]:
    """Baileys 7's clients, at once, after the others (see SECOND_RUN)."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        node = _start_all_node(SECOND_RUN, stand_ins, ca_file)
        processes += node.values()
        outcomes: dict[tuple[str, str, str], str] = {}
        details: dict[tuple[str, str, str], str] = {}
        _node_outcomes(node, outcomes, details)
        yield Matrix(outcomes, details, stand_ins.proxies, stand_ins.targets, stand_ins.wa)
    finally:
        for process in processes:
            stop_process(process)


def _matrix_of(request: pytest.FixtureRequest, client: str) -> Matrix:
    name = "matrix7" if client in SECOND_RUN else "matrix"
    result = request.getfixturevalue(name)
    assert isinstance(result, Matrix)
    return result


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("client", CLIENTS)
def test_client_outcome(request: pytest.FixtureRequest, client: str, mode: str, case: str) -> None:
    matrix = _matrix_of(request, client)
    key = (client, mode, case)
    assert matrix.outcomes.get(key) == EXPECTED[client, mode][case], matrix.details.get(key)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("client", BAILEYS_SOCKETS)
def test_baileys_reached_the_stand_in(
    request: pytest.FixtureRequest, client: str, mode: str
) -> None:
    """Success for Baileys: its WebSocket came through and sent its first noise frame."""
    matrix = _matrix_of(request, client)
    assert matrix.wa.first_frames.get(f"{client}-{mode}", b"").startswith(b"WA")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("failure", FAILURES)
def test_logs_name_the_cause_in_every_mode(matrix: Matrix, mode: str, failure: str) -> None:
    proxy = matrix.proxies[mode]
    target = matrix.targets[failure]
    for protocol in ("http-connect", "socks5"):
        fields = proxy.wait_for_access(protocol=protocol, target=target)
        assert fields["outcome"] == CAUSES[failure], fields


def _connects(proxy: ProxyProcess, target: str) -> int:
    fields = (parse_access_line(line) for line in proxy.logs() if _ACCESS in line)
    return sum(f.get("protocol") == "http-connect" and f.get("target") == target for f in fields)


@pytest.mark.parametrize("failure", ["no-a-record", "nxdomain", "refused", "policy"])
def test_close_mode_makes_undici_retry_in_a_loop(matrix: Matrix, failure: str) -> None:
    """Evidence for docs/clients.md: with 'close', undici's ProxyAgent never reports the error
    but opens CONNECT after CONNECT (hundreds in one window here); with 'status' each
    HTTP CONNECT client asks once (Baileys twice when it reconnects)."""
    target = matrix.targets[failure]
    counts = {mode: _connects(matrix.proxies[mode], target) for mode in MODES}
    assert counts["status"] <= len(CLIENTS), counts
    assert counts["reset"] <= len(CLIENTS), counts
    assert counts["close"] >= _STORM, counts


def _exchange(proxy: ProxyProcess, request: bytes) -> bytes | str:
    """Send `request`, read to EOF: the bytes, or the name of the error that ended the read."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=WINDOW_S) as sock:
        sock.sendall(request)
        received = b""
        try:
            for _ in range(64):  # an error answer is one short response
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except ConnectionResetError:
            return "RST"
        return received


_STATUS_LINE = b"HTTP/1.1 502 Bad Gateway\r\n"


@pytest.mark.parametrize(
    ("mode", "answer"), [("status", _STATUS_LINE), ("close", b""), ("reset", "RST")]
)
def test_what_a_failed_connect_gets_on_the_wire(
    matrix: Matrix, mode: str, answer: bytes | str
) -> None:
    request = b"CONNECT missing.test:443 HTTP/1.1\r\nHost: missing.test:443\r\n\r\n"
    got = _exchange(matrix.proxies[mode], request)
    assert got[: len(_STATUS_LINE)] == answer
    if mode == "status":  # the cause as RFC 9209 names it, for curl -v and proxy-aware clients
        assert isinstance(got, bytes)
        assert b'\r\nProxy-Status: ipv4proxy; error=dns_error; rcode="NXDOMAIN"; ' in got


@pytest.mark.parametrize("mode", MODES)
def test_forwarding_keeps_its_status_in_every_mode(matrix: Matrix, mode: str) -> None:
    request = b"GET http://missing.test/ HTTP/1.1\r\nHost: missing.test\r\n\r\n"
    got = _exchange(matrix.proxies[mode], request)
    assert got[: len(_STATUS_LINE)] == _STATUS_LINE
