"""The measurements: each one runs direct (the ceiling) and through ipv4proxy in one run.

Every figure is the median of ``reps`` repetitions, direct and proxied runs interleaved so
that drift on the machine touches both alike. CPU is reported per process over the whole
client run (connect and warm-up included): the proxy's core, and the load generator's core
(the C client plus the C server it talks to), so a reader can see which side was the limit.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.procs import ROOT, Procs, cpu_seconds, rss_kib
from benchmarks.workers import workers_rate

__all__ = ["FULL", "SMOKE", "Settings", "run_all"]

Metric = dict[str, Any]

HOSTS = """\
# ipv4proxy benchmark: the black-hole name lists two addresses that drop SYNs first.
127.0.0.2 blackhole.bench.test
127.0.0.3 blackhole.bench.test
127.0.0.1 blackhole.bench.test
127.0.0.1 direct.bench.test
"""


@dataclass(frozen=True)
class Settings:
    seconds: float  # measured window of each stream and rate run (plus a fifth of warm-up)
    reps: int  # repetitions of each throughput, rate and round-trip run; medians reported
    rtt_count: int  # ping-pongs per round-trip run
    concurrency: int  # tunnels in flight in the rate runs (the issue says 64)
    hold: tuple[int, int]  # idle tunnel counts between which RSS per tunnel is measured
    black_hole_tries: int


# 9,800 idle tunnels are 19,600 proxy descriptors: the most that fit under this machine's
# limit of 20,000 open files per process (see benchmarks/README.md for why not 20,000 tunnels).
FULL = Settings(
    seconds=3.0, reps=3, rtt_count=20000, concurrency=64, hold=(5000, 9800), black_hole_tries=3
)
SMOKE = Settings(
    seconds=0.3, reps=1, rtt_count=1000, concurrency=64, hold=(200, 600), black_hole_tries=1
)


@contextlib.contextmanager
def _cpu(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """CPU seconds each of ``pids`` used during the block, plus its wall time."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    used: dict[str, float] = {}
    yield used
    used["wall"] = time.monotonic() - started
    for name, pid in pids.items():
        used[name] = cpu_seconds(pid) - before[name]


def _pct(seconds: float, wall: float) -> float:
    return round(100.0 * seconds / wall, 1) if wall > 0 else 0.0


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _timeout(settings: Settings) -> float:
    return settings.seconds * 1.2 + 60.0


