"""The workers row: new tunnels per second through 1 worker and through 2 (``workers: N``).

    python3 -m benchmarks              runs it with the rest of the suite
    python3 -m benchmarks.workers      this row alone, full sizes (~30 s); --out DIR keeps
                                       the JSON and Markdown (DATE-workers.json, .md)

N workers on N cores against 1 worker on 1 core: the 1-worker proxy is pinned to the
suite's proxy core (CPU 0), as in the other rows; in the 2-worker proxy, once every worker
is ready, worker 0 is pinned to CPU 0 and worker 1 to CPU 1 (the supervisor, idle, to
both), while the load generator and its echo server stay pinned to CPU 1, as in every
other row. On a 2-core machine that gives the proxy both cores and the load generator a
share of the second one, so the second worker never has a whole core: the scaling is a
floor, not the ceiling. (Pinned rather than free on both cores: left free, the kernel's
wake-up affinity keeps putting a proxy process on the load generator's core, which it
wakes on every packet, and the two then share one core.) The two proxies run side by
side and their runs alternate, so drift on the machine touches both. Proxy CPU is the
whole tree's (the supervisor and every worker).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.procs import Cores, Procs, build_loadgen, cpu_seconds, free_port

__all__ = ["markdown_rows", "workers_rate"]

Metric = dict[str, Any]

_READY_SECONDS = 20.0


def _tree(pid: int) -> list[int]:
    """``pid`` and its children (a supervisor's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as file:
            return [pid, *map(int, file.read().split())]
    except OSError:
        return [pid]


def _tree_cpu(pid: int) -> float:
    total = 0.0
    for member in _tree(pid):
        with contextlib.suppress(OSError):  # a worker gone since the listing
            total += cpu_seconds(member)
    return total


def _ready(port: int) -> None:
    """Wait, bounded, until the admin listener says every worker is ready."""
    deadline = time.monotonic() + _READY_SECONDS
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"the proxy's /readyz on port {port} was not 200 within 20 s")


def _start(procs: Procs, hosts: Path, count: int, cores: list[int]) -> tuple[int, int]:
    """A proxy of ``count`` workers, ready; with more than one, worker I pinned to
    ``cores[I]`` (the supervisor to all of them)."""
    admin = free_port()
    pid, port = procs.proxy(
        hosts, ["--workers", str(count), "--admin-listen", f"127.0.0.1:{admin}"]
    )
    _ready(admin)
    if count > 1:
        os.sched_setaffinity(pid, set(cores))
        for index, worker in enumerate(_tree(pid)[1:]):  # in start order: worker 0 first
            os.sched_setaffinity(worker, {cores[index % len(cores)]})
    return pid, port


