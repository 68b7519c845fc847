"""The abuse run still runs: every scenario at small counts, no timing asserted.

``python3 -m benchmarks.abuse --quick`` starts a fresh proxy per scenario, holds a hostile
load against it and reads its RSS (benchmarks/README.md). At these counts every target is
far from its bound, so the run must exit 0 with every scenario's load fully opened and the
allowed client through; a scenario that did not run, a load that did not connect, or a
refused address that locks the allowed client out fails here. Needs a C compiler for the
load generator and Linux /proc.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.bench import NEEDS_LOADGEN, run_module

SCENARIOS = {"download_stalled", "upload_stalled", "slow_heads", "unanswered_names", "refused"}
FIELDS = ("base_kib", "peak_kib", "peak_sampled_kib", "after_kib")

pytestmark = NEEDS_LOADGEN


@pytest.mark.timeout(120)
def test_quick_abuse_run_reports_every_scenario(tmp_path: Path) -> None:
    run_module("benchmarks.abuse", "--quick", "--out", str(tmp_path), timeout=110)
    (report_file,) = tmp_path.glob("*-abuse-quick.json")
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["mode"] == "quick"
    metrics = report["metrics"]
    assert set(metrics) == SCENARIOS
    for name in SCENARIOS:
        scenario = metrics[name]
        for field in FIELDS:
            assert isinstance(scenario[field], int), (name, field)
            assert scenario[field] > 0, (name, field)
        assert scenario["peak_kib"] >= scenario["base_kib"], name  # VmHWM is a high-water mark
        load = scenario["load"]
        assert load["opened"] == load["requested"] == scenario["requested"], (name, load)
        assert load["failed"] == 0, (name, load)
        assert scenario["proxy_fds"]["peak"] > scenario["proxy_fds"]["base"] or name == "refused"
    assert metrics["refused"]["allowed_client_through"] is True
    assert metrics["unanswered_names"]["proxy_udp_sockets_peak"] >= 1
    assert {target["scenario"] for target in report["targets"]} == SCENARIOS
    assert all(target["met"] for target in report["targets"]), report["targets"]
    assert (tmp_path / report_file.name.replace(".json", ".md")).is_file()
