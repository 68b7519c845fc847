"""``python3 -m benchmarks.abuse``: the proxy's memory under abuse (issue 12), in one run.

    python3 -m benchmarks.abuse            full sizes; writes results/DATE-abuse.{json,md}
    python3 -m benchmarks.abuse --quick    small counts, under 40 s (what the smoke test runs)
    python3 -m benchmarks.abuse --out DIR  write the report elsewhere; --no-pin: no taskset

Each scenario starts a fresh proxy with its built-in defaults (only the listener, the hosts
file, the nameserver, the log level and a policy that lets it reach loopback servers are
set), reads its RSS (VmRSS) once it is idle (base), holds a hostile load while sampling RSS
and descriptors, and reads RSS again a few seconds after the load's process is gone
(after). Peak is the kernel's high-water mark (VmHWM), which no sampling interval can miss.

Scenarios: download-stalled tunnels (the destination keeps sending, the client never
reads), upload-stalled tunnels (the client keeps sending, the destination never reads),
slow heads (32,700 bytes of a request head that never ends), never-answered names
(CONNECTs to distinct names, the nameserver a UDP socket that never answers) and refused
clients (idle sockets from 127.0.0.2 on, outside the listener's ``clients``, while the
allowed client 127.0.0.1 must still get a tunnel through).

Targets (issue 12): peak <= base + 64 MiB and after <= base + 16 MiB in every scenario; the
allowed client gets through; and the load really held (every connection it asked for was
made). Exit status 1 when a target is missed, 0 otherwise.

Rules: loopback only; counts and every wait are bounded; only processes this run started
are stopped, each by its PID (benchmarks/procs.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.procs import (
    ROOT,
    Cores,
    Procs,
    build_loadgen,
    fd_count,
    rss_kib,
    rss_peak_kib,
    udp_sockets,
)
from benchmarks.report import machine

__all__ = ["FULL", "QUICK", "Sizes", "main"]

RESULTS = ROOT / "benchmarks" / "results"
MIB = 1024  # KiB
PEAK_TARGET_KIB = 64 * MIB
AFTER_TARGET_KIB = 16 * MIB
SCENARIOS = ("download_stalled", "upload_stalled", "slow_heads", "unanswered_names", "refused")
Metric = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    download: int  # download-stalled tunnels
    upload: int  # upload-stalled tunnels
    heads: int  # connections with an unfinished 32,700-byte head
    names: int  # CONNECTs to distinct names nobody answers for
    refused: int  # idle sockets from refused client addresses
    hold_s: float  # how long the load is held while RSS is sampled
    after_s: float  # wait once the proxy's connections are gone, before "after" is read
    open_s: float  # bound on opening the load


# The sizes. 4,000 tunnels are 8,000 descriptors in the proxy and 4,000 in each of
# the client and destination processes: under the 20,000 open-files cap of each process.
FULL = Sizes(4000, 4000, 9000, 10_000, 10_000, hold_s=3.0, after_s=5.0, open_s=120.0)
QUICK = Sizes(100, 100, 200, 200, 300, hold_s=0.5, after_s=1.0, open_s=20.0)
# Sampling interval while the load holds, and the bound on waiting for the proxy to let go
# of the connections once the load is gone (a slow head is cut at the 10 s handshake
# timeout at the latest, a name at the 5 s resolver timeout).
SAMPLE_S = 0.25
SETTLE_S = 20.0
PROXY_FLAGS = (
    # Nothing else resolves, and the host's search list must not multiply the queries.
    "--resolv-conf",
    "/dev/null",
)


class Run:
    """One abuse run: the processes, the progress line, the sizes."""

    def __init__(self, procs: Procs, sizes: Sizes, hosts: Path, progress: Callable[[str], None]):
        self.procs = procs
        self.sizes = sizes
        self.hosts = hosts
        self.progress = progress

    def measure(
        self,
        name: str,
        load_args: list[str],
        *,
        requested: int,
        proxy_pid: int,
        count_udp: bool = False,
        during: Callable[[], Metric] | None = None,
        servers: Sequence[int] = (),
    ) -> Metric:
        """Base RSS, the load held (sampled), then RSS after; the proxy is stopped at the end.

        The load ends with its client process and the destination ``servers``: both sides of
        every tunnel close, as when a hostile tenant goes away."""
        self.progress(f"{name}: {requested:,} connections")
        _settle(lambda: False, 0.5)  # let the start-up settle
        base = rss_kib(proxy_pid)
        base_fds = fd_count(proxy_pid)
        samples: list[int] = []
        peak_fds = peak_udp = 0
        extra: Metric = {}
        started = time.monotonic()
        with self.procs.python_holder(load_args, self.sizes.open_s) as load:
            opened = dict(load.opened)
            open_s = time.monotonic() - started
            deadline = time.monotonic() + self.sizes.hold_s
            for _ in range(int(self.sizes.hold_s / SAMPLE_S) + 1):
                samples.append(rss_kib(proxy_pid))
                peak_fds = max(peak_fds, fd_count(proxy_pid))
                if count_udp:
                    peak_udp = max(peak_udp, udp_sockets(proxy_pid))
                if time.monotonic() >= deadline:
                    break
                time.sleep(SAMPLE_S)
            if during is not None:
                extra = during()
        for pid in servers:
            self.procs.stop(pid)
        closed = time.monotonic()
        _settle(lambda: fd_count(proxy_pid) <= base_fds + 2, SETTLE_S)
        settled_s = time.monotonic() - closed
        time.sleep(self.sizes.after_s)
        after = rss_kib(proxy_pid)
        peak = rss_peak_kib(proxy_pid)
        self.procs.stop(proxy_pid)
        result: Metric = {
            "requested": requested,
            "load": opened,
            "open_s": round(open_s, 2),
            "base_kib": base,
            "peak_kib": peak,
            "peak_sampled_kib": max(samples),
            "after_kib": after,
            "peak_over_base_mib": round((peak - base) / MIB, 1),
            "after_over_base_mib": round((after - base) / MIB, 1),
            "proxy_fds": {"base": base_fds, "peak": peak_fds},
            "connections_gone_after_s": round(settled_s, 2),
            "after_wait_s": self.sizes.after_s,
            **extra,
        }
        if count_udp:
            result["proxy_udp_sockets_peak"] = peak_udp
        return result

    def proxy(self, **kwargs: Any) -> tuple[int, int]:
        return self.procs.proxy(self.hosts, PROXY_FLAGS, **kwargs)

    def stalled(self, mode: str, count: int) -> Metric:
        kind = "source" if mode == "download" else "sink"
        server_pid, port = self.procs.python_server(kind)
        proxy_pid, proxy_port = self.proxy()
        args = [mode, "--proxy", f"127.0.0.1:{proxy_port}", "--target", f"127.0.0.1:{port}"]
        args += ["--count", str(count)]
        return self.measure(
            f"{mode}-stalled tunnels",
            args,
            requested=count,
            proxy_pid=proxy_pid,
            servers=[server_pid],
        )

    def heads(self) -> Metric:
        count = self.sizes.heads
        proxy_pid, proxy_port = self.proxy()
        args = ["heads", "--proxy", f"127.0.0.1:{proxy_port}", "--count", str(count)]
        return self.measure("slow heads", args, requested=count, proxy_pid=proxy_pid)

    def names(self) -> Metric:
        count = self.sizes.names
        with _silent_nameserver() as nameserver:
            proxy_pid, proxy_port = self.proxy(nameserver=nameserver)
            args = ["names", "--proxy", f"127.0.0.1:{proxy_port}", "--count", str(count)]
            args += ["--tag", f"r{os.getpid()}"]
            return self.measure(
                "never-answered names", args, requested=count, proxy_pid=proxy_pid, count_udp=True
            )

    def refused(self) -> Metric:
        count = self.sizes.refused
        _, echo_port = self.procs.server("echo-server")
        proxy_pid, proxy_port = self.proxy(clients=["127.0.0.1/32"])
        args = ["idle", "--proxy", f"127.0.0.1:{proxy_port}", "--count", str(count)]

        def allowed_client() -> Metric:
            """The allowed client's CONNECT and echo, while the refused sockets are held."""
            via = ["--proxy", f"127.0.0.1:{proxy_port}", "--proto", "connect"]
            try:
                report = self.procs.client(
                    "connect", ["--target", f"127.0.0.1:{echo_port}", *via], 30.0
                )
            except RuntimeError as exc:
                return {"allowed_client_through": False, "allowed_client_error": str(exc)}
            return {
                "allowed_client_through": True,
                "allowed_client_handshake_ms": round(report["handshake_s"] * 1000, 2),
            }

        return self.measure(
            "refused clients", args, requested=count, proxy_pid=proxy_pid, during=allowed_client
        )


