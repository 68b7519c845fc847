"""The run's report: the machine, the targets, and a Markdown table of the results."""

from __future__ import annotations

import os
import platform
import resource
import sys
from importlib import metadata
from typing import Any

from benchmarks.workers import markdown_rows

__all__ = ["TARGETS", "check_targets", "machine", "markdown"]

Metric = dict[str, Any]

# (metric, field, comparison, bound, text): the targets, proxy on one core.
TARGETS: tuple[tuple[str, str, str, float, str], ...] = (
    ("throughput_1", "ratio", ">=", 0.70, ">= 70% of direct"),
    ("throughput_8", "ratio", ">=", 0.75, ">= 75% of direct"),
    ("rate_http_connect", "proxy_per_second", ">=", 7500, ">= 7,500 /s"),
    ("rate_socks5", "proxy_per_second", ">=", 7500, ">= 7,500 /s"),
    ("round_trip", "proxy_p50_us", "<=", 90, "p50 <= 90 µs"),
    ("round_trip", "proxy_p99_us", "<=", 250, "p99 <= 250 µs"),
    ("idle_memory", "per_tunnel_kib", "<=", 4.0, "<= 4 KiB"),
    ("black_hole", "worst_handshake_s", "<=budget", 0.6, "<= 0.6 s + path handshake"),
    ("workers", "scaling", ">=", 1.8, ">= 1.8x from 1 to 2 workers"),
    # Issue 16: new tunnels/s on one core at least the better peer's (when one is installed).
    ("peers", "ratio_connect", ">=", 1.0, ">= 1.0x the better of microsocks and tinyproxy"),
    ("peers", "ratio_socks5", ">=", 1.0, ">= 1.0x the better of microsocks and tinyproxy"),
)


