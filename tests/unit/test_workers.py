"""Workers' pure parts: what ``auto`` means, each worker's share, the pod's metrics page."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ipv4proxy import podmetrics
from ipv4proxy.config import Config, load
from ipv4proxy.errors import ConfigError
from ipv4proxy.metrics import CLOSED_OK, Metrics
from ipv4proxy.supervisor import backoff, exit_status
from ipv4proxy.workers import (
    SHARED,
    WorkerRole,
    available_cpus,
    quota_v1,
    quota_v2,
    share,
    shared,
)

# --- auto: the CPUs this process may use -----------------------------------------------


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("", None),
        ("garbage", None),
        ("max", None),
        ("0 100000", None),
    ],
)
def test_cgroup_v2_cpu_max(cpu_max: str, cpus: float | None) -> None:
    assert quota_v2(cpu_max) == cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [("-1\n", "100000\n", None), ("300000", "100000", 3.0), ("x", "100000", None)],
)
def test_cgroup_v1_quota(quota: str, period: str, cpus: float | None) -> None:
    assert quota_v1(quota, period) == cpus


@pytest.mark.parametrize(
    ("affinity", "quotas", "workers"),
    [
        (8, [None], 8),  # no quota: every CPU of the affinity mask
        (8, [2.0], 2),  # a quota of 2 CPUs on an 8-CPU node
        (2, [4.0], 2),  # pinned to 2 CPUs: the quota cannot add any
        (8, [1.5], 1),  # rounded down: two busy workers on 1.5 CPUs are throttled
        (8, [0.25], 1),  # at least one
        (8, [4.0, 2.0, None], 2),  # the tightest of the cgroup and its parents
    ],
)
def test_available_cpus(affinity: int, quotas: list[float | None], workers: int) -> None:
    assert available_cpus(affinity, quotas) == workers


@given(
    st.integers(1, 512),
    st.lists(st.one_of(st.none(), st.floats(0.01, 1024, allow_nan=False)), max_size=4),
)
def test_auto_is_at_least_one_and_never_above_a_bound(
    affinity: int, quotas: list[float | None]
) -> None:
    workers = available_cpus(affinity, quotas)
    assert 1 <= workers <= affinity
    for quota in quotas:
        if quota is not None and quota >= 1:
            assert workers <= quota


# --- each worker's share ----------------------------------------------------------------


@given(st.integers(0, 10**9), st.integers(1, 256))
def test_shares_add_up_to_the_total_and_differ_by_one_at_most(total: int, count: int) -> None:
    parts = [share(total, count, index) for index in range(count)]
    assert sum(parts) == total
    assert max(parts) - min(parts) <= 1


@settings(max_examples=40)
@given(st.integers(1, 64), st.data())
def test_every_per_process_bound_is_shared(count: int, data: st.DataObject) -> None:
    tree: dict[str, dict[str, int]] = {}
    for section, key in SHARED:
        most = 10_000 if key == "max_in_flight" else 10**8
        tree.setdefault(section, {})[key] = data.draw(st.integers(count, most), label=key)
    config = load(yaml.safe_dump(tree))
    views = [shared(config, count, index) for index in range(count)]
    for section, key in SHARED:
        parts = [getattr(getattr(view, section), key) for view in views]
        assert sum(parts) == tree[section][key], key
        assert min(parts) >= 1
    # What is not a per-process bound is left alone.
    assert all(view.limits.max_head == config.limits.max_head for view in views)
    assert all(view.dialer == config.dialer for view in views)


def test_zero_meaning_no_bound_stays_zero() -> None:
    config = Config()
    assert config.limits.max_connections_per_client == 0
    assert shared(config, 4, 3).limits.max_connections_per_client == 0
    assert shared(config, 4, 3).limits.max_connections == 2500


def test_a_bound_too_small_to_share_names_its_key() -> None:
    config = load("limits:\n  max_connections_per_client: 3\n")
    with pytest.raises(ConfigError, match=r"limits.max_connections_per_client: 3 cannot be shared"):
        shared(config, 4, 0)


def test_worker_view_of_the_configuration() -> None:
    config = load(
        "listeners: ['127.0.0.1:0', '127.0.0.1:3129']\ndns:\n  listen: ['127.0.0.1:0']\n"
        "workers: 2\n"
    )
    assert config.workers == "2"
    first = WorkerRole(0, 2, (40000, 3129), "/tmp/x/worker-0.sock")
    second = dataclasses.replace(first, index=1, admin="/tmp/x/worker-1.sock")
    assert WorkerRole.from_environ({"_IPV4PROXY_WORKER": second.to_env()}) == second
    assert WorkerRole.from_environ({}) is None
    view = first.shape(config)
    assert [listener.port for listener in view.listeners] == [40000, 3129]
    assert view.dns.listen == ("127.0.0.1:0",)  # worker 0 runs the DNS listener
    assert second.shape(config).dns.listen == ()
    assert view.workers == "1"
    assert view.limits.max_connections == 5000
    # The same file read again (a reload) gives the same view: nothing seems changed.
    assert first.shape(config) == view


@pytest.mark.parametrize("text", ["0", "257", "two", "-1", "1.5", ""])
def test_workers_setting_is_checked(text: str) -> None:
    with pytest.raises(ConfigError, match="workers: expected a number of processes"):
        load(f"workers: '{text}'\n")


# --- the supervisor's small rules -------------------------------------------------------


def test_restart_backoff_is_bounded() -> None:
    delays = [backoff(n) for n in range(1, 12)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == 30.0
    assert delays == sorted(delays)


def test_exit_status_names_the_signal() -> None:
    assert exit_status(0) == "exited with status 0"
    assert exit_status(1) == "exited with status 1"
    assert exit_status(-9) == "killed by SIGKILL"
    assert exit_status(-15) == "killed by SIGTERM"


# --- the pod's metrics page -------------------------------------------------------------


def _worker(tunnels: int, open_now: int, *, reloads: int = 0) -> podmetrics.Page:
    metrics = Metrics()
    metrics.watch(lambda: open_now, lambda: 0, lambda: 0)
    metrics.ready.set(1)
    for index in range(tunnels):
        metrics.tunnel_opened("socks5", 0.002 * (index + 1))
        metrics.tunnel_closed("socks5", CLOSED_OK, 10, 20)
    for _ in range(reloads):
        metrics.reloads.labels("applied").inc()
    return podmetrics.parse(metrics.render().decode())


def _values(page: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(page.decode())
        for s in family.samples
    }


POD: dict[str, dict[tuple[str, ...], float]] = {
    "ipv4proxy_ready": {(): 1.0},
    "ipv4proxy_config_reloads": {("applied",): 1.0},
}


def test_one_page_summed_alone_is_the_same_page() -> None:
    metrics = Metrics()
    metrics.tunnel_opened("http-connect", 0.01)
    text = metrics.render()
    assert podmetrics.render([], [podmetrics.parse(text.decode())], {}, Metrics().registry) == (
        text + Metrics().render()
    )


# Each example builds and renders a few registries (~50 ms): 25 cover the shapes.
@settings(max_examples=25)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 100)), min_size=1, max_size=4))
def test_pod_page_sums_counters_histograms_and_gauges(workers: list[tuple[int, int]]) -> None:
    pages = [_worker(tunnels, open_now, reloads=1) for tunnels, open_now in workers]
    own = podmetrics.WorkerMetrics()
    values = _values(podmetrics.render([], pages, POD, own.registry))
    tunnels = sum(t for t, _ in workers)
    opened = ("ipv4proxy_tunnels_opened_total", frozenset({("protocol", "socks5")}))
    assert values.get(opened, 0.0) == tunnels
    assert values[("ipv4proxy_connect_seconds_count", frozenset())] == tunnels
    infinite = ("ipv4proxy_connect_seconds_bucket", frozenset({("le", "+Inf")}))
    assert values[infinite] == tunnels
    sent = ("ipv4proxy_tunnel_bytes_total", frozenset({("direction", "sent")}))
    assert values[sent] == 10 * tunnels
    assert values[("ipv4proxy_connections_open", frozenset())] == sum(o for _, o in workers)
    # The pod's own values, not N times a worker's.
    assert values[("ipv4proxy_ready", frozenset())] == 1
    applied = ("ipv4proxy_config_reloads_total", frozenset({("result", "applied")}))
    assert values[applied] == 1
    assert ("ipv4proxy_config_reloads_total", frozenset({("result", "refused")})) not in values


def test_a_gone_worker_keeps_its_counts_but_not_its_gauges() -> None:
    gone = _worker(3, 7)
    kept = podmetrics.retire([], gone)
    values = _values(
        podmetrics.render(kept, [_worker(2, 1)], POD, podmetrics.WorkerMetrics().registry)
    )
    opened = ("ipv4proxy_tunnels_opened_total", frozenset({("protocol", "socks5")}))
    assert values[opened] == 5
    assert values[("ipv4proxy_connect_seconds_count", frozenset())] == 5
    assert values[("ipv4proxy_connections_open", frozenset())] == 1
    kept = podmetrics.retire(kept, _worker(1, 0))
    values = _values(podmetrics.render(kept, [], POD, podmetrics.WorkerMetrics().registry))
    assert values[opened] == 4
