"""``python3 -m benchmarks.ab OTHER_TREE``: this checkout against another, in one run.

The figures a change to the tunnel set-up must keep (issues 15 and 16): new tunnels per
second and the proxy's CPU per tunnel over HTTP CONNECT and SOCKS5, the round trip added
on an open tunnel, and RSS per idle tunnel. Each tree gets its own proxy pinned to the
same core; every round measures both, the order alternating, so a busy neighbour slows
both alike. The report is each figure's median and range per tree (markdown on stdout,
JSON with every run beside it with ``--out``). It asserts nothing: compare medians with
the other tree's range.

    git worktree add /tmp/before <commit>
    python3 -m benchmarks.ab /tmp/before --rounds 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.procs import ROOT, Cores, Procs, build_loadgen
from benchmarks.suite import HOSTS, Settings, idle_memory, rate, round_trip

# One rate and one round-trip run per tree per round; the rounds are the repetitions.
AB = Settings(
    seconds=2.0, reps=1, rtt_count=10000, concurrency=64, hold=(2000, 4000), black_hole_tries=1
)
QUICK = Settings(
    seconds=0.3, reps=1, rtt_count=500, concurrency=64, hold=(100, 300), black_hole_tries=1
)
# (key, label, unit, better): the figures of one round.
FIGURES = (
    ("connect_per_s", "New HTTP CONNECT tunnels/s, concurrency 64", "/s", "higher"),
    ("connect_cpu_us", "Proxy CPU per HTTP CONNECT tunnel", "µs", "lower"),
    ("socks5_per_s", "New SOCKS5 tunnels/s, concurrency 64", "/s", "higher"),
    ("socks5_cpu_us", "Proxy CPU per SOCKS5 tunnel", "µs", "lower"),
    ("rtt_added_p50_us", "Round trip added, 1 KiB, p50", "µs", "lower"),
    ("idle_kib", "RSS per idle tunnel", "KiB", "lower"),
)


def describe(tree: Path) -> str:
    """The tree's commit, and ``+changes`` when its work tree differs from it."""

    def git(*args: str) -> str:
        done = subprocess.run(  # noqa: S603 - fixed argv
            ["git", "-C", str(tree), *args],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or tree.name
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


# A run leaves ~10,000 loopback connections per tree in TIME_WAIT for 60 s; at 40,000-60,000
# the kernel's search for a free ephemeral port makes every connect() (the load generator's
# and the proxy's) slower, and some runs collapse. Each tree's run waits (bounded) until
# fewer than this many are left, so both trees start from the same state.
SETTLE_TIME_WAIT = 8000
SETTLE_SECONDS = 70.0


def time_wait() -> int:
    """TCP sockets in TIME_WAIT in this network namespace (IPv4 and IPv6)."""
    count = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path, encoding="ascii") as file:
                count += sum(1 for line in file if line.split()[3:4] == ["06"])
        except OSError:
            continue
    return count


def settle(limit: int = SETTLE_TIME_WAIT, seconds: float = SETTLE_SECONDS) -> int:
    """Wait until fewer than ``limit`` sockets are in TIME_WAIT, at most ``seconds``; returns
    how many are left."""
    deadline = time.monotonic() + seconds
    left = time_wait()
    while left >= limit and time.monotonic() < deadline:
        time.sleep(1.0)
        left = time_wait()
    return left


def one_round(
    procs: Procs, settings: Settings, hosts: Path, tree: Path, idle: bool
) -> dict[str, float]:
    proxy = procs.proxy(hosts, tree=tree)
    connect = rate(procs, settings, proxy, "connect", with_direct=False)
    socks5 = rate(procs, settings, proxy, "socks5", with_direct=False)
    rtt = round_trip(procs, settings, proxy)
    figures = {
        "connect_per_s": connect["proxy_per_second"],
        "connect_cpu_us": connect["proxy_cpu_us_per_tunnel"],
        "socks5_per_s": socks5["proxy_per_second"],
        "socks5_cpu_us": socks5["proxy_cpu_us_per_tunnel"],
        "rtt_added_p50_us": rtt["added_p50_us"],
    }
    if idle:
        figures["idle_kib"] = idle_memory(procs, settings, hosts, tree)["per_tunnel_kib"]
    return figures


def table(names: list[str], runs: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        f"| Measure | {names[0]}: median [range] | {names[1]}: median [range] |",
        "|---|---:|---:|",
    ]
    for key, label, unit, better in FIGURES:
        cells = []
        for name in names:
            values = [run[key] for run in runs[name] if key in run]
            if not values:
                break
            cells.append(
                f"{statistics.median(values):,.1f} {unit} [{min(values):,.1f}-{max(values):,.1f}]"
            )
        if len(cells) == len(names):
            lines.append(f"| {label} ({better} is better) | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("other", type=Path, help="the other checkout (a git worktree)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--no-idle", action="store_true", help="skip RSS per idle tunnel")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a check that it runs)")
    parser.add_argument("--out", type=Path, help="directory for ab-DATE.json")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    other = args.other.resolve()
    if not (other / "ipv4proxy" / "__main__.py").is_file():
        parser.error(f"{other} holds no ipv4proxy package")
    if not 1 <= args.rounds <= 50:
        parser.error("--rounds: 1 to 50")
    settings = QUICK if args.quick else AB
    trees = {f"this ({describe(ROOT)})": ROOT, f"other ({describe(other)})": other}
    names = list(trees)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ipv4proxy-ab-") as tmp:
        workdir = Path(tmp)
        hosts = workdir / "hosts"
        hosts.write_text(HOSTS, encoding="utf-8")
        procs = Procs(workdir, Cores.pick(not args.no_pin), build_loadgen(workdir))
        try:
            for number in range(args.rounds):
                order = names if number % 2 == 0 else names[::-1]
                for name in order:
                    left = settle() if not args.quick else 0
                    print(
                        f"[{time.monotonic() - started:6.1f} s] round {number + 1}: {name}"
                        f" ({left:,} in TIME_WAIT)",
                        file=sys.stderr,
                        flush=True,
                    )
                    runs[name].append(
                        one_round(procs, settings, hosts, trees[name], not args.no_idle)
                    )
        finally:
            procs.close()
    load = f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    text = table(names, runs) + f"\n{args.rounds} rounds alternated, {load}.\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")
        report: dict[str, Any] = {"trees": {n: str(t) for n, t in trees.items()}, "runs": runs}
        (args.out / f"ab-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
