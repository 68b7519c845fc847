"""The Grafana dashboard and the Prometheus alert rules (deploy/monitoring/), against a real
Prometheus (Debian's `prometheus` package, which brings `promtool`).

- `promtool check rules` accepts the rule file, and every alert has `for:`, a severity, a
  summary and a description with a runbook line, and reads `LEFT-HAND SIDE OP NUMBER`.
- `promtool test rules` (tests/deploy/monitoring/alerts_test.yaml) fires every alert on
  synthetic series and none on a healthy proxy.
- Every metric name and label value the queries use is one the proxy exports
  (ipv4proxy.metrics), so a typo cannot hide behind an empty graph.
- Prometheus, started on loopback, scrapes a live proxy under a short load (good tunnels,
  a refused port, an NXDOMAIN name, a denied name); then every dashboard query and every
  alert's left-hand side returns data through the HTTP API, and every rule evaluates
  without error.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from helpers.ci import unavailable
from helpers.deploy import DEPLOY, REPO_ROOT
from helpers.process import stop_process
from helpers.proxy import ProxyFactory, ProxyProcess
from helpers.servers import TestServers
from helpers.wire import http_connect, socks5_request
from ipv4proxy.config import LimitsConfig
from ipv4proxy.errors import Failure
from ipv4proxy.metrics import CLOSED_CUT, CLOSED_OK, Metrics
from ipv4proxy.net.resolver import LOOKUP_RESULTS

MONITORING = DEPLOY / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULE_TESTS = Path(__file__).parent / "monitoring" / "alerts_test.yaml"
OPERATIONS_DOC = REPO_ROOT / "docs" / "operations.md"

# The scrape job of the test's Prometheus (the alert rules expect "ipv4proxy" in it).
JOB = "ipv4proxy"
# What the tests substitute for Grafana's $__rate_interval.
RATE_INTERVAL = "1m"
# Bounds: a promtool run, Prometheus starting (it opens a fresh TSDB), the scrapes after
# the load, one HTTP API call, and the proxy counting the tunnels the load closed.
PROMTOOL_SECONDS = 30.0
START_SECONDS = 20.0
START_ATTEMPTS = 3
SCRAPES_SECONDS = 20.0
API_SECONDS = 5.0
COUNT_SECONDS = 10.0
POLL_SECONDS = 0.2
# Good tunnels the load opens (and closes): HTTP CONNECT and SOCKS5.
GOOD_TUNNELS = 3

_THRESHOLD = re.compile(
    r"^(?P<lhs>.*\S)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<value>-?[0-9][0-9.e+]*)\s*$", re.S
)
_SELECTOR = re.compile(r"\b(ipv4proxy_\w+|up)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_METRIC = re.compile(r"\bipv4proxy_\w+")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


# --- the files ---------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _split(expr: str) -> tuple[str, str, float]:
    """`LHS OP NUMBER` -> (LHS, OP, NUMBER); the last comparison in the expression."""
    match = _THRESHOLD.match(expr.strip())
    assert match is not None, f"not `LEFT-HAND SIDE OP NUMBER`: {expr}"
    return match["lhs"], match["op"], float(match["value"])


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target."""
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in dashboard["templating"]["list"]}


