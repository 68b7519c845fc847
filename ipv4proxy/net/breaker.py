"""Dialer memory, as pure objects: which address worked last, and which keep failing.

No I/O: time comes from an injected monotonic clock.

Rules:
- `Memory`: per name, the address that last connected; `order()` puts it first and keeps
  the rest in DNS order.
- `Breaker`: per endpoint (an `Endpoint`: IPv4 address and port), consecutive connect
  failures. At
  ``threshold`` the breaker opens: the endpoint is left out of races for ``cooldown``
  seconds, as long as the name has another endpoint that is not open (a name whose every
  address is open still tries them all: skipping would only turn a slow answer into none).
  After the cooldown it is half-open: tried again, and one more failure opens it for another
  cooldown, while one success closes it.
- Both tables are bounded (least recently used go first), so random destinations cannot
  grow memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

__all__ = ["TABLE_SIZE", "Breaker", "Endpoint", "Memory"]

Clock = Callable[[], float]

# Names and endpoints remembered; far above what one gateway talks to.
TABLE_SIZE = 10000

_Key = TypeVar("_Key", bound=Hashable)


class Endpoint(NamedTuple):
    """An IPv4 address and a port: what one connect attempt goes to, and what a breaker
    counts. Written ``address:port``. (A tuple: as cheap to make and hash as the string
    it replaces, and never parsed back.)"""

    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


def _bounded_put(table: OrderedDict[_Key, object], key: _Key, value: object) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > TABLE_SIZE:
        table.popitem(last=False)


class Memory:
    """Name -> the address that last connected."""

    def __init__(self) -> None:
        self._last: OrderedDict[str, object] = OrderedDict()

    def connected(self, name: str, address: str) -> None:
        _bounded_put(self._last, name, address)

    def last(self, name: str) -> str | None:
        """The address that last connected for ``name``, or None (read only)."""
        last = self._last.get(name)
        return last if isinstance(last, str) else None

    def order(self, name: str, addresses: Sequence[str]) -> list[str]:
        """``addresses`` with the one that last connected for ``name`` first."""
        last = self._last.get(name)
        if last in addresses:
            return [str(last), *(a for a in addresses if a != last)]
        return list(addresses)


@dataclass(slots=True)
class _State:
    failures: int = 0
    open_until: float = 0.0


class Breaker:
    """Per-endpoint circuit breakers: closed, open for ``cooldown``, then half-open."""

    def __init__(self, *, threshold: int, cooldown: float, clock: Clock) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._states: OrderedDict[Endpoint, object] = OrderedDict()

    def _state(self, key: Endpoint) -> _State | None:
        state = self._states.get(key)
        return state if isinstance(state, _State) else None

    def is_open(self, key: Endpoint) -> bool:
        """Tell whether ``key`` is skipped now (open, cooldown still running)."""
        state = self._state(key)
        return state is not None and self._clock() < state.open_until

    def state(self, key: Endpoint) -> str:
        """``closed``, ``open`` or ``half-open`` (for logs and tests)."""
        state = self._state(key)
        if state is None or state.failures < self._threshold:
            return "closed"
        return "open" if self._clock() < state.open_until else "half-open"

    def failure(self, key: Endpoint) -> bool:
        """Count a connect failure; returns True when this failure opened the breaker.

        A failure while already open (tried because every address was open) extends the
        cooldown but returns False, so the opening is logged once.
        """
        state = self._state(key) or _State()
        now = self._clock()
        was_open = now < state.open_until
        state.failures += 1
        _bounded_put(self._states, key, state)
        if state.failures >= self._threshold:
            state.open_until = now + self._cooldown
            return not was_open
        return False

    def success(self, key: Endpoint) -> bool:
        """Forget ``key``'s failures; returns True when this closed an opened breaker."""
        state = self._states.pop(key, None)
        return isinstance(state, _State) and state.failures >= self._threshold

    def select(self, keys: Sequence[Endpoint]) -> list[Endpoint]:
        """The keys to try now: those not open, or all of them when every one is open."""
        usable = [key for key in keys if not self.is_open(key)]
        return usable or list(keys)
