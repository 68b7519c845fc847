"""Real client programs as subprocesses: curl and the Node scripts in tests/node.

Each run is bounded (`PROGRAM_SECONDS`), gets a clean environment (no inherited proxy or CA
variable) plus what the test gives, and returns the completed process for assertions.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from helpers.ci import unavailable
from helpers.net import client_env

__all__ = ["NODE_DIR", "PROGRAM_SECONDS", "run_curl", "run_node"]

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
PROGRAM_SECONDS = 30.0


def _run(
    argv: Sequence[str], env: Mapping[str, str] | None, cwd: Path | None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(argv),
        env=client_env(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=PROGRAM_SECONDS,
        check=False,
    )


def run_curl(
    args: Sequence[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``curl -q -sS --max-time N <args>`` (-q: ignore any ~/.curlrc)."""
    curl = shutil.which("curl")
    if curl is None:
        unavailable("curl is not installed (Debian package curl)")
    return _run([curl, "-q", "-sS", "--max-time", str(int(PROGRAM_SECONDS - 5)), *args], env, None)


def run_node(
    script: str,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    preload: Sequence[str] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run ``node [-r module]... tests/node/<script> <args>`` in tests/node."""
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed (Debian packages nodejs npm)")
    if not (NODE_DIR / "node_modules").is_dir():
        unavailable(f"run: npm ci --prefix {NODE_DIR} (or scripts/test, which does)")
    requires = [part for module in preload for part in ("-r", module)]
    return _run([node, *requires, str(NODE_DIR / script), *args], env, NODE_DIR)
