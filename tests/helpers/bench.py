"""Running the benchmark scripts from tests in their quick modes (tests/integration)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The scripts build a C load generator and read /proc: the marks of every test running one.
NEEDS_LOADGEN = [
    pytest.mark.skipif(
        shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler"
    ),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def run_module(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python3 -m MODULE ARGS`` in the checkout; asserts it exited 0, with its output."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done
