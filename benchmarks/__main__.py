"""``python3 -m benchmarks``: the whole performance suite in one run (see benchmarks/README.md).

    python3 -m benchmarks                 full run; writes benchmarks/results/DATE.{json,md}
    python3 -m benchmarks --smoke         a < 30 s run of every measure, tiny sizes
    python3 -m benchmarks --out DIR       write the report elsewhere

Exit status 0 when every measure ran, whatever the figures: this is a measurement, not a
test, and it asserts no timings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.procs import ROOT, Cores, Procs, build_loadgen
from benchmarks.report import check_targets, machine, markdown
from benchmarks.suite import FULL, HOSTS, SMOKE, run_all

RESULTS = ROOT / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, under 30 s")
    parser.add_argument("--out", type=Path, help="directory for DATE.json and DATE.md")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    cores = Cores.pick(not args.no_pin)
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ipv4proxy-bench-") as tmp:
        workdir = Path(tmp)
        hosts = workdir / "hosts"
        hosts.write_text(HOSTS, encoding="utf-8")
        progress("building the load generator")
        procs = Procs(workdir, cores, build_loadgen(workdir))
        try:
            metrics = run_all(procs, settings, hosts, progress)
        finally:
            procs.close()
    now = datetime.datetime.now(datetime.UTC)
    report: dict[str, Any] = {
        "schema": 1,
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "smoke" if args.smoke else "full",
        "machine": machine(),
        # Other jobs on the machine move the figures; the load average says how busy it was.
        "load_average_1m": {"start": load_before[0], "end": os.getloadavg()[0]},
        "pinning": {"proxy": cores.proxy, "load": cores.load},
        "settings": {
            "seconds": settings.seconds,
            "reps": settings.reps,
            "rtt_count": settings.rtt_count,
            "concurrency": settings.concurrency,
            "hold": list(settings.hold),
            "black_hole_tries": settings.black_hole_tries,
            "proxy_log_level": "warning",
        },
        "metrics": metrics,
        "targets": check_targets(metrics),
        "duration_s": round(time.monotonic() - started, 1),
    }
    out = args.out or (Path(tempfile.gettempdir()) if args.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    stem = now.strftime("%Y-%m-%d") + ("-smoke" if args.smoke else "")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    table = markdown(report)
    (out / f"{stem}.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"report: {out / stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
