"""How many refusal lines the log takes per second, and the count of the rest.

Job: a refused connection costs its client one TCP handshake and the proxy one log line;
a flood of them (10,000 sockets from a refused address, a reconnect loop to a denied
name) would otherwise write as many lines as the kernel accepts connections. Each
refusal cause (the access line's ``outcome``) gets at most ``per_second`` lines in a
one-second window; the rest are counted, and the server logs one summary line per cause
for the window (``refusals-suppressed outcome=DENIED count=N``). Metrics still count
every refusal.

Rules: pure (time is passed in); memory is one small counter per cause, and there are
a few dozen causes at most.
"""

from __future__ import annotations

__all__ = ["LineBudget"]


class LineBudget:
    """Fixed one-second windows; ``per_second`` 0 means every line is logged."""

    __slots__ = ("_start", "_used", "per_second", "suppressed")

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._start = float("-inf")
        self._used: dict[str, int] = {}
        # Lines not logged since the last `take_suppressed`, per cause.
        self.suppressed: dict[str, int] = {}

    def take(self, cause: str, now: float) -> bool:
        """True when a line for ``cause`` may be logged at ``now`` (seconds, monotonic)."""
        if not self.per_second:
            return True
        if now - self._start >= 1.0:
            self._start = now
            self._used.clear()
        used = self._used.get(cause, 0)
        self._used[cause] = used + 1
        if used < self.per_second:
            return True
        self.suppressed[cause] = self.suppressed.get(cause, 0) + 1
        return False

    def take_suppressed(self) -> dict[str, int]:
        """The counts of lines not logged, per cause, since the last call; then zero."""
        counts, self.suppressed = self.suppressed, {}
        return counts