def _run_pair(
    procs: Procs,
    *,
    settings: Settings,
    mode: str,
    direct_args: list[str],
    proxy_args: list[str],
    servers: dict[str, int],
    proxy_pid: int,
    with_direct: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``reps`` interleaved direct and proxied runs, each annotated with CPU percentages
    (proxied runs only when not ``with_direct``)."""
    direct: list[dict[str, Any]] = []
    proxied: list[dict[str, Any]] = []
    pairs = ((direct_args, direct), (proxy_args, proxied))
    for _ in range(settings.reps):
        for args, into in pairs if with_direct else pairs[1:]:
            with _cpu({**servers, "proxy": proxy_pid}) as used:
                report = procs.client(mode, args, _timeout(settings))
            load = report["process_cpu_seconds"] + sum(used[name] for name in servers)
            report["loadgen_cpu_pct"] = _pct(load, used["wall"])
            report["proxy_cpu_pct"] = _pct(used["proxy"], used["wall"])
            into.append(report)
    return direct, proxied


def throughput(procs: Procs, settings: Settings, proxy: tuple[int, int], conns: int) -> Metric:
    pid, port = procs.server("stream-server")
    common = ["--target", f"127.0.0.1:{port}", "--conns", str(conns)]
    common += ["--seconds", str(settings.seconds)]
    via = ["--proxy", f"127.0.0.1:{proxy[1]}", "--proto", "connect"]
    direct, proxied = _run_pair(
        procs,
        settings=settings,
        mode="stream",
        direct_args=common,
        proxy_args=common + via,
        servers={"server": pid},
        proxy_pid=proxy[0],
    )
    direct_bps = _median([r["bytes_per_second"] for r in direct])
    proxy_bps = _median([r["bytes_per_second"] for r in proxied])
    return {
        "tunnels": conns,
        "direct_bytes_per_second": round(direct_bps),
        "proxy_bytes_per_second": round(proxy_bps),
        "ratio": round(proxy_bps / direct_bps, 3),
        "direct_loadgen_cpu_pct": _median([r["loadgen_cpu_pct"] for r in direct]),
        "loadgen_cpu_pct": _median([r["loadgen_cpu_pct"] for r in proxied]),
        "proxy_cpu_pct": _median([r["proxy_cpu_pct"] for r in proxied]),
        # CPU the proxy spends per GiB relayed: steadier than throughput on a busy machine.
        "proxy_cpu_s_per_gib": round(
            _median([r["proxy_cpu_pct"] / 100 / r["bytes_per_second"] * 2**30 for r in proxied]),
            4,
        ),
        "runs": {"direct": direct, "proxy": proxied},
    }


def rate(
    procs: Procs, settings: Settings, proxy: tuple[int, int], proto: str, with_direct: bool = True
) -> Metric:
    """New tunnels per second at ``settings.concurrency``; ``with_direct`` False (an A/B)
    skips the direct runs, whose ~30,000 connections a run only fill TIME_WAIT."""
    pid, port = procs.server("echo-server")
    common = ["--target", f"127.0.0.1:{port}", "--conns", str(settings.concurrency)]
    common += ["--seconds", str(settings.seconds)]
    via = ["--proxy", f"127.0.0.1:{proxy[1]}", "--proto", proto]
    direct, proxied = _run_pair(
        procs,
        settings=settings,
        mode="rate",
        direct_args=common,
        proxy_args=common + via,
        servers={"server": pid},
        proxy_pid=proxy[0],
        with_direct=with_direct,
    )
    best = sorted(proxied, key=lambda r: r["per_second"])[len(proxied) // 2]  # the median run
    if not direct:
        direct = [{"per_second": 0.0, "handshake_p50_us": 0.0, "handshake_p99_us": 0.0}]
        direct[0]["loadgen_cpu_pct"] = 0.0
    direct_rate = _median([r["per_second"] for r in direct])
    proxy_rate = float(best["per_second"])
    return {
        "protocol": proto,
        "concurrency": settings.concurrency,
        "direct_per_second": round(direct_rate, 1),
        "proxy_per_second": round(proxy_rate, 1),
        "ratio": round(proxy_rate / direct_rate, 3) if direct_rate else 0.0,
        "direct_connect_p50_us": _median([r["handshake_p50_us"] for r in direct]),
        "direct_connect_p99_us": _median([r["handshake_p99_us"] for r in direct]),
        "handshake_p50_us": best["handshake_p50_us"],
        "handshake_p99_us": best["handshake_p99_us"],
        "errors": sum(r["errors"] for r in proxied),
        "direct_loadgen_cpu_pct": _median([r["loadgen_cpu_pct"] for r in direct]),
        "loadgen_cpu_pct": best["loadgen_cpu_pct"],
        "proxy_cpu_pct": best["proxy_cpu_pct"],
        "proxy_cpu_us_per_tunnel": round(
            _median([r["proxy_cpu_pct"] / 100 / r["per_second"] * 1e6 for r in proxied]), 1
        ),
        "runs": {"direct": direct, "proxy": proxied},
    }


def round_trip(procs: Procs, settings: Settings, proxy: tuple[int, int]) -> Metric:
    pid, port = procs.server("echo-server")
    common = ["--target", f"127.0.0.1:{port}", "--count", str(settings.rtt_count)]
    common += ["--size", "1024"]
    via = ["--proxy", f"127.0.0.1:{proxy[1]}", "--proto", "connect"]
    direct, proxied = _run_pair(
        procs,
        settings=settings,
        mode="rtt",
        direct_args=common,
        proxy_args=common + via,
        servers={"server": pid},
        proxy_pid=proxy[0],
    )
    p50 = _median([r["p50_us"] for r in proxied])
    return {
        "size": 1024,
        "count": settings.rtt_count,
        "direct_p50_us": _median([r["p50_us"] for r in direct]),
        "direct_p99_us": _median([r["p99_us"] for r in direct]),
        "proxy_p50_us": p50,
        "proxy_p99_us": _median([r["p99_us"] for r in proxied]),
        "added_p50_us": round(p50 - _median([r["p50_us"] for r in direct]), 2),
        "loadgen_cpu_pct": _median([r["loadgen_cpu_pct"] for r in proxied]),
        "proxy_cpu_pct": _median([r["proxy_cpu_pct"] for r in proxied]),
        "runs": {"direct": direct, "proxy": proxied},
    }


def idle_memory(procs: Procs, settings: Settings, hosts: Path, tree: Path = ROOT) -> Metric:
    """RSS of a fresh proxy (of the code in ``tree``) at two counts of idle, verified-live
    tunnels; the slope is the cost of one more tunnel, free of the interpreter's fixed cost."""
    _, port = procs.server("echo-server")
    proxy_pid, proxy_port = procs.proxy(hosts, tree=tree)
    low, high = settings.hold
    args = ["--target", f"127.0.0.1:{port}", "--proxy", f"127.0.0.1:{proxy_port}"]
    args += ["--proto", "connect", "--conns", "64", "--seconds", "120"]
    # Warm the code paths and the allocator with fewer tunnels than the low count, so that
    # memory they free is reused below the low count and not between the two readings.
    with procs.holder([*args, "--count", str(min(200, low // 2))], 150.0):
        pass
    _settle(lambda: _fds(proxy_pid) < 20)
    rss_start = rss_kib(proxy_pid)
    with procs.holder([*args, "--count", str(low)], 150.0) as first:
        rss_low = rss_kib(proxy_pid)
        fds_low = _fds(proxy_pid)
        live_low = first.verify()
        with procs.holder([*args, "--count", str(high - low)], 150.0) as second:
            rss_high = rss_kib(proxy_pid)
            fds_high = _fds(proxy_pid)
            live_high = first.verify() + second.verify()
    per_tunnel = (rss_high - rss_low) / (high - low)
    return {
        "counts": [low, high],
        "verified_live": [live_low, live_high],
        "proxy_fds": [fds_low, fds_high],
        "rss_kib": [rss_start, rss_low, rss_high],
        "per_tunnel_kib": round(per_tunnel, 3),
        "per_tunnel_from_start_kib": round((rss_low - rss_start) / low, 3),
        "open_files_limit": _nofile(),
    }


def black_hole(procs: Procs, settings: Settings, proxy: tuple[int, int]) -> Metric:
    """Time to a tunnel when the first two of three A records drop SYNs, against the same
    tunnel to a name whose only address answers."""
    _, port = procs.server("echo-server", bind="127.0.0.1")
    with _black_holes(("127.0.0.2", "127.0.0.3"), port):
        via = ["--proxy", f"127.0.0.1:{proxy[1]}", "--proto", "connect"]
        direct = [
            procs.client("connect", ["--target", f"direct.bench.test:{port}", *via], 30.0)
            for _ in range(settings.black_hole_tries)
        ]
        holes = [
            procs.client("connect", ["--target", f"blackhole.bench.test:{port}", *via], 30.0)
            for _ in range(settings.black_hole_tries)
        ]
    base = _median([r["handshake_s"] for r in direct])
    worst = max(r["handshake_s"] for r in holes)
    return {
        "addresses": ["127.0.0.2 (drops SYNs)", "127.0.0.3 (drops SYNs)", "127.0.0.1"],
        "tries": settings.black_hole_tries,
        "path_handshake_s": round(base, 6),
        "handshake_s": round(_median([r["handshake_s"] for r in holes]), 6),
        "worst_handshake_s": round(worst, 6),
        "first_echo_s": round(_median([r["first_echo_s"] for r in holes]), 6),
        "budget_s": round(0.6 + base, 6),
    }


@contextlib.contextmanager
def _black_holes(addresses: tuple[str, ...], port: int) -> Iterator[None]:
    """Listeners with a backlog of 0 whose one queue slot is taken: further SYNs are dropped."""
    with contextlib.ExitStack() as stack:
        for address in addresses:
            listener = stack.enter_context(socket.socket())
            listener.bind((address, port))
            listener.listen(0)
            stack.enter_context(socket.create_connection((address, port), 2.0))
            probe = stack.enter_context(socket.socket())
            probe.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                probe.connect((address, port))
                raise RuntimeError(f"{address}:{port} accepted a connection; not a black hole")
        yield


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settle(ready: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.05)


def _nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# Other proxies measured beside ipv4proxy when installed (the comparison: C proxies
# with a thread or a process per connection), and the protocol each is asked in.
PEERS = (("microsocks", "socks5"), ("tinyproxy", "connect"))


def peers(procs: Procs, settings: Settings, ours: dict[str, Metric]) -> Metric:
    """New tunnels per second (and CPU per tunnel) of each installed peer, pinned to the
    proxy's core like ipv4proxy, against ipv4proxy's own rates of this run (``ours``:
    ``connect`` and ``socks5``); a peer that is not installed is skipped with a note."""
    found: Metric = {}
    for name, proto in PEERS:
        if shutil.which(name) is None:
            found[name] = {"skipped": f"not installed (apt-get install {name})"}
            continue
        pid, port = procs.peer(name)
        try:
            found[name] = rate(procs, settings, (pid, port), proto, with_direct=False)
        finally:
            procs.stop(pid)
    measured = {n: m["proxy_per_second"] for n, m in found.items() if "skipped" not in m}
    best = max(measured, key=measured.__getitem__) if measured else None
    found["best"] = best
    found["best_per_second"] = measured[best] if best else None
    for proto, metric in ours.items():
        ratio = metric["proxy_per_second"] / measured[best] if best else None
        found[f"ratio_{proto}"] = round(ratio, 3) if ratio is not None else None
    return found


def run_all(
    procs: Procs, settings: Settings, hosts: Path, progress: Callable[[str], None]
) -> Metric:
    """Every measurement, in one run; returns the ``metrics`` part of the report."""
    metrics: Metric = {}
    proxy = procs.proxy(hosts)
    progress("throughput, 1 tunnel")
    metrics["throughput_1"] = throughput(procs, settings, proxy, 1)
    progress("throughput, 8 tunnels")
    metrics["throughput_8"] = throughput(procs, settings, proxy, 8)
    progress("round trip, 1 KiB")
    metrics["round_trip"] = round_trip(procs, settings, proxy)
    progress("new tunnels per second, HTTP CONNECT")
    metrics["rate_http_connect"] = rate(procs, settings, proxy, "connect")
    progress("new tunnels per second, SOCKS5")
    metrics["rate_socks5"] = rate(procs, settings, proxy, "socks5")
    progress("the same beside other proxies (microsocks, tinyproxy) when installed")
    metrics["peers"] = peers(
        procs,
        settings,
        {"connect": metrics["rate_http_connect"], "socks5": metrics["rate_socks5"]},
    )
    progress("black holes")
    metrics["black_hole"] = black_hole(procs, settings, proxy)
    progress(f"idle memory, {settings.hold[0]} and {settings.hold[1]} tunnels")
    metrics["idle_memory"] = idle_memory(procs, settings, hosts)
    progress("new tunnels per second, 1 worker against 2 (every core for the proxy)")
    metrics["workers"] = workers_rate(procs, settings, hosts)
    return metrics