def workers_rate(procs: Procs, settings: Any, hosts: Path) -> Metric:
    """HTTP CONNECT tunnels/s at the suite's concurrency, 1 worker against 2."""
    cores = [core for core in (procs.cores.proxy, procs.cores.load) if core is not None]
    cores = cores or sorted(os.sched_getaffinity(0))[:2]
    server, server_port = procs.server("echo-server")
    proxies = {count: _start(procs, hosts, count, cores) for count in (1, 2)}
    common = ["--target", f"127.0.0.1:{server_port}", "--conns", str(settings.concurrency)]
    common += ["--seconds", str(settings.seconds), "--proto", "connect"]
    runs: dict[int, list[Metric]] = {1: [], 2: []}
    for _ in range(settings.reps):
        for count, (pid, port) in proxies.items():
            before, server_before = _tree_cpu(pid), cpu_seconds(server)
            started = time.monotonic()
            report = procs.client(
                "rate", [*common, "--proxy", f"127.0.0.1:{port}"], settings.seconds * 1.2 + 60
            )
            wall = time.monotonic() - started
            load = report["process_cpu_seconds"] + cpu_seconds(server) - server_before
            report["proxy_cpu_pct"] = round(100 * (_tree_cpu(pid) - before) / wall, 1)
            report["loadgen_cpu_pct"] = round(100 * load / wall, 1)
            runs[count].append(report)
    for pid, _ in proxies.values():
        procs.stop(pid)
    procs.stop(server)
    medians = {
        count: sorted(r, key=lambda x: x["per_second"])[len(r) // 2] for count, r in runs.items()
    }
    one, two = medians[1], medians[2]
    return {
        "protocol": "connect",
        "concurrency": settings.concurrency,
        "proxy_cpus": cores,
        "load_cpu": procs.cores.load,
        "one_worker_per_second": round(float(one["per_second"]), 1),
        "two_workers_per_second": round(float(two["per_second"]), 1),
        "scaling": round(two["per_second"] / one["per_second"], 2),
        "one_worker_cpu_pct": one["proxy_cpu_pct"],
        "two_workers_cpu_pct": two["proxy_cpu_pct"],
        "one_worker_loadgen_cpu_pct": one["loadgen_cpu_pct"],
        "two_workers_loadgen_cpu_pct": two["loadgen_cpu_pct"],
        # CPU per tunnel, the whole tree's: equal for 1 and 2 workers means the rate grows
        # with the CPU the workers get, and a shortfall from 2x is CPU they did not get.
        "one_worker_cpu_us_per_tunnel": round(one["proxy_cpu_pct"] / one["per_second"] * 1e4, 1),
        "two_workers_cpu_us_per_tunnel": round(two["proxy_cpu_pct"] / two["per_second"] * 1e4, 1),
        "errors": sum(r["errors"] for rs in runs.values() for r in rs),
        "runs": {"1": runs[1], "2": runs[2]},
    }


def markdown_rows(w: Metric) -> list[str]:
    """The workers rows of the report's table (its columns: Measure, Direct, ipv4proxy,
    Ratio, Target, Met, Proxy CPU, Load-gen CPU)."""
    one, both = w["proxy_cpus"][0], " and ".join(map(str, w["proxy_cpus"]))
    return [
        f"| New tunnels/s, HTTP CONNECT, 1 worker on CPU {one} (load on CPU "
        f"{w['load_cpu']}) | | {w['one_worker_per_second']:,.0f} | | | "
        f"| {w['one_worker_cpu_pct']}% ({w['one_worker_cpu_us_per_tunnel']:.0f} µs/tunnel) "
        f"| {w['one_worker_loadgen_cpu_pct']}% |",
        f"| ↳ 2 workers on CPUs {both} (one shared with the load) | "
        f"| {w['two_workers_per_second']:,.0f} "
        f"| {w['scaling']:.2f}x | >= 1.8x "
        f"| {'yes' if w['scaling'] >= 1.8 else '**no**'} | {w['two_workers_cpu_pct']}% "
        f"({w['two_workers_cpu_us_per_tunnel']:.0f} µs/tunnel) "
        f"| {w['two_workers_loadgen_cpu_pct']}% |",
    ]


def main(argv: list[str] | None = None) -> int:
    from benchmarks.report import machine  # noqa: PLC0415 - report imports this module
    from benchmarks.suite import FULL, HOSTS  # noqa: PLC0415 - suite imports this module

    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.workers", description=__doc__)
    parser.add_argument("--out", type=Path, help="directory for DATE-workers.json and .md")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ipv4proxy-bench-") as tmp:
        workdir = Path(tmp)
        hosts = workdir / "hosts"
        hosts.write_text(HOSTS, encoding="utf-8")
        procs = Procs(workdir, Cores.pick(True), build_loadgen(workdir))
        try:
            metric = workers_rate(procs, FULL, hosts)
        finally:
            procs.close()
    now = datetime.datetime.now(datetime.UTC)
    report = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "settings": {"seconds": FULL.seconds, "reps": FULL.reps},
        "workers": metric,
    }
    header = "| Measure | Direct | ipv4proxy | Ratio | Target | Met | Proxy CPU | Load-gen CPU |"
    table = "\n".join([header, "|---|---:|---:|---:|---|:-:|---:|---:|", *markdown_rows(metric)])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / (now.strftime("%Y-%m-%d") + "-workers")
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
        stem.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