def check_targets(metrics: Metric) -> list[dict[str, Any]]:
    results = []
    for name, field, op, bound, text in TARGETS:
        value = metrics[name][field]
        if value is None:  # a comparison with nothing to compare with (no peer installed)
            met = False
        elif op == ">=":
            met = value >= bound
        elif op == "<=":
            met = value <= bound
        else:  # the black-hole budget depends on the path's own handshake time
            met = value <= metrics[name]["budget_s"]
        results.append(
            {"metric": name, "field": field, "value": value, "target": text, "met": bool(met)}
        )
    return results


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """What the figures were measured on (no host names or paths)."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    mem_kib = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if "MemTotal" in line
        ),
        0,
    )
    try:
        uvloop_version = metadata.version("uvloop")
    except metadata.PackageNotFoundError:
        uvloop_version = "absent"
    return {
        "cpu": model,
        "cpus_online": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "uvloop": uvloop_version,
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def _gbps(value: float) -> str:
    return f"{value * 8 / 1e9:.1f} Gbit/s"


def _peer_rows(m: Metric, mark: Any) -> list[str]:
    """The same tunnel rates beside the other proxies of the run (issue 16's comparison)."""
    peers = m["peers"]
    rows = []
    labels = {"microsocks": "SOCKS5", "tinyproxy": "HTTP CONNECT"}
    for name, label in labels.items():
        peer = peers[name]
        if "skipped" in peer:
            rows.append(f"| New tunnels/s, {name} ({label}) | | {peer['skipped']} | | | | | |")
            continue
        rows.append(
            f"| New tunnels/s, {name} ({label}), concurrency {peer['concurrency']} "
            f"| | {peer['proxy_per_second']:,.0f} | | | | {peer['proxy_cpu_pct']}% "
            f"| {peer['loadgen_cpu_pct']}% |"
        )
        rows.append(
            f"| ↳ {name} CPU per tunnel | | {peer['proxy_cpu_us_per_tunnel']:,.0f} µs | | | | | |"
        )
    for proto, label in (("connect", "HTTP CONNECT"), ("socks5", "SOCKS5")):
        ratio = peers[f"ratio_{proto}"]
        shown = f"{ratio:.2f}x {peers['best']}" if ratio is not None else "no peer installed"
        rows.append(
            f"| ipv4proxy {label} tunnels/s against the better peer | | {shown} | | >= 1.0x "
            f"| {mark('peers', f'ratio_{proto}')} | | |"
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    met = {(t["metric"], t["field"]): t["met"] for t in report["targets"]}

    def mark(metric: str, field: str) -> str:
        return "yes" if met[(metric, field)] else "**no**"

    t1, t8, rt = m["throughput_1"], m["throughput_8"], m["round_trip"]
    hc, s5, mem, bh = m["rate_http_connect"], m["rate_socks5"], m["idle_memory"], m["black_hole"]
    rows = [
        "| Measure | Direct | ipv4proxy | Ratio | Target | Met | Proxy CPU | Load-gen CPU |",
        "|---|---:|---:|---:|---|:-:|---:|---:|",
        f"| Throughput, 1 tunnel | {_gbps(t1['direct_bytes_per_second'])} "
        f"| {_gbps(t1['proxy_bytes_per_second'])} | {t1['ratio']:.0%} | >= 70% "
        f"| {mark('throughput_1', 'ratio')} | {t1['proxy_cpu_pct']}% | {t1['loadgen_cpu_pct']}% |",
        f"| Throughput, 8 tunnels | {_gbps(t8['direct_bytes_per_second'])} "
        f"| {_gbps(t8['proxy_bytes_per_second'])} | {t8['ratio']:.0%} | >= 75% "
        f"| {mark('throughput_8', 'ratio')} | {t8['proxy_cpu_pct']}% | {t8['loadgen_cpu_pct']}% |",
    ]
    for label, r, key in (("HTTP CONNECT", hc, "rate_http_connect"), ("SOCKS5", s5, "rate_socks5")):
        rows.append(
            f"| New tunnels/s, {label}, concurrency {r['concurrency']} "
            f"| {r['direct_per_second']:,.0f} | {r['proxy_per_second']:,.0f} | {r['ratio']:.0%} "
            f"| >= 7,500 | {mark(key, 'proxy_per_second')} | {r['proxy_cpu_pct']}% "
            f"| {r['loadgen_cpu_pct']}% |"
        )
        rows.append(
            f"| ↳ proxy CPU per tunnel | | {r['proxy_cpu_us_per_tunnel']:,.0f} µs | | | | | |"
        )
        rows.append(
            f"| ↳ handshake p50 / p99 | {r['direct_connect_p50_us']:,.0f} / "
            f"{r['direct_connect_p99_us']:,.0f} µs | {r['handshake_p50_us']:,.0f} / "
            f"{r['handshake_p99_us']:,.0f} µs | | | | | |"
        )
    rows += [
        f"| Round trip 1 KiB, p50 | {rt['direct_p50_us']:.0f} µs | {rt['proxy_p50_us']:.0f} µs "
        f"| +{rt['added_p50_us']:.0f} µs | <= 90 µs | {mark('round_trip', 'proxy_p50_us')} "
        f"| {rt['proxy_cpu_pct']}% | {rt['loadgen_cpu_pct']}% |",
        f"| Round trip 1 KiB, p99 | {rt['direct_p99_us']:.0f} µs | {rt['proxy_p99_us']:.0f} µs "
        f"| | <= 250 µs | {mark('round_trip', 'proxy_p99_us')} | | |",
        f"| RSS per idle tunnel ({mem['counts'][0]:,} → {mem['counts'][1]:,} tunnels, all live) "
        f"| | {mem['per_tunnel_kib']:.2f} KiB | | <= 4 KiB "
        f"| {mark('idle_memory', 'per_tunnel_kib')} | | |",
        f"| Connect via 2 black holes + 1 live A record | {bh['path_handshake_s'] * 1000:.1f} ms "
        f"(1 live record) | {bh['worst_handshake_s'] * 1000:.0f} ms (worst of {bh['tries']}) "
        f"| | <= {bh['budget_s'] * 1000:.0f} ms | {mark('black_hole', 'worst_handshake_s')} | | |",
    ]
    rows += markdown_rows(m["workers"])
    rows += _peer_rows(m, mark)
    mach = report["machine"]
    head = [
        f"## ipv4proxy benchmark, {report['date']}",
        "",
        f"Machine: {mach['cpu']}, {mach['cpus_usable']} usable CPUs, "
        f"{mach['memory_gib']} GiB, Linux {mach['kernel']}, Python {mach['python']}, "
        f"uvloop {mach['uvloop']}, open files limit {mach['open_files_limit']:,}. "
        f"Proxy pinned to CPU {report['pinning']['proxy']}, load generator and servers "
        f"(C, epoll) to CPU {report['pinning']['load']}; loopback only; proxy at "
        f"`--log-level warning`. Mode: {report['mode']}; medians of "
        f"{report['settings']['reps']} runs of {report['settings']['seconds']} s. "
        f"Load average (1 min) {report['load_average_1m']['start']:.1f} at the start, "
        f"{report['load_average_1m']['end']:.1f} at the end (other jobs on the machine).",
        "",
    ]
    notes = [
        "",
        "Direct is the same load generator against the same server with no proxy; the "
        "direct throughput puts client and server on one core, the proxied run adds the "
        "proxy's core. CPU columns are the share of one core used during the run: the "
        f"proxy's, and the load generator's core (client plus server). Idle memory is the "
        f"slope of the proxy's RSS between {mem['counts'][0]:,} and {mem['counts'][1]:,} "
        f"open tunnels, each echoing a byte before and after the reading; 20,000 tunnels "
        f"would need 40,000 descriptors in the proxy, over this machine's per-process "
        f"limit of {mem['open_files_limit']:,}.",
    ]
    return "\n".join(head + rows + notes) + "\n"
