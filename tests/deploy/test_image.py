"""The container image, built from deploy/container/Containerfile and run with podman.

The image is built on a base made without a registry (tests/helpers/podman.py), as an
operator would run it: read-only root filesystem with only /tmp writable, no capability,
no new privileges, as the image's own non-root user. Each run is a pod with a stand-in
destination (tests/helpers/containers/origin.py, HTTP on 127.0.0.1:80 and :443) beside the
proxy; the test reaches the pod's published ports on 127.0.0.1.

- With the baked config (plus IPV4PROXY_POLICY_OPEN_CIDRS, since the destination is on
  loopback, which the policy refuses by default): /healthz, /readyz, an HTTP CONNECT
  tunnel, HTTP forwarding and SOCKS5, each in the access log; `podman healthcheck run`
  healthy; `podman stop` drains (not ready, an open tunnel still served) and exits 0.
- With flags (--admin-listen on another port): the HEALTHCHECK follows it.
- The venv holds exactly the lock's versions, and no pip; the pure layers setup.py compiles
  are the compiled modules (mypyc, in the build stage), and no compiler or mypy is left.

Cost: the base image and a cold build take about two minutes where nothing is cached;
they run in the background while the rest of the suite runs (tests/deploy/conftest.py).
Then this module and test_pod.py take about 30 s together.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

from helpers.compiled import compiled_modules
from helpers.deploy import DEPLOY
from helpers.podman import Podman
from helpers.programs import run_curl

pytestmark = [pytest.mark.root, pytest.mark.timeout(900)]

ORIGIN = Path(__file__).resolve().parents[1] / "helpers" / "containers" / "origin.py"
FLAGS_ADMIN_PORT = 39128
# Bounds: a container's start, and podman stop (the baked drain.grace_period is 8 s).
READY_SECONDS = 30.0
STOP_SECONDS = 30
# The hardening an operator is told to use (docs/deployment.md, "Container image").
HARDENED = (
    "--read-only",
    "--read-only-tmpfs=false",  # podman's default would also make /var/tmp and /run writable
    "--tmpfs",
    "/tmp:rw,size=16m",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    # The HEALTHCHECK is run by `podman healthcheck run`; its timer needs systemd.
    "--health-interval",
    "disable",
)


class Pod:
    """A pod with published ports on 127.0.0.1 and the origin container in it."""

    def __init__(self, podman: Podman, name: str, base: str) -> None:
        self.podman = podman
        self.name = name
        publish = [f"127.0.0.1::{port}" for port in (3128, 9128, FLAGS_ADMIN_PORT)]
        podman.run(["pod", "create", "--name", name, *(f"--publish={p}" for p in publish)])
        podman.run(
            [
                *("run", "--detach", "--pod", name, "--name", f"{name}-origin"),
                *("--volume", f"{ORIGIN}:/srv/origin.py:ro"),
                *(base, "python3", "/srv/origin.py", "--http", "80", "--http", "443"),
            ]
        )

    def port(self, container_port: int) -> int:
        done = self.podman.run(
            ["pod", "inspect", self.name, "--format", "{{json .InfraConfig.PortBindings}}"]
        )
        bindings = json.loads(done.stdout)[f"{container_port}/tcp"]
        return int(bindings[0]["HostPort"])

    def remove(self) -> None:
        self.podman.run(["pod", "rm", "--force", "--time", "0", self.name], check=False)


@pytest.fixture(scope="module")
def pod(podman: Podman, base: str) -> Iterator[Pod]:
    made = Pod(podman, f"ipv4proxy-image-test-{os.getpid()}", base)
    try:
        yield made
    finally:
        made.remove()


def _get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + READY_SECONDS
    problem = ""
    while time.monotonic() < deadline:
        try:
            status, _ = _get(port, "/readyz")
            if status == 200:
                return
            problem = f"status {status}"
        except (OSError, http.client.HTTPException) as exc:
            problem = str(exc)
        time.sleep(0.3)
    raise AssertionError(f"/readyz on 127.0.0.1:{port} not ready in {READY_SECONDS} s: {problem}")


def _start_proxy(pod: Pod, image: str, name: str, args: list[str], env: list[str]) -> str:
    container = f"{pod.name}-{name}"
    pod.podman.run(
        [
            *("run", "--detach", "--pod", pod.name, "--name", container),
            *HARDENED,
            *(part for item in env for part in ("--env", item)),
            image,
            *args,
        ]
    )
    return container


def _curl_through(proxy: list[str], url: str) -> str:
    done = run_curl([*proxy, url])
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def _access_lines(podman: Podman, container: str) -> list[dict[str, object]]:
    lines = []
    for line in podman.logs(container):
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "tunnel":
                lines.append(record)
    return lines


def _wait_for_log(podman: Podman, container: str, text: str) -> list[str]:
    for _ in range(100):
        logs = podman.logs(container)
        if any(text in line for line in logs):
            return logs
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in the log of {container}: {logs[-20:]}")


def _open_tunnel(port: int, target: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _exchange(sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n".encode())
    reply = b""
    while len(reply) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def test_runs_with_the_baked_config(podman: Podman, image: str, pod: Pod) -> None:
    proxy = _start_proxy(pod, image, "baked", [], ["IPV4PROXY_POLICY_OPEN_CIDRS=127.0.0.0/8"])
    admin, port = pod.port(9128), pod.port(3128)
    _wait_ready(admin)
    assert _get(admin, "/healthz")[0] == 200
    # The image's own user, not root.
    uid = podman.run(["exec", proxy, "python3", "-c", "import os; print(os.getuid(), os.getgid())"])
    assert uid.stdout.split() == ["10001", "10001"]

    tunnel = _curl_through(
        ["--proxytunnel", "-x", f"http://127.0.0.1:{port}"], "http://127.0.0.1:443/c"
    )
    assert tunnel == "origin http 443 /c\n"
    forwarded = _curl_through(["-x", f"http://127.0.0.1:{port}"], "http://127.0.0.1/f")
    assert forwarded == "origin http 80 /f\n"
    socks = _curl_through(["--socks5", f"127.0.0.1:{port}"], "http://127.0.0.1/s")
    assert socks == "origin http 80 /s\n"
    _wait_for_log(podman, proxy, '"protocol":"socks5"')
    protocols = {str(line.get("protocol")) for line in _access_lines(podman, proxy)}
    assert {"http-connect", "http-forward", "socks5"} <= protocols, protocols

    health = podman.run(["healthcheck", "run", proxy], check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    state = podman.run(["inspect", proxy, "--format", "{{.State.Health.Status}}"])
    assert state.stdout.strip() == "healthy"

    # podman stop: SIGTERM, then the drain. An open tunnel is still served while /readyz
    # says not ready; once it closes, the proxy exits 0 well before the SIGKILL.
    sock = _open_tunnel(port, "127.0.0.1:443")
    stop = subprocess.Popen(
        ["podman", "stop", "--time", str(STOP_SECONDS), proxy],
        env=podman.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_log(podman, proxy, '"event":"draining"')
        assert _get(admin, "/readyz")[0] == 503
        assert _exchange(sock, "/during-drain").endswith(b"origin http 443 /during-drain\n")
        sock.close()
        assert stop.wait(timeout=STOP_SECONDS + 10) == 0
    finally:
        sock.close()
        if stop.poll() is None:
            stop.kill()
            stop.wait(timeout=10)
    exit_code = podman.run(["inspect", proxy, "--format", "{{.State.ExitCode}}"])
    assert exit_code.stdout.strip() == "0"
    logs = podman.logs(proxy)
    assert any('"event":"stopped"' in line and '"cut":0' in line for line in logs), logs[-5:]
    # Nothing went wrong on a read-only root: no error, no traceback.
    assert not [line for line in logs if '"level":"error"' in line or "Traceback" in line]


def test_healthcheck_follows_the_admin_listen_flag(podman: Podman, image: str, pod: Pod) -> None:
    flags = [f"--admin-listen=0.0.0.0:{FLAGS_ADMIN_PORT}", "--policy-open-cidrs=127.0.0.0/8"]
    proxy = _start_proxy(pod, image, "flags", flags, [])
    try:
        _wait_ready(pod.port(FLAGS_ADMIN_PORT))
        tunnel = _curl_through(
            ["--proxytunnel", "-x", f"http://127.0.0.1:{pod.port(3128)}"], "http://127.0.0.1:443/"
        )
        assert tunnel == "origin http 443 /\n"
        health = podman.run(["healthcheck", "run", proxy], check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        # The default port has nobody behind it: the old fixed-port check would fail here.
        fixed = podman.run(
            ["exec", proxy, "ipv4proxy", "healthcheck", "--admin-listen=127.0.0.1:9128"],
            check=False,
        )
        assert fixed.returncode == 1
        assert "Connection refused" in fixed.stderr
    finally:
        podman.run(["stop", "--time", str(STOP_SECONDS), proxy], check=False)
    exit_code = podman.run(["inspect", proxy, "--format", "{{.State.ExitCode}}"])
    assert exit_code.stdout.strip() == "0"


def test_venv_holds_the_locked_versions_and_no_pip(podman: Podman, image: str) -> None:
    script = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()})); "
        "print(sys.version_info[0], sys.version_info[1])"
    )
    done = podman.run(["run", "--rm", "--entrypoint", "python3", image, "-c", script])
    installed_line, version_line = done.stdout.splitlines()
    installed: dict[str, str] = {
        canonicalize_name(k): v for k, v in json.loads(installed_line).items()
    }
    assert "pip" not in installed
    assert "setuptools" not in installed, "the build backend stays in the build stage"
    assert installed.pop("ipv4proxy") == "0.1.0"
    major, minor = version_line.split()
    environment = {
        "python_full_version": f"{major}.{minor}.0",
        "python_version": f"{major}.{minor}",
    }
    locked: dict[str, str] = {}
    for line in (DEPLOY / "container" / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            pin, _, marker = line.rstrip(" \\").partition(";")
            name, _, version = pin.strip().partition("==")
            if marker.strip() and not Marker(marker.strip()).evaluate(environment):
                continue
            locked[canonicalize_name(name)] = version
    locked.pop("setuptools")
    assert installed == locked
    # No pip to run, no source tree left behind.
    assert not podman.run(
        ["run", "--rm", "--entrypoint", "sh", image, "-c", "ls /opt/ipv4proxy/bin/pip* /src"],
        check=False,
    ).stdout


def test_the_image_runs_the_compiled_pure_layers(podman: Podman, image: str) -> None:
    """The build stage compiles the modules setup.py lists (mypyc); the final image imports
    those, and holds neither the compiler nor mypy."""
    modules = compiled_modules()
    script = (
        "import importlib, sys\nfor n in sys.argv[1:]: print(importlib.import_module(n).__file__)"
    )
    done = podman.run(["run", "--rm", "--entrypoint", "python3", image, "-c", script, *modules])
    files = done.stdout.split()
    assert len(files) == len(modules)
    for name, path in zip(modules, files, strict=True):
        assert path.startswith("/opt/ipv4proxy/"), (name, path)
        assert path.endswith(".so"), (name, path)
    assert not podman.run(
        ["run", "--rm", "--entrypoint", "sh", image, "-c", "command -v gcc cc; ls -d /opt/compile"],
        check=False,
    ).stdout
