"""Port 53 without root, as each DNS-mode deployment opens it, checked against the kernel.

The manifests make claims about Linux that a schema cannot check; each case here binds
127.0.0.1:53 as the image's non-root user (10001) in a fresh network namespace, set up the
way that deployment sets it up:

- Kubernetes and compose: the network namespace's ``net.ipv4.ip_unprivileged_port_start``
  lowered to 53 lets a process with no capability bind it;
- what ``capabilities: add: [NET_BIND_SERVICE]`` gives a non-root container (the
  capability in the bounding set only) does not;
- systemd: ``AmbientCapabilities=CAP_NET_BIND_SERVICE`` does, but not from inside a private
  user namespace (``PrivateUsers=yes``), which is why the drop-in turns that off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.ci import unavailable

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="needs root: it creates network namespaces and changes user "
        "(CI runs it as root; run `sudo python3 -m pytest tests/deploy/test_bind_port_53.py`)",
    ),
]

USER = "10001"  # the image's USER (deploy/container/Containerfile)
_SECONDS = 20.0
_BIND = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 53)); print('bound')"


def _python() -> str:
    """An interpreter user 10001 can run (the test's own may sit under /root)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        if all(os.stat(p).st_mode & 0o001 for p in [*Path(candidate).resolve().parents][:-1]):
            return candidate
    unavailable("no python3 that a non-root user can run (Debian package python3)")


def _bind(sysctl: str = "", setpriv: tuple[str, ...] = (), userns: bool = False) -> str:
    """Bind 127.0.0.1:53 as USER in a new network namespace; 'bound' or the error."""
    tools = {name: shutil.which(name) for name in ("unshare", "setpriv", "sysctl")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed (Debian packages util-linux, procps)")
    inner = [_python(), "-c", _BIND]
    if userns:
        inner = [str(tools["unshare"]), "--user", "--map-root-user", *inner]
    drop = [str(tools["setpriv"]), f"--reuid={USER}", f"--regid={USER}", "--clear-groups"]
    script = 'if [ -n "$1" ]; then "$2" -qw "$1"; fi; shift 2; exec "$@"'
    result = subprocess.run(
        [
            str(tools["unshare"]),
            "--net",
            "sh",
            "-c",
            script,
            "sh",
            sysctl,
            str(tools["sysctl"]),
            *drop,
            *setpriv,
            *inner,
        ],
        capture_output=True,
        text=True,
        timeout=_SECONDS,
        check=False,
    )
    if result.returncode == 0:
        return result.stdout.strip()
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"


def test_without_anything_a_non_root_user_cannot_bind_53() -> None:
    """The baseline that makes the other cases mean something."""
    assert "Permission denied" in _bind()


def test_pod_sysctl_lets_a_non_root_user_bind_53() -> None:
    """Kubernetes sidecar-dns and compose dns: the sysctl, no capability."""
    assert _bind(sysctl="net.ipv4.ip_unprivileged_port_start=53") == "bound"


def test_bounding_set_capability_alone_is_not_enough() -> None:
    """What NET_BIND_SERVICE in a non-root container's securityContext amounts to."""
    assert "Permission denied" in _bind(setpriv=("--bounding-set=-all,+net_bind_service",))


AMBIENT = ("--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service")


def test_ambient_capability_lets_a_non_root_user_bind_53() -> None:
    """systemd's AmbientCapabilities=CAP_NET_BIND_SERVICE (ipv4proxy.service.d/dns.conf)."""
    assert _bind(setpriv=AMBIENT) == "bound"


def test_ambient_capability_inside_a_private_user_namespace_is_not_enough() -> None:
    """PrivateUsers=yes would undo it: the drop-in sets PrivateUsers=no."""
    assert "Permission denied" in _bind(setpriv=AMBIENT, userns=True)
