"""Stopping a program a test started: only that process, by its PID, bounded in time.

Every helper that starts a long-running program (the proxy, dnsmasq, microsocks, the lab's
service host) stops it the same way: SIGTERM, so the program can shut down cleanly and
write its last log lines, then SIGKILL if it has not exited within a bound.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

__all__ = ["STOP_SECONDS", "stop_process"]

# How long a program may take to exit after SIGTERM (and then after SIGKILL): far more than
# any of them needs on an idle machine, so a slow, shared CI machine does not get a SIGKILL.
STOP_SECONDS = 5.0


def stop_process(process: subprocess.Popen[Any], seconds: float = STOP_SECONDS) -> bool:
    """SIGTERM `process`, then SIGKILL it if it has not exited within `seconds`.

    Does nothing if it has already exited. Returns True if it needed the SIGKILL.
    Raises subprocess.TimeoutExpired if it outlives the SIGKILL by `seconds`.
    """
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=seconds)
        return True
    return False
