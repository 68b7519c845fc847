"""``ipv4proxy healthcheck``, the image's HEALTHCHECK, against a real proxy on 127.0.0.1.

Where the admin listener is comes from the running proxy's own arguments and environment
(/proc); here a /proc tree written by the test describes the processes of a container, and
a real proxy listens where that tree says. tests/deploy/test_image.py runs the command in
the image, against the real /proc of a container started with --admin-listen.
"""

from __future__ import annotations

from pathlib import Path

from helpers.net import refused_port
from helpers.programs import run_ipv4proxy
from helpers.proxy import ProxyProcess
from ipv4proxy.cli import parse
from ipv4proxy.healthcheck import loopback_for, probe, running_proxy


def _process(proc: Path, pid: int, argv: list[str], environ: dict[str, str] | None) -> None:
    directory = proc / str(pid)
    directory.mkdir(parents=True)
    (directory / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    if environ is not None:
        text = "\0".join(f"{key}={value}" for key, value in environ.items())
        (directory / "environ").write_bytes(text.encode() + b"\0")


def _container(proc: Path, proxy_argv: list[str], environ: dict[str, str] | None) -> None:
    """An init, a command that only names ipv4proxy, a healthcheck already running, a
    check-config, then the proxy."""
    _process(proc, 1, ["/run/podman-init", "--", "sh"], {})
    _process(proc, 3, ["python3", "-m", "pytest", "tests/ipv4proxy"], {})
    script = ["/opt/ipv4proxy/bin/python3", "/opt/ipv4proxy/bin/ipv4proxy"]
    _process(proc, 5, [*script, "healthcheck"], {})
    _process(proc, 6, ["/opt/ipv4proxy/bin/python3", "-m", "ipv4proxy", "check-config"], {})
    _process(proc, 12, proxy_argv, environ)
    (proc / "self").mkdir()  # not a PID


def test_finds_the_running_proxy_and_its_flags(tmp_path: Path, proxy: ProxyProcess) -> None:
    listen = f"127.0.0.1:{proxy.admin_port}"
    argv = ["/opt/ipv4proxy/bin/python3", "/opt/ipv4proxy/bin/ipv4proxy", "--admin-listen", listen]
    _container(tmp_path, argv, {"IPV4PROXY_LOG_LEVEL": "debug"})
    found = running_proxy(tmp_path)
    assert found == (["--admin-listen", listen], {"IPV4PROXY_LOG_LEVEL": "debug"})
    args, environ = found
    assert parse(args, environ).admin.listen == listen
    assert probe("127.0.0.1", proxy.admin_port) is None


def test_follows_the_environment_and_a_mounted_config(tmp_path: Path) -> None:
    config = tmp_path / "mounted.yaml"
    config.write_text("admin:\n  listen: 0.0.0.0:19128\n")
    proc = tmp_path / "proc"
    _container(proc, ["python3", "-m", "ipv4proxy"], {"IPV4PROXY_CONFIG": str(config)})
    found = running_proxy(proc)
    assert found is not None
    assert parse(*found).admin.listen == "0.0.0.0:19128"
    assert loopback_for("0.0.0.0") == "127.0.0.1"
    environ = {"IPV4PROXY_CONFIG": str(config), "IPV4PROXY_ADMIN_LISTEN": "127.0.0.2:9"}
    (proc / "12" / "environ").write_bytes(
        b"\0".join(f"{k}={v}".encode() for k, v in environ.items())
    )
    found = running_proxy(proc)
    assert found is not None
    assert parse(*found).admin.listen == "127.0.0.2:9"


def test_no_proxy_process(tmp_path: Path) -> None:
    _process(tmp_path, 1, ["sleep", "infinity"], {})
    assert running_proxy(tmp_path) is None


def test_command_exit_codes(proxy: ProxyProcess) -> None:
    healthy = run_ipv4proxy(["healthcheck", "--admin-listen", f"127.0.0.1:{proxy.admin_port}"])
    assert healthy.returncode == 0, healthy.stderr
    with refused_port() as closed:
        port = closed.getsockname()[1]
        refused = run_ipv4proxy(["healthcheck", "--admin-listen", f"127.0.0.1:{port}"])
    assert refused.returncode == 1
    assert f"http://127.0.0.1:{port}/healthz" in refused.stderr
    assert "refused" in refused.stderr.lower()
    off = run_ipv4proxy(["healthcheck", "--admin-listen", ""])
    assert off.returncode == 0
    assert "admin.listen is off" in off.stderr
    invalid = run_ipv4proxy(["healthcheck", "--admin-listen", "nowhere"])
    assert invalid.returncode == 1
    assert "admin.listen" in invalid.stderr
