"""Real client programs as subprocesses: curl and the Node scripts in tests/node.

Each run is bounded (`PROGRAM_SECONDS`), gets a clean environment (no inherited proxy or CA
variable) plus what the test gives, and returns the completed process for assertions.
`run_program` runs any command that way (the lab prefixes it to run on its gateway);
`run_ipv4proxy` runs the proxy's own command line as an operator would (check-config,
doctor); the ``*_command`` functions build the curl and node command lines, and skip the
test (fail it in CI) with an install hint when the program or its packages are missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from helpers.ci import unavailable
from helpers.net import client_env
from helpers.proxy import REPO_ROOT

__all__ = [
    "NODE_DIR",
    "PROGRAM_SECONDS",
    "curl_binary",
    "curl_command",
    "node_binary",
    "node_command",
    "run_curl",
    "run_ipv4proxy",
    "run_node",
    "run_program",
]

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
PROGRAM_SECONDS = 30.0
# curl's own --max-time, a little under PROGRAM_SECONDS: curl says why it gave up.
_CURL_SECONDS = PROGRAM_SECONDS - 5


def run_program(
    argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` (stdin closed, output captured) in a clean environment plus `env`."""
    return subprocess.run(
        list(argv),
        env=client_env(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=PROGRAM_SECONDS,
        check=False,
    )


def run_ipv4proxy(
    args: Sequence[str], prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``[prefix...] python3 -m ipv4proxy <args>`` in the repository, output as text.

    The environment is clean (no IPV4PROXY_* variable of the test run), so only the
    arguments speak; `prefix` runs it elsewhere (``ip netns exec NAME``).
    """
    return subprocess.run(
        [*prefix, sys.executable, "-m", "ipv4proxy", *args],
        cwd=REPO_ROOT,
        env=client_env({"PYTHONDONTWRITEBYTECODE": "1"}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PROGRAM_SECONDS,
        check=False,
    )


def curl_binary() -> str:
    """The curl executable; skips (fails in CI) if curl is not installed."""
    curl = shutil.which("curl")
    if curl is None:
        unavailable("curl is not installed (Debian package curl)")
    return curl


def curl_command(args: Sequence[str], max_seconds: float = _CURL_SECONDS) -> list[str]:
    """``curl -q -sS --max-time N <args>`` (-q: ignore any ~/.curlrc)."""
    return [curl_binary(), "-q", "-sS", "--max-time", f"{max_seconds:g}", *args]


def node_binary(package_dir: Path = NODE_DIR, package: str = "") -> str:
    """The node executable, once `package_dir`'s packages (`package` among them) are installed.

    Skips (fails in CI) with the command that installs what is missing.
    """
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed (Debian packages nodejs npm)")
    if not (package_dir / "node_modules" / package).is_dir():
        unavailable(
            f"run: npm ci --ignore-scripts --prefix {package_dir} (or scripts/test, which does)"
        )
    return node


def node_command(script: str, args: Sequence[str], preload: Sequence[str] = ()) -> list[str]:
    """``node [-r module]... tests/node/<script> <args>``, to run in NODE_DIR."""
    requires = [part for module in preload for part in ("-r", module)]
    return [node_binary(), *requires, str(NODE_DIR / script), *args]


def run_curl(
    args: Sequence[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``curl -q -sS --max-time N <args>``."""
    return run_program(curl_command(args), env)


def run_node(
    script: str,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    preload: Sequence[str] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run ``node [-r module]... tests/node/<script> <args>`` in tests/node."""
    return run_program(node_command(script, args, preload), env, NODE_DIR)