def _substitute(expr: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    return _VARIABLE.sub(value, expr)


def _exported_names() -> set[str]:
    """Every series name the proxy's metrics can have (counters with _total, histograms
    with _bucket/_count/_sum), read from the registry rather than from a scrape, which
    lacks the series no event has created yet."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


# Label values a query may match, per series and label (job and instance are the scrape's).
_LABEL_VALUES: dict[tuple[str, str], set[str]] = {
    ("ipv4proxy_refusals_total", "reason"): {failure.cause for failure in Failure},
    ("ipv4proxy_dns_lookups_total", "result"): set(LOOKUP_RESULTS),
    ("ipv4proxy_config_reloads_total", "result"): {"applied", "refused"},
    ("ipv4proxy_tunnels_closed_total", "outcome"): {
        CLOSED_OK,
        CLOSED_CUT,
        Failure.IDLE_TIMEOUT.cause,
    },
    ("ipv4proxy_upstream_connect_failures_total", "cause"): {
        *errno.errorcode.values(),
        "OTHER",
    },
}


def _all_expressions() -> list[str]:
    return [rule["expr"] for rule in _rules()] + [
        expr for _, expr in _dashboard_queries(_dashboard())
    ]


def test_every_alert_pages_with_for_severity_and_runbook() -> None:
    rules = _rules()
    assert len(rules) >= 10
    names = [rule["alert"] for rule in rules]
    assert len(set(names)) == len(names), names
    for rule in rules:
        name = rule["alert"]
        assert "for" in rule, f"{name}: no for:"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert "Runbook:" in annotations["description"], f"{name}: no runbook line"
        _split(rule["expr"])
    # What an operator pages on, each covered.
    exprs = "\n".join(rule["expr"] for rule in rules)
    for needle in (
        "up{",
        "ipv4proxy_ready",
        "ipv4proxy_upstream_connect_failures_total",
        "ipv4proxy_dns_lookups_total",
        "ipv4proxy_refusals_total",
        'reason="TOO_MANY_CONNECTIONS"',
        "ipv4proxy_connections_open",
        "ipv4proxy_relay_held_bytes",
        "ipv4proxy_handshake_held_bytes",
    ):
        assert needle in exprs, needle


def test_budget_thresholds_are_the_default_limits() -> None:
    """The limits are settings, not metrics: thresholds are 80 % of the defaults."""
    limits = LimitsConfig()
    expected = {
        "IPv4ProxyConnectionsNearCap": 0.8 * limits.max_connections,
        "IPv4ProxyRelayMemoryHigh": int(0.8 * limits.relay_memory),
        "IPv4ProxyHandshakeMemoryHigh": int(0.8 * limits.handshake_memory),
    }
    rules = {rule["alert"]: rule for rule in _rules()}
    for name, threshold in expected.items():
        assert _split(rules[name]["expr"])[2] == threshold, name
        assert "default" in rules[name]["annotations"]["description"], name
    variables = _variables(_dashboard())
    assert variables["max_connections"]["query"] == str(limits.max_connections)
    assert variables["relay_memory"]["query"] == str(limits.relay_memory)
    assert variables["handshake_memory"]["query"] == str(limits.handshake_memory)


def test_queries_use_only_exported_series_and_label_values() -> None:
    exported = _exported_names()
    for expr in _all_expressions():
        for name in _METRIC.findall(expr):
            assert name in exported, f"{name} is not a series the proxy exports: {expr}"
        for metric, matchers in _SELECTOR.findall(expr):
            for label, _op, value in _MATCHER.findall(matchers):
                if label in {"job", "instance"}:
                    continue
                known = _LABEL_VALUES.get((metric, label))
                assert known is not None, f"{metric} has no label {label}: {expr}"
                unknown = set(value.split("|")) - known
                assert not unknown, f"{metric}{{{label}}}: no such values {unknown}: {expr}"


def test_dashboard_is_importable_and_filters_by_job_and_instance() -> None:
    dashboard = _dashboard()
    variables = _variables(dashboard)
    assert variables["job"]["type"] == "query"
    assert variables["instance"]["type"] == "query"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(set(ids)) == len(ids)
    for panel in _panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            expr = target["expr"]
            assert 'job=~"$job"' in expr, expr
            assert 'instance=~"$instance"' in expr, expr
    queries = "\n".join(expr for _, expr in _dashboard_queries(dashboard))
    for needle in (
        "ipv4proxy_tunnels_active",
        "ipv4proxy_tunnels_opened_total",
        "ipv4proxy_tunnels_closed_total",
        "histogram_quantile(",
        "ipv4proxy_connect_seconds_bucket",
        "ipv4proxy_upstream_connect_failures_total",
        "ipv4proxy_dns_lookups_total",
        "ipv4proxy_refusals_total",
        "ipv4proxy_tunnel_bytes_total",
        "ipv4proxy_connections_open",
        "ipv4proxy_relay_held_bytes",
        "ipv4proxy_handshake_held_bytes",
        "ipv4proxy_ready",
    ):
        assert needle in queries, needle


# --- promtool ----------------------------------------------------------------------------


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if path is None:
        unavailable(f"{name} is not installed (Debian package prometheus)")
    return path


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_binary("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_SECONDS,
        cwd=cwd,
        check=False,
    )


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout, result.stdout


def test_promtool_unit_tests_fire_every_alert(tmp_path: Path) -> None:
    """The rules, descriptions taken out (promtool compares annotations exactly; the test
    file checks each rendered summary), under the unit tests."""
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            del rule["annotations"]["description"]
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = _promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout

    fired = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in _rules()}


def test_docs_wrap_the_rules_in_a_prometheusrule(tmp_path: Path) -> None:
    """docs/operations.md's one-liner makes a PrometheusRule whose spec is the rule file."""
    lines = [
        line
        for line in OPERATIONS_DOC.read_text().splitlines()
        if "kind: PrometheusRule" in line and "deploy/monitoring/alerts.yaml" in line
    ]
    assert len(lines) == 1, lines
    command, _, target = lines[0].rpartition(">")
    assert target.strip() == "ipv4proxy-rules.yaml", lines[0]
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_SECONDS,
        check=True,
    )
    wrapped = yaml.safe_load(result.stdout)
    assert wrapped["apiVersion"] == "monitoring.coreos.com/v1"
    assert wrapped["kind"] == "PrometheusRule"
    assert wrapped["metadata"]["name"]
    assert wrapped["spec"] == yaml.safe_load(ALERTS.read_text())