@contextlib.contextmanager
def _silent_nameserver() -> Iterator[str]:
    """A UDP socket on 127.0.0.1 that never reads, so never answers: ``IP:PORT``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def _settle(ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.05)


def check_targets(metrics: Metric) -> list[Metric]:
    """Each scenario's targets, met or not."""
    results: list[Metric] = []
    for name in SCENARIOS:
        m = metrics[name]
        over_peak = m["peak_kib"] - m["base_kib"]
        over_after = m["after_kib"] - m["base_kib"]
        held = m["load"]["opened"]
        results += [
            {
                "scenario": name,
                "target": "peak <= base + 64 MiB",
                "met": over_peak <= PEAK_TARGET_KIB,
            },
            {
                "scenario": name,
                "target": "after <= base + 16 MiB",
                "met": over_after <= AFTER_TARGET_KIB,
            },
            {
                "scenario": name,
                "target": f"load held ({held:,} of {m['requested']:,} opened)",
                "met": held == m["requested"],
            },
        ]
    results.append(
        {
            "scenario": "refused",
            "target": "allowed client gets through",
            "met": bool(metrics["refused"].get("allowed_client_through")),
        }
    )
    return results


def markdown(report: Metric) -> str:
    m = report["metrics"]
    met: dict[str, bool] = {}
    for target in report["targets"]:
        met[target["scenario"]] = met.get(target["scenario"], True) and target["met"]
    labels = {
        "download_stalled": "download-stalled tunnels",
        "upload_stalled": "upload-stalled tunnels",
        "slow_heads": "slow heads (32,700 B each)",
        "unanswered_names": "never-answered names",
        "refused": "refused clients (idle)",
    }
    rows = [
        "| Scenario | Count | Base | Peak | After | Peak - base | After - base "
        "| Proxy fds (peak) | Met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for name in SCENARIOS:
        r = m[name]
        rows.append(
            f"| {labels[name]} | {r['requested']:,} | {r['base_kib'] / MIB:.1f} MiB "
            f"| {r['peak_kib'] / MIB:.1f} MiB | {r['after_kib'] / MIB:.1f} MiB "
            f"| +{r['peak_over_base_mib']:.1f} MiB | {r['after_over_base_mib']:+.1f} MiB "
            f"| {r['proxy_fds']['peak']:,} | {'yes' if met[name] else '**no**'} |"
        )
    names, refused = m["unanswered_names"], m["refused"]
    mach = report["machine"]
    notes = [
        "",
        f"Never-answered names: the proxy held at most {names['proxy_udp_sockets_peak']:,} "
        f"UDP sockets and {names['proxy_fds']['peak']:,} descriptors. Refused clients: the "
        f"allowed client (127.0.0.1) got a tunnel through while {refused['load']['connected']:,} "
        f"sockets from refused addresses were held: "
        f"**{'yes' if refused.get('allowed_client_through') else 'no'}**.",
        "",
        "Targets (issue 12): peak <= base + 64 MiB, after <= base + 16 MiB, "
        "measured with VmHWM (peak) and VmRSS (base, after) of the proxy process; after is "
        f"read {report['sizes']['after_s']:g} s after the proxy's connections are gone. A "
        "scenario also fails when its load did not fully connect.",
    ]
    head = [
        f"## ipv4proxy abuse run, {report['date']}",
        "",
        f"Machine: {mach['cpu']}, {mach['cpus_usable']} usable CPUs, {mach['memory_gib']} GiB, "
        f"Linux {mach['kernel']}, Python {mach['python']}, uvloop {mach['uvloop']}. "
        f"Mode: {report['mode']}. Proxy: built-in defaults, pinned to CPU "
        f"{report['pinning']['proxy']}; clients and servers (Python, C) on CPU "
        f"{report['pinning']['load']}; loopback only. Load average (1 min) "
        f"{report['load_average_1m']['start']:.1f} at the start, "
        f"{report['load_average_1m']['end']:.1f} at the end.",
        "",
    ]
    return "\n".join(head + rows + notes) + "\n"


def run_all(run: Run) -> Metric:
    sizes = run.sizes
    return {
        "download_stalled": run.stalled("download", sizes.download),
        "upload_stalled": run.stalled("upload", sizes.upload),
        "slow_heads": run.heads(),
        "unanswered_names": run.names(),
        "refused": run.refused(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.abuse", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, under 40 s")
    parser.add_argument("--out", type=Path, help="directory for DATE-abuse.json and .md")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    cores = Cores.pick(not args.no_pin)
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ipv4proxy-abuse-") as tmp:
        workdir = Path(tmp)
        hosts = workdir / "hosts"
        hosts.write_text("# ipv4proxy abuse run: no names here\n", encoding="utf-8")
        progress("building the load generator")
        procs = Procs(workdir, cores, build_loadgen(workdir))
        try:
            metrics = run_all(Run(procs, sizes, hosts, progress))
        finally:
            procs.close()
    now = datetime.datetime.now(datetime.UTC)
    report: Metric = {
        "schema": 1,
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "load_average_1m": {"start": load_before[0], "end": os.getloadavg()[0]},
        "pinning": {"proxy": cores.proxy, "load": cores.load},
        "sizes": asdict(sizes),
        "proxy": "built-in defaults; --policy-allow-cidrs 127.0.0.0/8 --policy-ports 1-65535 "
        "--log-level warning --resolv-conf /dev/null --admin-listen ''",
        "metrics": metrics,
        "duration_s": round(time.monotonic() - started, 1),
    }
    report["targets"] = check_targets(metrics)
    out = args.out or (Path(tempfile.gettempdir()) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    stem = now.strftime("%Y-%m-%d") + ("-abuse-quick" if args.quick else "-abuse")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    table = markdown(report)
    (out / f"{stem}.md").write_text(table, encoding="utf-8")
    print(table)
    missed = [t for t in report["targets"] if not t["met"]]
    for target in missed:
        print(f"missed: {target['scenario']}: {target['target']}", file=sys.stderr)
    print(f"report: {out / stem}.json and .md", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
