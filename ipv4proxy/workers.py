"""Workers: what each of N proxy processes gets, decided without I/O where it can be.

``workers: N`` (docs/operations.md, "Workers") runs N worker processes under one
supervisor (``ipv4proxy.supervisor``). This module holds the parts both sides share:

- how many workers ``auto`` means: the CPUs this process may run on (its affinity) and
  the cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``),
  whichever is smaller, rounded down, at least 1 (rounded down because a quota of 1.5
  CPUs shared by two busy processes throttles both every period: latency on every relayed
  frame, for half a core);
- each worker's share of every per-process bound, so the pod as a whole holds no more than
  the configuration says (`shared`, `SHARED`);
- the worker's view of the configuration (`WorkerRole.shape`): its shares, the ports the
  supervisor bound (a port of 0 is picked once, for every worker), its private admin
  socket, and the DNS listener on worker 0 only.

Rules: pure functions take file contents, not paths; the one function that reads the
system (`cpu_count`) only gathers those contents.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipv4proxy.config import Config
from ipv4proxy.errors import ConfigError

__all__ = [
    "CUT_SIGNAL",
    "ROLE_ENV",
    "SHARED",
    "WorkerRole",
    "available_cpus",
    "cpu_count",
    "quota_v1",
    "quota_v2",
    "share",
    "shared",
    "worker_count",
]

# The variable that makes a process a worker: JSON written by the supervisor. Not an
# IPV4PROXY_ setting (it starts with "_"), so no one sets it by accident.
ROLE_ENV = "_IPV4PROXY_WORKER"

# What the supervisor sends a worker for its second stop signal: cut every tunnel now. Not
# a second SIGTERM: a worker takes any number of those as one stop, since systemd's default
# KillMode sends one to every process of the unit besides the supervisor's own.
CUT_SIGNAL = signal.SIGUSR2

# Every per-process count or budget: each worker gets `share` of it, and the shares add up
# to the configured value. A value of 0 where 0 means "no bound" stays 0. Per-connection
# settings (sizes, timeouts) are not shared; the DNS listener's bounds stay whole, since
# one worker runs it.
SHARED: tuple[tuple[str, str], ...] = (
    ("limits", "max_connections"),
    ("limits", "max_connections_per_client"),
    ("limits", "relay_memory"),
    ("limits", "handshake_memory"),
    ("resolver", "max_in_flight"),
    ("resolver", "cache_size"),
    ("log", "refusals_per_second"),
)


def share(total: int, count: int, index: int) -> int:
    """Worker ``index``'s part of ``total`` split ``count`` ways: the first ``total %
    count`` workers get one more, so the parts add up to ``total`` exactly."""
    return total // count + (1 if index < total % count else 0)


def shared(config: Config, count: int, index: int) -> Config:
    """``config`` with worker ``index``'s share of every `SHARED` bound. Raises ConfigError
    naming the key when a bound is too small to give each of ``count`` workers at least 1
    (0 would mean "no bound" for some keys, and "refuse everything" for the others)."""
    sections: dict[str, dict[str, int]] = {}
    for section, key in SHARED:
        total = getattr(getattr(config, section), key)
        if total == 0:
            continue
        if total < count:
            raise ConfigError(
                f"{section}.{key}: {total} cannot be shared by {count} workers (each needs "
                f"at least 1); raise it or lower workers"
            )
        sections.setdefault(section, {})[key] = share(total, count, index)
    changes = {
        section: dataclasses.replace(getattr(config, section), **values)
        for section, values in sections.items()
    }
    return dataclasses.replace(config, **changes)


def quota_v2(cpu_max: str) -> float | None:
    """CPUs a cgroup v2 ``cpu.max`` allows (``"150000 100000"`` is 1.5); None for
    ``max`` (no quota) or a line that cannot be read."""
    words = cpu_max.split()
    if len(words) != 2 or words[0] == "max":
        return None
    return quota_v1(words[0], words[1])


def quota_v1(quota: str, period: str) -> float | None:
    """CPUs a cgroup v1 ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` allows; None for
    ``-1`` (no quota) or values that cannot be read."""
    try:
        q, p = int(quota.strip()), int(period.strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def available_cpus(affinity: int, quotas: Sequence[float | None]) -> int:
    """The workers ``auto`` means: the smaller of the CPUs in the affinity mask and the
    tightest quota, rounded down, at least 1."""
    limits = [float(affinity), *(q for q in quotas if q is not None)]
    return max(1, math.floor(min(limits)))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def _cgroup_dirs(root: Path, relative: str) -> list[Path]:
    """The cgroup's directory and each of its parents up to ``root`` (a parent's quota
    bounds its children too). In a container ``/proc/self/cgroup`` may name a path of the
    host's tree, which does not exist under the container's mount: then the root alone."""
    here = root / relative.strip("/")
    if not here.is_dir():
        return [root]
    return [here, *(p for p in here.parents if p.is_relative_to(root))]


def cpu_count(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """`available_cpus` for this process (Linux; without cgroup files, the affinity)."""
    affinity = len(os.sched_getaffinity(0))
    quotas: list[float | None] = []
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        _, controllers, relative = [*line.split(":", 2), "", ""][:3]
        if controllers == "":  # cgroup v2, the unified tree
            for directory in _cgroup_dirs(cgroup, relative):
                quotas.append(quota_v2(_read(directory / "cpu.max") or ""))
        elif "cpu" in controllers.split(","):
            mount = cgroup / controllers
            for directory in _cgroup_dirs(mount if mount.is_dir() else cgroup / "cpu", relative):
                quota = _read(directory / "cpu.cfs_quota_us") or ""
                quotas.append(quota_v1(quota, _read(directory / "cpu.cfs_period_us") or ""))
    return available_cpus(affinity, quotas)


def worker_count(setting: str) -> int:
    """The number of workers ``workers`` (a checked setting) asks for here."""
    return cpu_count() if setting == "auto" else int(setting)


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What makes a process worker ``index`` of ``count``, as the supervisor says it:
    ``ports`` are the listener ports it bound (for a configured port of 0), ``admin`` the
    path of the worker's private admin socket, ``pod_admin`` the supervisor's admin
    listener as bound (``HOST:PORT``, or empty), which the loop guard refuses as a target."""

    index: int
    count: int
    ports: tuple[int, ...]
    admin: str
    pod_admin: str = ""

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerRole | None:
        text = environ.get(ROLE_ENV)
        if not text:
            return None
        data: dict[str, Any] = json.loads(text)
        ports = tuple(int(port) for port in data["ports"])
        return cls(int(data["index"]), int(data["count"]), ports, data["admin"], data["pod_admin"])

    def shape(self, config: Config) -> Config:
        """The configuration this worker runs with (at start and at each reload). Raises
        ConfigError as `shared` does."""
        config = shared(config, self.count, self.index)
        listeners = tuple(
            dataclasses.replace(listener, port=port) if listener.port == 0 else listener
            for listener, port in zip(config.listeners, self.ports, strict=False)
        )
        listeners += config.listeners[len(listeners) :]  # a listener added: reload refuses
        dns = config.dns if self.index == 0 else dataclasses.replace(config.dns, listen=())
        return dataclasses.replace(config, listeners=listeners, dns=dns, workers="1")