# --- a real Prometheus scraping a live proxy ---------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """A Prometheus server on 127.0.0.1, its TSDB in a temporary directory."""

    def __init__(self, directory: Path, scrape_target: str) -> None:
        self.directory = directory
        self.port = _free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [scrape_target]}]}],
        }
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = directory / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait (bounded) until it is ready; a port taken between choosing
        and binding it gets another try on a fresh port."""
        for _ in range(START_ATTEMPTS):
            if self._start_once():
                return
            self.port = _free_port()
        raise AssertionError(f"no free port in {START_ATTEMPTS} tries:\n{self.logs()}")

    def _start_once(self) -> bool:
        """True when ready; False when its port was taken."""
        with self.log.open("wb") as log:
            process = self._process = subprocess.Popen(
                [
                    _binary("prometheus"),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                if "address already in use" in self.logs():
                    return False
                raise AssertionError(f"prometheus exited {process.returncode}:\n{self.logs()}")
            if self._ready():
                return True
            time.sleep(POLL_SECONDS)
        raise AssertionError(f"prometheus not ready within {START_SECONDS} s:\n{self.logs()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self._url("/-/ready"), timeout=API_SECONDS) as reply:
                status: int = reply.status
                return status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(self._url(f"/api/v1/{path}?{query}"), timeout=API_SECONDS) as r:
            reply = json.load(r)
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def scrapes(self) -> int:
        """How many times the proxy has been scraped."""
        found = self.query(f'count_over_time(up{{job="{JOB}"}}[1h])')
        return int(float(found[0]["value"][1])) if found else 0

    def stop(self) -> None:
        """Stop the process this object started, by PID, bounded (SIGKILL after a bound)."""
        if self._process is not None:
            stop_process(self._process)


@pytest.fixture
def prometheus_for() -> Iterator[list[Prometheus]]:
    """Prometheus servers a test starts; each stopped at the end, by PID."""
    started: list[Prometheus] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def _metrics_page(proxy: ProxyProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    url = f"http://127.0.0.1:{proxy.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=API_SECONDS) as reply:
        page = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }


async def _load(proxy: ProxyProcess, servers: TestServers, closed_port: int) -> None:
    """Good tunnels (HTTP CONNECT and SOCKS5, data both ways), a refused port, a name that
    does not exist, a name the policy denies."""
    for i in range(GOOD_TUNNELS):
        if i % 2:
            tunnel, socks = await socks5_request(proxy.port, "v4.test", servers.echo_port)
            assert socks.code == 0, socks
        else:
            tunnel, reply = await http_connect(proxy.port, f"v4.test:{servers.echo_port}")
            assert reply.status == 200, reply
        tunnel.writer.write(b"ping")
        assert await tunnel.read_exactly(4) == b"ping"
        await tunnel.close()
    for authority, status in (
        (f"v4.test:{closed_port}", 502),
        (f"nothing-here.test:{servers.echo_port}", 502),
        (f"blocked.denied.test:{servers.echo_port}", 403),
    ):
        tunnel, reply = await http_connect(proxy.port, authority)
        assert reply.status == status, (authority, reply)
        await tunnel.close()


def _wait_until(what: str, check: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(POLL_SECONDS)


async def test_every_query_returns_data_from_a_real_prometheus(
    proxy_factory: ProxyFactory,
    servers: TestServers,
    closed_port: int,
    tmp_path: Path,
    prometheus_for: list[Prometheus],
) -> None:
    proxy = proxy_factory(("--policy-deny-domains", "*.denied.test"))
    instance = f"127.0.0.1:{proxy.admin_port}"
    prometheus = Prometheus(tmp_path, instance)
    prometheus_for.append(prometheus)
    await asyncio.to_thread(prometheus.start)
    # Rates need the counters before the load as well as after it.
    await asyncio.to_thread(
        _wait_until, "a scrape before the load", lambda: prometheus.scrapes() >= 1, SCRAPES_SECONDS
    )

    await _load(proxy, servers, closed_port)

    def counted() -> bool:
        page = _metrics_page(proxy)
        closed = sum(v for (name, _), v in page.items() if name == "ipv4proxy_tunnels_closed_total")
        return closed >= GOOD_TUNNELS

    await asyncio.to_thread(
        _wait_until, "the proxy counts the closed tunnels", counted, COUNT_SECONDS
    )
    after_load = await asyncio.to_thread(prometheus.scrapes)
    await asyncio.to_thread(
        _wait_until,
        "two scrapes after the load",
        lambda: prometheus.scrapes() >= after_load + 2,
        SCRAPES_SECONDS,
    )

    # Every dashboard query, with the variables Grafana would fill in.
    dashboard = _dashboard()
    values = {"job": JOB, "instance": instance, "__rate_interval": RATE_INTERVAL}
    for name, var in _variables(dashboard).items():
        if var["type"] in {"textbox", "constant", "custom"}:
            values[name] = str(var["current"]["value"])
    checks = [
        (f"panel {title!r}", _substitute(expr, values))
        for title, expr in _dashboard_queries(dashboard)
    ]
    # Every alert's left-hand side, and the labels its annotations name.
    labels_used: dict[str, set[str]] = {}
    for rule in _rules():
        lhs = _split(rule["expr"])[0]
        checks.append((f"alert {rule['alert']}", lhs))
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        labels_used[lhs] = set(re.findall(r"\$labels\.(\w+)", text))

    empty = []
    for what, expr in checks:
        result = await asyncio.to_thread(prometheus.query, expr)
        finite = [s for s in result if math.isfinite(float(s["value"][1]))]
        if not finite:
            empty.append(f"{what}: {expr} -> {result}")
            continue
        for series in result:
            missing = labels_used.get(expr, set()) - set(series["metric"])
            assert not missing, f"{what}: no label {missing} for its annotations: {series}"
    assert not empty, "queries without data:\n" + "\n".join(empty)

    # Prometheus loaded every rule and evaluates each without error.
    groups = (await asyncio.to_thread(prometheus.api, "rules"))["groups"]
    evaluated = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(evaluated) == {rule["alert"] for rule in _rules()}
    for name, rule in evaluated.items():
        assert rule["health"] == "ok", (name, rule)

    # A healthy proxy under this load pages for nothing that pages.
    firing = [
        alert
        for alert in (await asyncio.to_thread(prometheus.api, "alerts"))["alerts"]
        if alert["labels"]["severity"] == "critical"
    ]
    assert not firing, firing
