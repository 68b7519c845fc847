"""The benchmark suite still runs: every measure, tiny sizes, no timing asserted.

This keeps ``python3 -m benchmarks`` from rotting; the figures themselves are only read by
people (benchmarks/README.md). Needs a C compiler for the load generator and Linux /proc.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.bench import NEEDS_LOADGEN, ROOT, run_module

_RATE = (
    "direct_per_second",
    "proxy_per_second",
    "handshake_p50_us",
    "handshake_p99_us",
    "proxy_cpu_pct",
    "loadgen_cpu_pct",
)
# metric -> fields that must be positive numbers in any run that worked
EXPECTED = {
    "throughput_1": ("direct_bytes_per_second", "proxy_bytes_per_second", "ratio"),
    "throughput_8": ("direct_bytes_per_second", "proxy_bytes_per_second", "ratio"),
    "round_trip": ("direct_p50_us", "direct_p99_us", "proxy_p50_us", "proxy_p99_us"),
    "rate_http_connect": _RATE,
    "rate_socks5": _RATE,
    "idle_memory": ("per_tunnel_kib",),
    "black_hole": ("path_handshake_s", "handshake_s", "worst_handshake_s", "budget_s"),
    "workers": ("one_worker_per_second", "two_workers_per_second", "scaling"),
    # The other proxies' rows: checked below (each one measured, or skipped with a note).
    "peers": (),
}

pytestmark = NEEDS_LOADGEN


@pytest.mark.timeout(90)
def test_smoke_run_reports_every_metric(tmp_path: Path) -> None:
    run_module("benchmarks", "--smoke", "--out", str(tmp_path), timeout=80)
    (report_file,) = tmp_path.glob("*.json")
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["mode"] == "smoke"
    metrics = report["metrics"]
    for metric, fields in EXPECTED.items():
        for field in fields:
            value = metrics[metric][field]
            assert isinstance(value, int | float), (metric, field, value)
            assert value > 0, (metric, field, value)
    assert metrics["rate_http_connect"]["errors"] == 0
    assert metrics["rate_socks5"]["errors"] == 0
    assert metrics["workers"]["errors"] == 0
    low, high = metrics["idle_memory"]["counts"]
    assert metrics["idle_memory"]["verified_live"] == [low, high]
    assert {t["metric"] for t in report["targets"]} == set(EXPECTED)
    for rate in ("rate_http_connect", "rate_socks5"):
        assert metrics[rate]["proxy_cpu_us_per_tunnel"] > 0  # a first-class figure
    for peer in ("microsocks", "tinyproxy"):
        row = metrics["peers"][peer]
        assert "skipped" in row or (row["proxy_per_second"] > 0 and row["errors"] == 0), row
    assert (tmp_path / report_file.name.replace(".json", ".md")).is_file()


@pytest.mark.timeout(90)
def test_ab_run_reports_every_figure_for_both_trees(tmp_path: Path) -> None:
    """``benchmarks.ab`` with this checkout as the other tree too: one quick round."""
    quick = ["--quick", "--rounds", "1", "--out", str(tmp_path)]
    done = run_module("benchmarks.ab", str(ROOT), *quick, timeout=80)
    rows = [line for line in done.stdout.splitlines() if "is better) |" in line]
    assert len(rows) == 6, done.stdout  # every figure, two cells each
    (report_file,) = tmp_path.glob("ab-*.json")
    runs = json.loads(report_file.read_text(encoding="utf-8"))["runs"]
    assert [len(tree_runs) for tree_runs in runs.values()] == [1, 1]
    for (tree_run,) in runs.values():
        assert all(value > 0 for key, value in tree_run.items() if key != "rtt_added_p50_us")
