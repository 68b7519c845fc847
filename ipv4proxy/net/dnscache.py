"""The DNS cache as a pure object: entries, expiry, serve-stale, prefetch, LRU bound.

No I/O and no asyncio: the resolver asks it questions with the current time of its
injected monotonic clock, so tests move time by passing numbers.

Rules:
- An entry is positive (addresses) or negative (NXDOMAIN or NODATA, RFC 2308); both are
  fresh until ``expires``.
- A positive entry may be served after expiry, for ``stale_window`` seconds, and only when
  every DNS server has just failed (RFC 8767 section 4). After such a failure the name is
  not asked again for ``STALE_RECHECK`` seconds (RFC 8767's failure recheck timer), so a
  dead DNS server costs one timeout per name per 30 s, not one per lookup.
- A fresh positive entry in the last ``prefetch`` fraction of its TTL asks to be refreshed.
- At most ``size`` names are held; the least recently used one goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ipv4proxy.errors import Failure

__all__ = ["STALE_RECHECK", "DnsCache", "Entry"]

# RFC 8767 section 5 recommends 30 s between attempts to refresh a name whose lookup failed.
STALE_RECHECK = 30.0


@dataclass(slots=True)
class Entry:
    """One name's answer. ``failure`` is None for addresses, else NXDOMAIN or NODATA."""

    addresses: tuple[str, ...]
    expires: float
    ttl: float
    failure: Failure | None = None
    reason: str = ""
    recheck_after: float = 0.0  # set when a refresh failed and the entry is being served stale
    name: str = ""  # the name that answered (through the search list), when not the key


class DnsCache:
    """Name -> Entry, bounded, on times the caller passes in."""

    def __init__(self, *, size: int, stale_window: float, prefetch: float) -> None:
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._size = max(1, size)
        self._stale_window = stale_window
        self._prefetch = prefetch

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, name: str, entry: Entry) -> None:
        """Store ``entry`` (replacing any), evicting the least recently used beyond the bound."""
        self._entries[name] = entry
        self._entries.move_to_end(name)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def fresh(self, name: str, now: float) -> Entry | None:
        """The unexpired entry of ``name`` (positive or negative), marked as recently used."""
        entry = self._entries.get(name)
        if entry is None or now >= entry.expires:
            return None
        self._entries.move_to_end(name)
        return entry

    def wants_prefetch(self, entry: Entry, now: float) -> bool:
        """Tell whether a hit on fresh positive ``entry`` should start a background refresh."""
        if entry.failure is not None or self._prefetch <= 0:
            return False
        return now >= entry.expires - entry.ttl * self._prefetch

    def stale(self, name: str, now: float) -> Entry | None:
        """An expired positive entry still inside the stale window, or None."""
        entry = self._entries.get(name)
        if entry is None or entry.failure is not None or now >= entry.expires + self._stale_window:
            return None
        self._entries.move_to_end(name)
        return entry

    def failed(self, name: str, now: float) -> Entry | None:
        """Record that refreshing ``name`` failed; returns the stale entry to serve, if any."""
        entry = self.stale(name, now)
        if entry is not None:
            entry.recheck_after = now + STALE_RECHECK
        return entry

    def recently_failed(self, name: str, now: float) -> Entry | None:
        """A stale entry to serve without asking DNS, while its recheck timer runs."""
        entry = self.stale(name, now)
        if entry is None or now >= entry.recheck_after:
            return None
        return entry
