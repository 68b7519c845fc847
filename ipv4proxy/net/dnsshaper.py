"""DNS mode's shaping, the glue: answers names with several A records with the one that works.

Job: for the DNS listener, take a rewritten A answer and return it shaped
(`protocols.dnsshape`: which address, and the rewrite, are decided there) after asking the
dialer what it knows and, when it knows nothing, running one connect race.

Rules:
- The dialer is the proxy's own (its memory and breakers, ``dialer`` is read at each
  answer, so a reload that replaces it is followed); so is the policy: a race only
  connects to addresses the proxy itself would connect to (``policy.address``).
- One race per name at a time: queries of a name being raced wait for that race, bounded
  by ``dns.shape_race_timeout``; at most ``_MAX_RACES`` races at once, over it an answer
  goes out unshaped at once. A stale result is used while one background race refreshes it.
- A race that connects nowhere leaves the answer unshaped, with a warning line naming the
  name, port and why each address failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ipv4proxy.config import Config
from ipv4proxy.log import event
from ipv4proxy.metrics import Metrics
from ipv4proxy.net.dialer import Dialer, describe_attempts
from ipv4proxy.policy import Policy
from ipv4proxy.protocols import dnsrewrite, dnsshape
from ipv4proxy.protocols.dnsshape import Answer, Choice, Choices, Known

__all__ = ["Shaper"]

log = logging.getLogger("ipv4proxy.dns")

Clock = Callable[[], float]

# Races at once (distinct names). A gateway resolves a few dozen names, most with one A
# record; 64 at once is a cold start of a busy pod, and a flood of many-address names
# costs at most 64 races' sockets (a few each).
_MAX_RACES = 64


class Shaper:
    """Shaped answers for one DNS listener: its race results and running races."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        dialer: Callable[[], Dialer],
        policy: Callable[[], Policy],
        clock: Clock = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self._dialer = dialer
        self._policy = policy
        self._clock = clock
        self._races: dict[str, asyncio.Task[Choice]] = {}
        self._refreshes: set[asyncio.Task[Choice]] = set()
        self.choices = Choices(clock, config.dns.shape_ttl)
        self.apply(config)

    def apply(self, config: Config) -> None:
        """New settings; the race results are kept unless ``dns.shape_ttl`` changed."""
        self.mode = config.dns.shape
        self.rules = config.dns.shape_rules()
        self.ttl = config.dns.shape_ttl
        self.race_timeout = config.dns.shape_race_timeout
        self.max_lifetime = config.resolver.max_ttl
        if self.choices.fresh != self.ttl:
            self.choices = Choices(self._clock, self.ttl)

    def close(self) -> None:
        for task in (*self._races.values(), *self._refreshes):
            task.cancel()

    async def shape(self, question: dnsrewrite.Question, wire: bytes) -> bytes:
        """``wire`` (the answer the client would get) shaped, or as it is."""
        if self.mode == "off" or question.qtype != dnsshape.A_TYPE:
            return wire
        message = dnsrewrite.answered(wire)
        found = dnsshape.a_records(message) if message is not None else None
        if message is None or found is None:
            return wire
        port = dnsshape.port_for(self.rules, found.name)
        if port is None:
            return wire
        dialer = self._dialer()
        known = Known(
            dialer.last_good(found.name),
            frozenset(a for a in found.addresses if dialer.breaker_open(a, port)),
        )
        remembered, stale = self.choices.get(found.name)
        choice = dnsshape.decide(found.addresses, known, remembered, stale)
        if choice is None:
            choice = await self._race(found, port, known)
        elif (remembered is None or stale) and choice.source in ("memory", "race"):
            self._refresh(found, port, known)  # verify the memory, renew the race result
        if choice is None or choice.good is None:
            return wire
        self.metrics.dns_shaped.labels(choice.source).inc()
        addresses = dnsshape.shaped_addresses(found.addresses, choice, self.mode)
        return dnsshape.shape(message, addresses, self.ttl)

    async def _race(self, found: Answer, port: int, known: Known) -> Choice | None:
        """The choice a race makes (joining the one running for this name); None when too
        many races run."""
        task = self._races.get(found.name)
        if task is None:
            if len(self._races) >= _MAX_RACES:
                self.metrics.dns_shape_races.labels("busy").inc()
                return None
            task = self._start(found, port, known)
        return await asyncio.shield(task)

    def _refresh(self, found: Answer, port: int, known: Known) -> None:
        """Run a race in the background for a stale result (unless one runs already)."""
        if found.name in self._races:
            return
        if len(self._races) >= _MAX_RACES:
            self.choices.touch(found.name)  # used as it is for another shape_ttl
            return
        task = self._start(found, port, known)
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    def _start(self, found: Answer, port: int, known: Known) -> asyncio.Task[Choice]:
        task = asyncio.ensure_future(self._run(found, port, known))
        self._races[found.name] = task
        task.add_done_callback(lambda _: self._races.pop(found.name, None))
        return task

    async def _run(self, found: Answer, port: int, known: Known) -> Choice:
        """One race's choice, remembered; never raises but CancelledError (its waiters and a
        background refresh would otherwise carry the error)."""
        try:
            return await self._race_once(found, port, known)
        except Exception:  # a bug: the name goes unshaped, with its traceback logged
            log.exception("dns shaping race for %s failed", found.name)
            return dnsshape.race_choice(None, (), known)

    async def _race_once(self, found: Answer, port: int, known: Known) -> Choice:
        policy = self._policy()
        candidates = [a for a in found.addresses if a not in known.open]
        allowed = [a for a in candidates if policy.address(a, port).allowed]
        lifetime = min(float(found.ttl), self.max_lifetime)
        if not allowed:
            self.metrics.dns_shape_races.labels("denied").inc()
            choice = dnsshape.race_choice(None, (), known)
            self._unshaped(found, port, "the policy refuses every address")
            self.choices.put(found.name, choice, lifetime)
            return choice
        started = self._clock()
        winner, failed = await self._dialer().race(found.name, allowed, port, self.race_timeout)
        choice = dnsshape.race_choice(winner, (a for a, _ in failed), known)
        self.choices.put(found.name, choice, lifetime)
        if winner is None:
            self.metrics.dns_shape_races.labels("failed").inc()
            self._unshaped(found, port, describe_attempts(failed))
        else:
            self.metrics.dns_shape_races.labels("won").inc()
            event(
                log,
                "dns_shape_race",
                logging.DEBUG,
                qname=found.name,
                port=port,
                address=winner,
                seconds=round(self._clock() - started, 4),
                failed=len(failed),
            )
        return choice

    def _unshaped(self, found: Answer, port: int, why: str) -> None:
        event(
            log,
            "dns_shape_unreachable",
            logging.WARNING,
            qname=found.name,
            port=port,
            addresses=",".join(found.addresses),
            error=why,
            outcome="unshaped",
        )
